/*
 * make_synthetic_checkpoint.c - writes a Hugging Face-style checkpoint folder
 * with the real IDEFICS (or LLaMA) tensor names and shapes and seeded random
 * weights, so the converter, the runtime and the benchmarks can run without
 * downloading 18 GB. Weights are generated in the target dtype by a
 * counter-based hash (value = f(tensor seed, element index)), which makes the
 * output independent of the thread count and of sharding, and lets every
 * thread generate and pwrite() its own chunk: the run is I/O bound.
 */
#include "platform.h"
#include "quant.h"
#include "synth.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#define PROG "make-synthetic-checkpoint"
#define CHUNK_BYTES ((uint64_t)8 << 20) /* one pwrite per task: large and sequential */
#define GEN_BLOCK 1024                  /* elements generated per inner step */

static void usage(FILE *f) {
    fprintf(f,
            "usage: " PROG " [options] {tiny|9b|llama7b|llama-tiny} OUT_DIR\n"
            "\n"
            "Writes config.json, tokenizer files and safetensors weights with the real\n"
            "IDEFICS-9B (instruct) / LLaMA-7B tensor names, seeded random values.\n"
            "\n"
            "  --seed N            random seed (default 0); the tokenizer does not depend on it\n"
            "  --dtype T           bf16 (default), f16 or f32\n"
            "  --shard-size BYTES  largest safetensors file (default 2G = 2e9; suffixes k M G)\n"
            "  -j N                threads (default: all cores)\n"
            "  --legacy-buffers    also write the old buffers some Hub shards carry\n"
            "                      (vision position_ids I64, rotary inv_freq F32)\n"
            "  --dry-run           write only the JSON files; print the tensor table to stdout\n");
}

/* ---- value generation ---- */

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Value of element i. The sum of three 16-bit uniforms approximates N(0,1)
 * (Irwin-Hall, standard deviation 32768 before scaling); the top 16 bits pick
 * about 1 element in 9000 of a heavy tensor as an outlier of 6..22 std. */
static inline float value_at(const sy_tensor *t, uint64_t i) {
    const uint64_t h = mix64(t->seed + i * 0x9E3779B97F4A7C15ull);
    const uint32_t a = (uint32_t)(h & 0xffff), b = (uint32_t)((h >> 16) & 0xffff), c = (uint32_t)((h >> 32) & 0xffff);
    if (t->init == SY_HEAVY && (h >> 48) < 7) {
        const float mag = 6.0f + 16.0f * (float)c / 65536.0f;
        return t->mean + ((a & 1) ? mag : -mag) * t->std;
    }
    const float n = ((float)(a + b + c) - 98302.5f) * (1.0f / 32768.0f);
    return t->mean + t->std * n;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even; inputs are finite */
    return (uint16_t)(u >> 16);
}

/* Writes elements [e0, e0 + n) of t into out in t's dtype. */
static void generate(const sy_tensor *t, uint64_t e0, uint64_t n, uint8_t *out) {
    float v[GEN_BLOCK];
    for (uint64_t done = 0; done < n;) {
        const uint64_t k = n - done < GEN_BLOCK ? n - done : GEN_BLOCK;
        const uint64_t base = e0 + done;
        switch (t->init) {
        case SY_NORMAL:
        case SY_HEAVY:
            for (uint64_t j = 0; j < k; j++) v[j] = value_at(t, base + j);
            break;
        case SY_INVFREQ:
            for (uint64_t j = 0; j < k; j++)
                v[j] = (float)(1.0 / pow(10000.0, (double)(base + j) / (double)t->numel));
            break;
        case SY_ARANGE:
            for (uint64_t j = 0; j < k; j++) idf_wr64(out + (done + j) * 8, base + j);
            done += k;
            continue;
        }
        switch (t->dtype) {
        case SY_BF16:
            for (uint64_t j = 0; j < k; j++) idf_wr16(out + (done + j) * 2, f32_to_bf16(v[j]));
            break;
        case SY_F16:
            for (uint64_t j = 0; j < k; j++) idf_wr16(out + (done + j) * 2, idfx_fp32_to_fp16(v[j]));
            break;
        case SY_F32:
            for (uint64_t j = 0; j < k; j++) {
                uint32_t u;
                memcpy(&u, &v[j], 4);
                idf_wr32(out + (done + j) * 4, u);
            }
            break;
        case SY_I64:
            for (uint64_t j = 0; j < k; j++) idf_wr64(out + (done + j) * 8, (uint64_t)(int64_t)v[j]);
            break;
        }
        done += k;
    }
}

