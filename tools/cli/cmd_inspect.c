/*
 * cmd_inspect.c - `idefics inspect FILE [--verify] [-j N]`: print an IDFX file's
 * header facts, its model config (scalar metadata in full, arrays summarised),
 * a tensor table and per-type totals. With --verify every chunk's checksum is
 * checked, every compressed or filtered chunk decoded, every Q4/Q8 scale
 * checked for NaN/Inf and the padding for zeros (integrity.c), in parallel;
 * each failure is reported by tensor and chunk and the exit code is 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_faults.h"
#include "integrity.h"
#include "idfx_reader.h"
#include "platform.h"
#include "quant.h"

static void usage(FILE *f) {
    fprintf(f, "usage: idefics inspect FILE [--verify] [-j N]\n"
               "  --verify   check every chunk checksum, decode every compressed chunk, check that every\n"
               "             Q4/Q8 scale is finite and that the alignment padding is zero\n"
               "  -j N       threads for --verify (default: all cores)\n");
}

static void print_bytes(char *buf, size_t n, uint64_t b) {
    if (b >= (1ull << 30)) snprintf(buf, n, "%.2f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, n, "%.2f MiB", (double)b / (1ull << 20));
    else if (b >= 1024) snprintf(buf, n, "%.1f KiB", (double)b / 1024);
    else snprintf(buf, n, "%llu B", (unsigned long long)b);
}

/* Print a string value with control characters escaped, cut at `max` bytes. */
static void print_str(const char *s, uint32_t len, uint32_t max) {
    putchar('"');
    for (uint32_t i = 0; i < len && i < max; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') printf("\\n");
        else if (c < 0x20 || c == 0x7f) printf("\\x%02x", c);
        else putchar(c);
    }
    putchar('"');
    if (len > max) printf("... (%u bytes)", len);
}

static const char *kv_type_str(int t) {
    static const char *const n[] = {"U8", "BOOL", "U32", "I32", "F32", "U64", "STR", "ARR"};
    return t >= 0 && t < IDFX_KV_COUNT ? n[t] : "?";
}

static void print_scalar(int type, const uint8_t *v) {
    switch (type) {
    case IDFX_KV_U8: printf("%u", v[0]); break;
    case IDFX_KV_BOOL: printf("%s", v[0] ? "true" : "false"); break;
    case IDFX_KV_U32: printf("%u", idf_rd32(v)); break;
    case IDFX_KV_I32: printf("%d", (int32_t)idf_rd32(v)); break;
    case IDFX_KV_F32: {
        uint32_t b = idf_rd32(v);
        float x;
        memcpy(&x, &b, 4);
        printf("%.9g", x);
        break;
    }
    case IDFX_KV_U64: printf("%llu", (unsigned long long)idf_rd64(v)); break;
    default: printf("?");
    }
}

static void print_kv(const idfx_kv *kv) {
    printf("  ");
    cli_put_escaped(stdout, kv->key);
    printf(" = ");
    if (kv->type == IDFX_KV_STR) {
        /* long blobs (config.json verbatim, chat templates) only by size */
        if (kv->count > 200) printf("[%llu bytes of text]", (unsigned long long)kv->count);
        else print_str((const char *)kv->value, (uint32_t)kv->count, 200);
    } else if (kv->type == IDFX_KV_ARR) {
        if (kv->elem_type == IDFX_KV_STR) {
            printf("[%llu strings", (unsigned long long)kv->count);
            uint64_t pos = 0;
            const char *s;
            uint32_t len;
            for (int i = 0; i < 3 && idfx_arr_next_str(kv, &pos, &s, &len); i++) {
                printf(i ? ", " : ": ");
                print_str(s, len, 24);
            }
            printf(kv->count > 3 ? ", ...]" : "]");
        } else {
            uint32_t es = kv->elem_type == IDFX_KV_U64 ? 8 : kv->elem_type <= IDFX_KV_BOOL ? 1 : 4;
            printf("[%llu %s", (unsigned long long)kv->count, kv_type_str(kv->elem_type));
            for (uint64_t i = 0; i < kv->count && i < 8; i++) {
                printf(i ? ", " : ": ");
                print_scalar(kv->elem_type, kv->value + i * es);
            }
            printf(kv->count > 8 ? ", ...]" : "]");
        }
    } else {
        print_scalar(kv->type, kv->value);
    }
    printf("\n");
}