/* Fills bytes [lo, hi) of tensor t (relative to its start) into out. Chunk
 * edges may split an element (a 4-byte tensor after an odd-sized 2-byte one),
 * so partial elements go through a small scratch. */
static void fill_bytes(const sy_tensor *t, uint64_t lo, uint64_t hi, uint8_t *out) {
    const uint64_t es = (uint64_t)sy_dtype_size(t->dtype);
    uint8_t tmp[8];
    uint64_t pos = lo;
    if (pos % es) {
        const uint64_t e = pos / es, skip = pos % es;
        generate(t, e, 1, tmp);
        uint64_t take = es - skip < hi - pos ? es - skip : hi - pos;
        memcpy(out, tmp + skip, take);
        pos += take;
    }
    const uint64_t whole = (hi - pos) / es;
    if (whole) {
        generate(t, pos / es, whole, out + (pos - lo));
        pos += whole * es;
    }
    if (pos < hi) {
        generate(t, pos / es, 1, tmp);
        memcpy(out + (pos - lo), tmp, hi - pos);
    }
}

/* "1.2 MB" / "17.86 GB" (decimal units, as disk sizes are quoted) */
static const char *human(uint64_t bytes, char *buf, size_t cap) {
    if (bytes >= 1000000000ull) snprintf(buf, cap, "%.2f GB", (double)bytes / 1e9);
    else snprintf(buf, cap, "%.1f MB", (double)bytes / 1e6);
    return buf;
}

/* ---- writing one shard ---- */

typedef struct shard_job {
    const sy_tensor *t;  /* this shard's tensors, contiguous in the data section */
    size_t n;
    uint64_t data_bytes;
    uint64_t data_start; /* file offset of the data section */
    int fd;
    uint8_t **bufs;      /* (threads) CHUNK_BYTES each */
    atomic_int err;      /* first errno, 0 while all is well */
    atomic_uint_fast64_t err_off;
    atomic_uint_fast64_t written;
    /* progress, printed by thread 0 only */
    uint64_t total_before, grand_total;
    double t0, last_print;
    int shard, n_shards;
    bool tty;
} shard_job;

static void progress(shard_job *j, bool final) {
    const double now = idf_time_ms();
    if (!final && now - j->last_print < (j->tty ? 250.0 : 5000.0)) return;
    j->last_print = now;
    const uint64_t done = j->total_before + atomic_load(&j->written);
    const double secs = (now - j->t0) / 1000.0;
    char a[32], b[32];
    fprintf(stderr, "%s[%d/%d] %5.1f%%  %s / %s  %.0f MB/s%s", j->tty ? "\r" : "", j->shard + 1, j->n_shards,
            j->grand_total ? 100.0 * (double)done / (double)j->grand_total : 100.0, human(done, a, sizeof a),
            human(j->grand_total, b, sizeof b), secs > 0 ? (double)done / 1e6 / secs : 0.0, j->tty ? "   " : "\n");
    if (final && j->tty) fputc('\n', stderr);
}

static void write_chunk(void *ctx, int64_t index, int thread_id) {
    shard_job *j = ctx;
    if (atomic_load(&j->err)) return;
    const uint64_t lo = (uint64_t)index * CHUNK_BYTES;
    const uint64_t hi = lo + CHUNK_BYTES < j->data_bytes ? lo + CHUNK_BYTES : j->data_bytes;
    uint8_t *buf = j->bufs[thread_id];
    /* first tensor ending after lo */
    size_t a = 0, b = j->n;
    while (a < b) {
        size_t m = (a + b) / 2;
        if (j->t[m].offset + j->t[m].nbytes <= lo) a = m + 1;
        else b = m;
    }
    for (size_t k = a; k < j->n && j->t[k].offset < hi; k++) {
        const sy_tensor *t = &j->t[k];
        const uint64_t s = t->offset > lo ? t->offset : lo;
        const uint64_t e = t->offset + t->nbytes < hi ? t->offset + t->nbytes : hi;
        if (e > s) fill_bytes(t, s - t->offset, e - t->offset, buf + (s - lo));
    }
    uint64_t off = 0;
    while (off < hi - lo) {
        ssize_t w = pwrite(j->fd, buf + off, (size_t)(hi - lo - off), (off_t)(j->data_start + lo + off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int expected = 0;
            if (atomic_compare_exchange_strong(&j->err, &expected, w < 0 ? errno : ENOSPC))
                atomic_store(&j->err_off, j->data_start + lo + off);
            return;
        }
        off += (uint64_t)w;
    }
    atomic_fetch_add(&j->written, hi - lo);
    if (thread_id == 0) progress(j, false);
}

/* The safetensors header: 8-byte little-endian length, then JSON padded with
 * spaces to a multiple of 8 so the data section stays aligned. */
static char *make_header(const sy_tensor *t, size_t n, uint64_t *len_out) {
    char *s = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&s, &len);
    if (!f) return NULL;
    fputs("{\"__metadata__\":{\"format\":\"pt\"}", f);
    for (size_t i = 0; i < n; i++) {
        fprintf(f, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name, sy_dtype_name(t[i].dtype));
        for (int d = 0; d < t[i].ndim; d++) fprintf(f, "%s%" PRId64, d ? "," : "", t[i].shape[d]);
        fprintf(f, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t[i].offset, t[i].offset + t[i].nbytes);
    }
    fputc('}', f);
    if (fclose(f) != 0) {
        free(s);
        return NULL;
    }
    size_t padded = (len + 7) & ~(size_t)7;
    char *p = realloc(s, padded + 1);
    if (!p) {
        free(s);
        return NULL;
    }
    memset(p + len, ' ', padded - len);
    p[padded] = 0;
    *len_out = padded;
    return p;
}

static void shard_name(char *out, size_t cap, int shard, int n_shards) {
    if (n_shards == 1) snprintf(out, cap, "model.safetensors");
    else snprintf(out, cap, "model-%05d-of-%05d.safetensors", shard + 1, n_shards);
}

/* Writes one shard to NAME.partial and renames it once it is on disk, so an
 * interrupted run never leaves a file that looks complete. */
static bool write_shard(const char *dir, shard_job *j, idf_pool *pool) {
    char name[64], path[4096], partial[4200];
    shard_name(name, sizeof name, j->shard, j->n_shards);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(partial, sizeof partial, "%s.partial", path);
    uint64_t hlen = 0;
    char *header = make_header(j->t, j->n, &hlen);
    if (!header) {
        fprintf(stderr, PROG ": out of memory building the header of %s\n", name);
        return false;
    }
    j->fd = open(partial, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (j->fd < 0) {
        fprintf(stderr, PROG ": cannot create %s: %s\n", partial, strerror(errno));
        free(header);
        return false;
    }
    uint8_t lenbuf[8];
    idf_wr64(lenbuf, hlen);
    bool ok = pwrite(j->fd, lenbuf, 8, 0) == 8 && pwrite(j->fd, header, hlen, 8) == (ssize_t)hlen;
    free(header);
    if (!ok) {
        fprintf(stderr, PROG ": writing the header of %s failed: %s\n", partial, strerror(errno ? errno : ENOSPC));
        goto fail;
    }
    j->data_start = 8 + hlen;
    atomic_store(&j->err, 0);
    atomic_store(&j->written, 0);
    idf_pool_run(pool, (int64_t)((j->data_bytes + CHUNK_BYTES - 1) / CHUNK_BYTES), write_chunk, j);
    int err = atomic_load(&j->err);
    if (err) {
        fprintf(stderr, "%s" PROG ": writing %s failed at byte %" PRIu64 ": %s\n", j->tty ? "\n" : "", partial,
                (uint64_t)atomic_load(&j->err_off), strerror(err));
        goto fail;
    }
    if (fdatasync(j->fd) != 0) {
        fprintf(stderr, PROG ": flushing %s failed: %s\n", partial, strerror(errno));
        goto fail;
    }
    if (close(j->fd) != 0) {
        j->fd = -1;
        fprintf(stderr, PROG ": closing %s failed: %s\n", partial, strerror(errno));
        goto fail;
    }
    j->fd = -1;
    if (rename(partial, path) != 0) {
        fprintf(stderr, PROG ": cannot rename %s to %s: %s\n", partial, path, strerror(errno));
        unlink(partial);
        return false;
    }
    return true;
fail:
    if (j->fd >= 0) close(j->fd);
    j->fd = -1;
    unlink(partial);
    return false;
}

/* ---- small files ---- */

typedef bool (*writer_fn)(FILE *f, const void *ctx);

static bool write_text_file(const char *dir, const char *name, writer_fn fn, const void *ctx) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, PROG ": cannot create %s: %s\n", path, strerror(errno));
        return false;
    }
    bool ok = fn(f, ctx);
    if (fclose(f) != 0) ok = false;
    if (!ok) fprintf(stderr, PROG ": writing %s failed: %s\n", path, strerror(errno ? errno : EIO));
    return ok;
}