static void shape_str(char *buf, size_t n, const idfx_tensor *t) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (uint32_t d = 0; d < t->n_dims && o < n; d++)
        o += (size_t)snprintf(buf + o, n - o, d ? ", %llu" : "%llu", (unsigned long long)t->dims[d]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

/* ---- --verify: integrity.c's whole-file check, every failure reported ---- */

static void report_failure(void *ud, idefics_status st, const char *msg) {
    (void)ud;
    fprintf(stderr, "verify: %s: ", idefics_status_str(st));
    cli_put_escaped(stderr, msg); /* tensor names come from the file */
    fputc('\n', stderr);
}

static int verify(const idfx_file *f, int n_threads) {
    idf_pool *pool = idf_pool_create(n_threads, NULL, NULL, NULL);
    /* checksums, Q4/Q8 scales, zero padding (docs/FORMAT.md), and a decode of
     * every compressed or filtered chunk */
    const idfx_verify_opts o = {.checksums = true, .scales = true, .padding = true, .decode = true};
    idfx_verify_stats vs;
    idf_err e;
    idf_err_clear(&e);
    idefics_status st = idfx_verify(f, pool, &o, report_failure, NULL, &vs, &e);
    idf_pool_free(pool);
    if (st == IDEFICS_ERR_OUT_OF_MEMORY && vs.failed == 0) {
        fprintf(stderr, "idefics inspect: %s\n", e.msg);
        return 1;
    }
    printf("\nverify: %llu chunks, %llu failed; %.1f MiB read in %.0f ms (%.0f MiB/s, %d threads)\n",
           (unsigned long long)vs.chunks, (unsigned long long)vs.failed, (double)vs.bytes / (1 << 20), vs.ms,
           vs.ms > 0 ? (double)vs.bytes / (1 << 20) / (vs.ms / 1000.0) : 0.0, vs.threads);
    return st == IDEFICS_OK ? 0 : 1;
}

int cmd_inspect(int argc, char **argv) {
    const char *path = NULL;
    int do_verify = 0, n_threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--verify")) do_verify = 1;
        else if (!strcmp(argv[i], "-j") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 1024) {
                fprintf(stderr, "idefics inspect: -j expects a thread count in [1, 1024]\n");
                return 2;
            }
            n_threads = (int)v;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-' || path) {
            usage(stderr);
            return 2;
        } else path = argv[i];
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    idf_mapping m;
    int r = idf_map_file(path, &m);
    if (r != 0) {
        fprintf(stderr, "idefics inspect: %s: IDEFICS_ERR_IO: cannot open: %s\n", path, idf_open_strerror(r));
        return 1;
    }
    idfx_file f;
    idf_err e;
    idf_err_clear(&e);
    idefics_status st = idfx_open(&f, m.data, m.size, NULL, &e);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics inspect: %s: %s: %s\n", path, idefics_status_str(st), e.msg);
        idf_unmap_file(&m);
        return 1;
    }
    char b1[32], b2[32], b3[32], b4[32];
    print_bytes(b1, sizeof b1, f.size);
    char pname[512];
    printf("file: %s\n  size: %llu bytes (%s)\n  format: IDFX v%u, alignment %u\n",
           cli_escape(pname, sizeof pname, path), (unsigned long long)f.size,
           b1, f.version, f.alignment);
    uint64_t ms = idf_rd64(m.data + IDFX_OFF_META_SIZE), ds = idf_rd64(m.data + IDFX_OFF_DIR_SIZE);
    print_bytes(b1, sizeof b1, ms);
    print_bytes(b2, sizeof b2, ds);
    print_bytes(b3, sizeof b3, f.data_size);
    printf("  metadata: %u entries (%s)   directory: %u tensors (%s)   data: %s at offset %llu\n", f.n_kv, b1,
           f.n_tensors, b2, b3, (unsigned long long)f.data_offset);

    printf("\nconfig:\n");
    for (uint32_t i = 0; i < f.n_kv; i++) print_kv(&f.kv[i]);

    printf("\ntensors:\n  %-56s %-18s %-4s %-8s %11s %11s %6s %6s\n", "name", "shape", "type", "layout", "raw",
           "stored", "ratio", "chunks");
    typedef struct tot {
        uint64_t tensors, params, raw, stored, chunks, zstd;
    } tot;
    tot per[IDFX_TYPE_COUNT + 1];
    memset(per, 0, sizeof per);
    for (uint32_t i = 0; i < f.n_tensors; i++) {
        const idfx_tensor *t = &f.tensors[i];
        uint64_t stored = 0, zstd = 0;
        for (uint32_t k = 0; k < t->n_chunks; k++) {
            stored += t->chunks[k].stored_size;
            zstd += t->chunks[k].codec == IDFX_CODEC_ZSTD;
        }
        char shape[96];
        shape_str(shape, sizeof shape, t);
        print_bytes(b1, sizeof b1, t->nbytes);
        print_bytes(b2, sizeof b2, stored);
        char name[512];
        printf("  %-56s %-18s %-4s %-8s %11s %11s %6.3f %6u%s\n", cli_escape(name, sizeof name, t->name), shape, idfx_type_name(t->type),
               idfx_layout_name(t->layout), b1, b2, stored ? (double)t->nbytes / (double)stored : 0.0, t->n_chunks,
               zstd == t->n_chunks ? " zstd" : zstd ? " mixed" : "");
        tot *p[2] = {&per[t->type], &per[IDFX_TYPE_COUNT]};
        for (int j = 0; j < 2; j++) {
            p[j]->tensors++;
            p[j]->params += t->n_elements;
            p[j]->raw += t->nbytes;
            p[j]->stored += stored;
            p[j]->chunks += t->n_chunks;
            p[j]->zstd += zstd;
        }
    }
    printf("\ntotals:\n  %-6s %8s %14s %11s %11s %8s %6s %14s\n", "type", "tensors", "params", "raw", "stored",
           "bits/w", "ratio", "zstd chunks");
    for (int ty = 0; ty <= IDFX_TYPE_COUNT; ty++) {
        const tot *p = &per[ty];
        if (!p->tensors && ty < IDFX_TYPE_COUNT) continue;
        print_bytes(b1, sizeof b1, p->raw);
        print_bytes(b2, sizeof b2, p->stored);
        snprintf(b4, sizeof b4, "%llu/%llu", (unsigned long long)p->zstd, (unsigned long long)p->chunks);
        printf("  %-6s %8llu %14llu %11s %11s %8.3f %6.3f %14s\n", ty < IDFX_TYPE_COUNT ? idfx_type_name(ty) : "all",
               (unsigned long long)p->tensors, (unsigned long long)p->params, b1, b2,
               p->params ? (double)p->stored * 8.0 / (double)p->params : 0.0,
               p->stored ? (double)p->raw / (double)p->stored : 0.0, b4);
    }
    int rc = do_verify ? verify(&f, n_threads) : 0;
    if (cli_check_stdout("inspect")) rc = 1;
    idfx_close(&f);
    idf_unmap_file(&m);
    return rc;
}