typedef struct files_ctx {
    const sy_config *cfg;
    sy_dtype dtype;
    const sy_tokenizer *tok;
    const sy_plan *plan;
    int n_shards;
    uint64_t total;
} files_ctx;

static bool w_config(FILE *f, const void *c) {
    const files_ctx *x = c;
    return sy_write_config(x->cfg, x->dtype, f);
}
static bool w_preproc(FILE *f, const void *c) { return sy_write_preprocessor_config(((const files_ctx *)c)->cfg, f); }
static bool w_generation(FILE *f, const void *c) {
    (void)c;
    fputs("{\n  \"bos_token_id\": 1,\n  \"eos_token_id\": 2,\n  \"pad_token_id\": 0\n}\n", f);
    return !ferror(f);
}
static bool w_tokenizer(FILE *f, const void *c) {
    const files_ctx *x = c;
    return sy_write_tokenizer_json(x->tok, x->cfg->add_vocab, f);
}
static bool w_tok_config(FILE *f, const void *c) {
    const files_ctx *x = c;
    return sy_write_tokenizer_config(x->cfg->vocab, x->cfg->add_vocab, x->cfg->max_pos, f);
}
static bool w_special(FILE *f, const void *c) { return sy_write_special_tokens_map(((const files_ctx *)c)->cfg->add_vocab, f); }
static bool w_added(FILE *f, const void *c) {
    const files_ctx *x = c;
    return sy_write_added_tokens(x->cfg->vocab, x->cfg->add_vocab, f);
}
static bool w_index(FILE *f, const void *c) {
    const files_ctx *x = c;
    fprintf(f, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {\n", x->total);
    for (size_t i = 0; i < x->plan->n; i++) {
        char name[64];
        shard_name(name, sizeof name, x->plan->t[i].shard, x->n_shards);
        fprintf(f, "    \"%s\": \"%s\"%s\n", x->plan->t[i].name, name, i + 1 < x->plan->n ? "," : "");
    }
    fputs("  }\n}\n", f);
    return !ferror(f);
}

/* mkdir -p */
static bool make_dirs(const char *dir) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path) {
        fprintf(stderr, PROG ": output path too long\n");
        return false;
    }
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p) continue;
        char saved = *p;
        *p = 0;
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            fprintf(stderr, PROG ": cannot create folder %s: %s\n", path, strerror(errno));
            return false;
        }
        *p = saved;
        if (!saved) break;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, PROG ": %s exists and is not a folder\n", dir);
        return false;
    }
    return true;
}

/* ---- arguments ---- */

static bool parse_u64(const char *s, uint64_t *out, bool allow_suffix) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *s == '-') return false;
    uint64_t mul = 1;
    if (allow_suffix && *end) {
        switch (*end) {
        case 'k': case 'K': mul = 1000ull; break;
        case 'm': case 'M': mul = 1000000ull; break;
        case 'g': case 'G': mul = 1000000000ull; break;
        default: return false;
        }
        end++;
        if (*end == 'B' || *end == 'b') end++;
    }
    if (*end) return false;
    return idf_mul_u64((uint64_t)v, mul, out);
}

int main(int argc, char **argv) {
    uint64_t seed = 0, shard_size = 2000000000ull, threads = 0;
    sy_dtype dtype = SY_BF16;
    bool legacy = false, dry_run = false;
    const char *pos[2] = {NULL, NULL};
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--seed") && val) {
            if (!parse_u64(val, &seed, false)) goto bad_value;
            i++;
        } else if (!strcmp(a, "--dtype") && val) {
            if (!strcmp(val, "bf16")) dtype = SY_BF16;
            else if (!strcmp(val, "f16")) dtype = SY_F16;
            else if (!strcmp(val, "f32")) dtype = SY_F32;
            else goto bad_value;
            i++;
        } else if (!strcmp(a, "--shard-size") && val) {
            if (!parse_u64(val, &shard_size, true) || shard_size == 0) goto bad_value;
            i++;
        } else if (!strcmp(a, "-j") && val) {
            if (!parse_u64(val, &threads, false) || threads == 0 || threads > 256) goto bad_value;
            i++;
        } else if (!strncmp(a, "-j", 2) && a[2]) { /* -j2, as make and ninja accept */
            if (!parse_u64(a + 2, &threads, false) || threads == 0 || threads > 256) {
                val = a + 2;
                goto bad_value;
            }
        } else if (!strcmp(a, "--legacy-buffers")) {
            legacy = true;
        } else if (!strcmp(a, "--dry-run")) {
            dry_run = true;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, PROG ": unknown option or missing value: %s\n\n", a);
            usage(stderr);
            return 2;
        } else if (npos < 2) {
            pos[npos++] = a;
        } else {
            fprintf(stderr, PROG ": too many arguments\n\n");
            usage(stderr);
            return 2;
        }
        continue;
    bad_value:
        fprintf(stderr, PROG ": bad value for %s: %s\n", a, val);
        return 2;
    }
    if (npos != 2) {
        usage(stderr);
        return 2;
    }
    sy_config cfg;
    if (!sy_config_get(pos[0], &cfg)) {
        fprintf(stderr, PROG ": unknown flavour '%s' (tiny, 9b, llama7b or llama-tiny)\n", pos[0]);
        return 2;
    }
    const char *dir = pos[1];

    sy_plan plan = {0};
    if (!sy_plan_build(&cfg, dtype, seed, legacy, &plan)) {
        fprintf(stderr, PROG ": out of memory\n");
        return 1;
    }
    /* Shards as transformers cuts them: start a new file when the next tensor
     * would overflow the current one (a tensor larger than the limit gets a
     * file of its own). */
    int n_shards = 1;
    uint64_t cur = 0, total = 0, params = 0;
    for (size_t i = 0; i < plan.n; i++) {
        sy_tensor *t = &plan.t[i];
        if (cur > 0 && cur + t->nbytes > shard_size) {
            n_shards++;
            cur = 0;
        }
        t->shard = n_shards - 1;
        t->offset = cur;
        cur += t->nbytes;
        total += t->nbytes;
        params += t->numel;
    }

    int rc = 1;
    sy_tokenizer *tok = NULL;
    idf_pool *pool = NULL;
    uint8_t **bufs = NULL;
    if (!make_dirs(dir)) goto out;
    if (!dry_run) {
        struct statvfs vfs;
        if (statvfs(dir, &vfs) == 0) {
            const uint64_t avail = (uint64_t)vfs.f_bavail * (uint64_t)vfs.f_frsize;
            /* headroom for the JSON files and whatever else writes there meanwhile */
            if (avail < total + ((uint64_t)64 << 20)) {
                fprintf(stderr, PROG ": %s has %.1f MB free; the %s checkpoint needs %.1f MB plus 64 MiB headroom\n",
                        dir, (double)avail / 1e6, cfg.flavour, (double)total / 1e6);
                goto out;
            }
        }
    }
    tok = sy_tokenizer_build(cfg.vocab);
    if (!tok) {
        fprintf(stderr, PROG ": cannot build the %d-entry tokenizer (out of memory?)\n", cfg.vocab);
        goto out;
    }
    const files_ctx fc = {.cfg = &cfg, .dtype = dtype, .tok = tok, .plan = &plan, .n_shards = n_shards, .total = total};
    if (!write_text_file(dir, "config.json", w_config, &fc) ||
        !write_text_file(dir, "generation_config.json", w_generation, &fc) ||
        !write_text_file(dir, "tokenizer.json", w_tokenizer, &fc) ||
        !write_text_file(dir, "tokenizer_config.json", w_tok_config, &fc) ||
        !write_text_file(dir, "special_tokens_map.json", w_special, &fc))
        goto out;
    if (cfg.idefics && (!write_text_file(dir, "preprocessor_config.json", w_preproc, &fc) ||
                        !write_text_file(dir, "added_tokens.json", w_added, &fc)))
        goto out;

    if (dry_run) {
        for (size_t i = 0; i < plan.n; i++) {
            const sy_tensor *t = &plan.t[i];
            printf("%-70s %-4s [", t->name, sy_dtype_name(t->dtype));
            for (int d = 0; d < t->ndim; d++) printf("%s%" PRId64, d ? ", " : "", t->shape[d]);
            printf("]\n");
        }
        printf("tensors %zu\nparams %" PRIu64 "\nbytes %" PRIu64 "\nshards %d\nvocab %d\nmerges %zu\n", plan.n, params,
               total, n_shards, cfg.vocab, sy_tokenizer_n_merges(tok));
        rc = 0;
        goto out;
    }

    pool = idf_pool_create((int)threads, NULL, NULL, NULL);
    const int n_threads = idf_pool_size(pool);
    bufs = calloc((size_t)n_threads, sizeof *bufs);
    if (!pool || !bufs) {
        fprintf(stderr, PROG ": out of memory\n");
        goto out;
    }
    for (int i = 0; i < n_threads; i++)
        if (!(bufs[i] = malloc(CHUNK_BYTES))) {
            fprintf(stderr, PROG ": out of memory\n");
            goto out;
        }
    char hb[32];
    fprintf(stderr, PROG ": %s, %zu tensors, %" PRIu64 " parameters, %s %s in %d file%s, %d thread%s -> %s\n",
            cfg.flavour, plan.n, params, human(total, hb, sizeof hb), sy_dtype_name(dtype), n_shards,
            n_shards > 1 ? "s" : "", n_threads, n_threads > 1 ? "s" : "", dir);
    const double t0 = idf_time_ms();
    shard_job job = {.bufs = bufs, .grand_total = total, .t0 = t0, .last_print = t0, .n_shards = n_shards,
                     .tty = idf_isatty(2), .fd = -1};
    for (size_t first = 0; first < plan.n;) {
        size_t last = first;
        while (last < plan.n && plan.t[last].shard == plan.t[first].shard) last++;
        job.t = &plan.t[first];
        job.n = last - first;
        job.shard = plan.t[first].shard;
        job.data_bytes = job.t[job.n - 1].offset + job.t[job.n - 1].nbytes;
        if (!write_shard(dir, &job, pool)) goto out;
        job.total_before += job.data_bytes;
        first = last;
    }
    if (n_shards > 1 && !write_text_file(dir, "model.safetensors.index.json", w_index, &fc)) goto out;
    atomic_store(&job.written, 0); /* total_before now counts every shard */
    progress(&job, true);
    const double secs = (idf_time_ms() - t0) / 1000.0;
    fprintf(stderr, PROG ": wrote %s in %.1f s (%.0f MB/s)\n", human(total, hb, sizeof hb), secs,
            secs > 0 ? (double)total / 1e6 / secs : 0.0);
    rc = 0;
out:
    if (bufs)
        for (int i = 0; i < idf_pool_size(pool); i++) free(bufs[i]);
    free(bufs);
    idf_pool_free(pool);
    sy_tokenizer_free(tok);
    sy_plan_free(&plan);
    return rc;
}
