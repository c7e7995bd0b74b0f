/*
 * make_corrupt.c - generate the corrupt-file corpus in tests/corrupt/.
 *
 *   make_corrupt OUTDIR     (writes OUTDIR/NAME.idfx files and OUTDIR/EXPECTED.txt)
 *
 * Run by hand when the format changes; the generated files are committed and
 * tests/test_idfx_corrupt.c checks each file's status. A small valid file is
 * written with the real writer, then each variant damages exactly one thing.
 * Unless the variant is about a checksum, the index and header checksums are
 * recomputed afterwards so that the damage reaches the check it targets rather
 * than being caught by a checksum first.
 *
 * Base file: metadata (a string, u32s, a string array, an f32 array) and two
 * tensors, "w.zst" (F16 [4, 64], one zstd chunk) and "w.raw" (Q8 ROWTILE
 * [8, 32], R = 4, one raw chunk). Two chunks at 4096 and 8192 keep each file
 * near 8 KB.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "idfx_writer.h"
#include "platform.h"
#include "quant.h"

typedef struct file {
    uint8_t *p;
    size_t n;
} file;

/* Positions of fields in the base file, found by walking its (trusted) index. */
typedef struct layout {
    uint64_t meta_off, meta_size, dir_off, dir_size;
    /* metadata: position of each key's u16 length and of the byte after the type */
    uint64_t kv_pos[16], kv_val[16];
    char kv_key[16][64];
    int n_kv;
    /* tensors: entry start, type byte, dims, layout_param, n_chunks, first chunk */
    uint64_t t_pos[4], t_type[4], t_dims[4], t_nchunks[4], t_chunk[4];
    int n_t;
} layout;

static const char *g_outdir;
static FILE *g_expected;

static void die(const char *msg) {
    fprintf(stderr, "make_corrupt: %s\n", msg);
    exit(1);
}

static file copy(const file *f) {
    file c = {malloc(f->n + 64), f->n};
    if (!c.p) die("out of memory");
    memcpy(c.p, f->p, f->n);
    return c;
}

static void get_layout(const file *f, layout *L) {
    memset(L, 0, sizeof *L);
    L->meta_off = idf_rd64(f->p + IDFX_OFF_META_OFFSET);
    L->meta_size = idf_rd64(f->p + IDFX_OFF_META_SIZE);
    L->dir_off = idf_rd64(f->p + IDFX_OFF_DIR_OFFSET);
    L->dir_size = idf_rd64(f->p + IDFX_OFF_DIR_SIZE);
    uint32_t n_kv = idf_rd32(f->p + IDFX_OFF_N_KV), n_t = idf_rd32(f->p + IDFX_OFF_N_TENSORS);
    uint64_t p = L->meta_off;
    for (uint32_t i = 0; i < n_kv; i++) {
        uint16_t kl = idf_rd16(f->p + p);
        L->kv_pos[i] = p;
        memcpy(L->kv_key[i], f->p + p + 2, kl);
        uint8_t type = f->p[p + 2 + kl];
        p += 2 + kl + 1;
        L->kv_val[i] = p;
        switch (type) {
        case IDFX_KV_U8: case IDFX_KV_BOOL: p += 1; break;
        case IDFX_KV_U32: case IDFX_KV_I32: case IDFX_KV_F32: p += 4; break;
        case IDFX_KV_U64: p += 8; break;
        case IDFX_KV_STR: p += 4 + idf_rd32(f->p + p); break;
        case IDFX_KV_ARR: {
            uint8_t et = f->p[p];
            uint64_t cnt = idf_rd64(f->p + p + 1);
            p += 9;
            if (et == IDFX_KV_STR)
                for (uint64_t e = 0; e < cnt; e++) p += 4 + idf_rd32(f->p + p);
            else
                p += cnt * (et == IDFX_KV_U64 ? 8 : et <= IDFX_KV_BOOL ? 1 : 4);
            break;
        }
        default: die("unexpected kv type in base file");
        }
    }
    L->n_kv = (int)n_kv;
    p = L->dir_off;
    for (uint32_t i = 0; i < n_t; i++) {
        uint16_t nl = idf_rd16(f->p + p);
        L->t_pos[i] = p;
        uint64_t q = p + 2 + nl;
        L->t_type[i] = q;
        uint8_t nd = f->p[q + 2];
        L->t_dims[i] = q + 4;
        L->t_nchunks[i] = q + 4 + 8ull * nd + 4;
        L->t_chunk[i] = L->t_nchunks[i] + 4;
        p = L->t_chunk[i] + (uint64_t)idf_rd32(f->p + L->t_nchunks[i]) * IDFX_CHUNK_ENTRY_SIZE;
    }
    L->n_t = (int)n_t;
}

static int kv_index(const layout *L, const char *key) {
    for (int i = 0; i < L->n_kv; i++)
        if (!strcmp(L->kv_key[i], key)) return i;
    die("key not in base file");
    return -1;
}

/* Recompute the index checksum (when the sections are in bounds) and the header checksum. */
static void fix_index(file *f) {
    uint64_t mo = idf_rd64(f->p + IDFX_OFF_META_OFFSET), ms = idf_rd64(f->p + IDFX_OFF_META_SIZE);
    uint64_t d0 = idf_rd64(f->p + IDFX_OFF_DIR_OFFSET), ds = idf_rd64(f->p + IDFX_OFF_DIR_SIZE);
    if (idf_range_ok(mo, ms, f->n) && idf_range_ok(d0, ds, f->n)) {
        XXH3_state_t *s = XXH3_createState();
        XXH3_64bits_reset(s);
        XXH3_64bits_update(s, f->p + mo, ms);
        XXH3_64bits_update(s, f->p + d0, ds);
        idf_wr64(f->p + IDFX_OFF_INDEX_CHECKSUM, XXH3_64bits_digest(s));
        XXH3_freeState(s);
    }
}
static void fix_header(file *f) {
    if (f->n >= IDFX_HEADER_SIZE)
        idf_wr64(f->p + IDFX_OFF_HEADER_CHECKSUM, XXH3_64bits(f->p, IDFX_OFF_HEADER_CHECKSUM));
}
static void fix_all(file *f) {
    fix_index(f);
    fix_header(f);
}
/* Recompute a chunk's checksum from its (changed) stored bytes. */
static void fix_chunk_sum(file *f, uint64_t chunk_entry) {
    uint64_t off = idf_rd64(f->p + chunk_entry), sz = idf_rd64(f->p + chunk_entry + 8);
    idf_wr64(f->p + chunk_entry + 24, XXH3_64bits(f->p + off, sz));
}

static void emit(const char *name, file *f, const char *status, const char *why) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", g_outdir, name);
    FILE *o = fopen(path, "wb");
    if (!o || fwrite(f->p, 1, f->n, o) != f->n || fclose(o) != 0) die("cannot write a corpus file");
    fprintf(g_expected, "%s %s\n", name, status);
    printf("%-28s %-26s %s\n", name, status, why);
    free(f->p);
}

static file make_base(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/.base.idfx", g_outdir);
    idfx_writer_opts o = idfx_writer_default_opts();
    o.n_threads = 1;
    o.shuffle = 0;
    char err[512];
    idfx_writer *w = idfx_writer_open(path, &o, err, sizeof err);
    if (!w) die(err);
    static const char *const toks[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a"};
    static const float mean[] = {0.48145466f, 0.4578275f, 0.40821073f};
    int r = 0;
    r |= idfx_writer_kv_str(w, "general.architecture", "idefics", 7);
    r |= idfx_writer_kv_u32(w, "idefics.hidden_size", 64);
    r |= idfx_writer_kv_u32(w, "vision.image_size", 224);
    r |= idfx_writer_kv_u32(w, "vision.patch_size", 14);
    r |= idfx_writer_kv_arr_str(w, "tokenizer.tokens", toks, NULL, 4);
    r |= idfx_writer_kv_arr_f32(w, "vision.image_mean", mean, 3);
    uint64_t d0[2] = {4, 64}, d1[2] = {8, 32};
    uint16_t a[256];
    for (int i = 0; i < 256; i++) a[i] = idfx_fp32_to_fp16((float)(i % 8) * 0.125f); /* compresses well */
    uint8_t b[2 * 136];
    uint64_t s = 12345;
    for (size_t i = 0; i < sizeof b; i++) { /* incompressible: stays raw */
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        b[i] = (uint8_t)(s >> 24);
    }
    r |= idfx_writer_add_tensor(w, "w.zst", IDFX_TYPE_F16, IDFX_LAYOUT_ROWMAJOR, 0, 2, d0, a, sizeof a);
    r |= idfx_writer_add_tensor(w, "w.raw", IDFX_TYPE_Q8, IDFX_LAYOUT_ROWTILE, 4, 2, d1, b, sizeof b);
    if (r) die(idfx_writer_error(w));
    if (idfx_writer_close(w, err, sizeof err)) die(err);
    FILE *in = fopen(path, "rb");
    if (!in) die("cannot reopen the base file");
    file f = {malloc(1 << 16), 0};
    f.n = fread(f.p, 1, 1 << 16, in);
    fclose(in);
    remove(path);
    return f;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_corrupt OUTDIR\n");
        return 2;
    }
    g_outdir = argv[1];
    char ep[4096];
    snprintf(ep, sizeof ep, "%s/EXPECTED.txt", g_outdir);
    g_expected = fopen(ep, "w");
    if (!g_expected) die("cannot write EXPECTED.txt");
    fprintf(g_expected, "# FILE STATUS: status of idfx_open, then idfx_materialize(verify) if open succeeds.\n"
                        "# Generated by tests/corrupt/make_corrupt.c; do not edit by hand.\n");
    file base = make_base();
    layout L;
    get_layout(&base, &L);
    if (L.n_t != 2 || idf_rd32(base.p + L.t_nchunks[0]) != 1 || idf_rd32(base.p + L.t_nchunks[1]) != 1 ||
        base.p[L.t_chunk[0] + 32] != IDFX_CODEC_ZSTD || base.p[L.t_chunk[1] + 32] != IDFX_CODEC_RAW)
        die("base file does not have the expected zstd + raw chunks");
    uint64_t c0 = L.t_chunk[0], c1 = L.t_chunk[1]; /* chunk entries */
    uint64_t c0_off = idf_rd64(base.p + c0), c1_off = idf_rd64(base.p + c1);
    file f;

    f = copy(&base);
    emit("valid.idfx", &f, "IDEFICS_OK", "the undamaged base file");

    /* ---- truncation ---- */
    f = copy(&base); f.n = 0;
    emit("trunc_empty.idfx", &f, "IDEFICS_ERR_TRUNCATED", "0 bytes");
    f = copy(&base); f.n = 3;
    emit("trunc_3.idfx", &f, "IDEFICS_ERR_TRUNCATED", "cut inside the magic");
    f = copy(&base); f.n = 64;
    emit("trunc_64.idfx", &f, "IDEFICS_ERR_TRUNCATED", "cut inside the header");
    f = copy(&base); f.n = IDFX_HEADER_SIZE;
    emit("trunc_header.idfx", &f, "IDEFICS_ERR_TRUNCATED", "header only");
    f = copy(&base); f.n = c1_off + 100;
    emit("trunc_data.idfx", &f, "IDEFICS_ERR_TRUNCATED", "cut inside a chunk");
    f = copy(&base); f.n -= 1;
    emit("trunc_last_byte.idfx", &f, "IDEFICS_ERR_TRUNCATED", "last byte missing");
    f = copy(&base); memset(f.p + f.n, 0, 16); f.n += 16;
    emit("trailing_bytes.idfx", &f, "IDEFICS_ERR_CORRUPT", "16 bytes past header.file_size");

    /* ---- header ---- */
    f = copy(&base); memcpy(f.p, "GGUF", 4);
    emit("bad_magic.idfx", &f, "IDEFICS_ERR_BAD_MAGIC", "GGUF magic");
    f = copy(&base); idf_wr32(f.p + IDFX_OFF_VERSION, 2); fix_header(&f);
    emit("bad_version.idfx", &f, "IDEFICS_ERR_BAD_VERSION", "version 2");
    f = copy(&base); f.p[IDFX_OFF_RESERVED1 + 3] ^= 0x40;
    emit("bad_header_checksum.idfx", &f, "IDEFICS_ERR_CHECKSUM", "reserved header byte flipped, checksum stale");
    f = copy(&base); f.p[L.kv_val[0] + 5] ^= 0x01;
    emit("bad_index_checksum.idfx", &f, "IDEFICS_ERR_CHECKSUM", "metadata byte flipped, index checksum stale");
    f = copy(&base); idf_wr32(f.p + IDFX_OFF_HEADER_SIZE, 256); fix_header(&f);
    emit("bad_header_size.idfx", &f, "IDEFICS_ERR_CORRUPT", "header_size 256");
    f = copy(&base); f.p[IDFX_OFF_RESERVED1 + 3] = 1; fix_header(&f);
    emit("reserved_nonzero.idfx", &f, "IDEFICS_ERR_CORRUPT", "reserved header byte set, checksum fixed");
    f = copy(&base); idf_wr32(f.p + IDFX_OFF_ALIGNMENT, 3000); fix_header(&f);
    emit("bad_alignment.idfx", &f, "IDEFICS_ERR_CORRUPT", "alignment 3000");
    f = copy(&base); idf_wr32(f.p + IDFX_OFF_N_KV, 0xFFFFFFFFu); fix_header(&f);
    emit("absurd_n_kv.idfx", &f, "IDEFICS_ERR_CORRUPT", "n_kv 2^32-1");
    f = copy(&base); idf_wr32(f.p + IDFX_OFF_N_TENSORS, 0x7FFFFFFFu); fix_header(&f);
    emit("absurd_n_tensors.idfx", &f, "IDEFICS_ERR_CORRUPT", "n_tensors 2^31-1");
    f = copy(&base); idf_wr32(f.p + IDFX_OFF_N_KV, (uint32_t)L.n_kv - 1); fix_header(&f);
    emit("meta_leftover.idfx", &f, "IDEFICS_ERR_CORRUPT", "n_kv one short: metadata bytes left over");
    f = copy(&base); idf_wr64(f.p + IDFX_OFF_DIR_OFFSET, f.n - 10); fix_header(&f);
    emit("section_past_eof.idfx", &f, "IDEFICS_ERR_TRUNCATED", "directory runs past the end");
    f = copy(&base); idf_wr64(f.p + IDFX_OFF_META_OFFSET, UINT64_MAX - 15); fix_header(&f);
    emit("section_offset_overflow.idfx", &f, "IDEFICS_ERR_TRUNCATED", "meta_offset + meta_size wraps around");
    f = copy(&base); idf_wr64(f.p + IDFX_OFF_DIR_OFFSET, L.meta_off); fix_all(&f);
    emit("sections_overlap.idfx", &f, "IDEFICS_ERR_CORRUPT", "directory placed on the metadata");
    f = copy(&base); idf_wr64(f.p + IDFX_OFF_META_OFFSET, 64); fix_header(&f);
    emit("section_in_header.idfx", &f, "IDEFICS_ERR_CORRUPT", "metadata inside the header");

    /* ---- metadata ---- */
    int k_arch = kv_index(&L, "general.architecture"), k_tok = kv_index(&L, "tokenizer.tokens");
    int k_mean = kv_index(&L, "vision.image_mean"), k_img = kv_index(&L, "vision.image_size");
    f = copy(&base); idf_wr32(f.p + L.kv_val[k_arch], 1000); fix_all(&f);
    emit("lying_string_length.idfx", &f, "IDEFICS_ERR_CORRUPT", "general.architecture claims 1000 bytes");
    f = copy(&base); idf_wr32(f.p + L.kv_val[k_tok] + 9, 0x7FFFFFF0u); fix_all(&f);
    emit("lying_array_string.idfx", &f, "IDEFICS_ERR_CORRUPT", "tokenizer.tokens[0] claims 2 GB");
    f = copy(&base); idf_wr64(f.p + L.kv_val[k_tok] + 1, 1ull << 62); fix_all(&f);
    emit("absurd_array_count.idfx", &f, "IDEFICS_ERR_CORRUPT", "tokenizer.tokens count 2^62");
    f = copy(&base); f.p[L.kv_val[k_arch] - 1] = 42; fix_all(&f);
    emit("unknown_kv_type.idfx", &f, "IDEFICS_ERR_CORRUPT", "kv type 42");
    f = copy(&base); f.p[L.kv_val[k_mean]] = IDFX_KV_ARR; fix_all(&f);
    emit("nested_array.idfx", &f, "IDEFICS_ERR_CORRUPT", "array of arrays");
    f = copy(&base); memcpy(f.p + L.kv_pos[k_img] + 2, "vision.patch_size", 17); fix_all(&f);
    emit("dup_key.idfx", &f, "IDEFICS_ERR_CORRUPT", "vision.patch_size twice");
    f = copy(&base); idf_wr16(f.p + L.kv_pos[0], 0); fix_all(&f);
    emit("empty_key.idfx", &f, "IDEFICS_ERR_CORRUPT", "key length 0");

    /* ---- directory ---- */
    f = copy(&base); memcpy(f.p + L.t_pos[1] + 2, "w.zst", 5); fix_all(&f);
    emit("dup_tensor_name.idfx", &f, "IDEFICS_ERR_CORRUPT", "w.zst twice");
    f = copy(&base); f.p[L.t_type[0]] = 9; fix_all(&f);
    emit("unknown_type.idfx", &f, "IDEFICS_ERR_CORRUPT", "type 9");
    f = copy(&base); f.p[L.t_type[0] + 1] = 7; fix_all(&f);
    emit("unknown_layout.idfx", &f, "IDEFICS_ERR_CORRUPT", "layout 7");
    f = copy(&base); f.p[L.t_type[0] + 2] = 7; fix_all(&f);
    emit("bad_n_dims.idfx", &f, "IDEFICS_ERR_CORRUPT", "n_dims 7");
    f = copy(&base); idf_wr64(f.p + L.t_dims[1] + 8, 33); fix_all(&f);
    emit("bad_shape.idfx", &f, "IDEFICS_ERR_BAD_SHAPE", "Q8 ROWTILE with K = 33");
    f = copy(&base); idf_wr64(f.p + L.t_dims[0], 0); fix_all(&f);
    emit("zero_dim.idfx", &f, "IDEFICS_ERR_BAD_SHAPE", "dims[0] = 0");
    f = copy(&base); idf_wr32(f.p + L.t_nchunks[0], 0xFFFFFFFFu); fix_all(&f);
    emit("absurd_n_chunks.idfx", &f, "IDEFICS_ERR_CORRUPT", "n_chunks 2^32-1");
    f = copy(&base); f.p[c0 + 32] = 7; fix_all(&f);
    emit("unknown_codec.idfx", &f, "IDEFICS_ERR_CORRUPT", "codec 7");
    f = copy(&base); f.p[c0 + 33] = 9; fix_all(&f);
    emit("unknown_filter.idfx", &f, "IDEFICS_ERR_CORRUPT", "filter 9");
    f = copy(&base); idf_wr64(f.p + c1, (f.n + 8191) / 4096 * 4096); fix_all(&f);
    emit("chunk_past_eof.idfx", &f, "IDEFICS_ERR_TRUNCATED", "w.raw chunk offset beyond the file");
    f = copy(&base); idf_wr64(f.p + c1 + 8, UINT64_MAX - 100); idf_wr64(f.p + c1 + 16, UINT64_MAX - 100); fix_all(&f);
    emit("chunk_size_overflow.idfx", &f, "IDEFICS_ERR_TRUNCATED", "offset + stored_size wraps around");
    f = copy(&base); idf_wr64(f.p + c1, 0); fix_all(&f);
    emit("chunk_outside_data.idfx", &f, "IDEFICS_ERR_CORRUPT", "w.raw chunk at offset 0");
    f = copy(&base); idf_wr64(f.p + c1, c1_off + 8); fix_all(&f);
    emit("chunk_misaligned.idfx", &f, "IDEFICS_ERR_CORRUPT", "w.raw chunk offset not a multiple of 4096");
    f = copy(&base); idf_wr64(f.p + c1, c0_off); fix_all(&f);
    emit("chunks_overlap.idfx", &f, "IDEFICS_ERR_CORRUPT", "w.raw chunk on top of w.zst chunk");
    f = copy(&base); idf_wr64(f.p + c0 + 16, 1024); fix_all(&f);
    emit("raw_size_sum.idfx", &f, "IDEFICS_ERR_CORRUPT", "w.zst raw_size 1024, tensor is 512 bytes");
    f = copy(&base); idf_wr64(f.p + c1 + 16, 100); fix_all(&f);
    emit("raw_size_unit.idfx", &f, "IDEFICS_ERR_CORRUPT", "w.raw raw_size 100, not whole tiles");
    f = copy(&base); idf_wr64(f.p + c1 + 8, 200); fix_chunk_sum(&f, c1); fix_all(&f);
    emit("raw_stored_mismatch.idfx", &f, "IDEFICS_ERR_CORRUPT", "raw chunk with stored_size != raw_size");
    f = copy(&base); idf_wr32(f.p + IDFX_OFF_N_TENSORS, 1); fix_header(&f);
    emit("dir_leftover.idfx", &f, "IDEFICS_ERR_CORRUPT", "n_tensors one short: directory bytes left over");

    /* ---- chunk payloads (caught by materialize with verify) ---- */
    f = copy(&base); f.p[c1_off + 17] ^= 0x04;
    emit("chunk_flipped_byte.idfx", &f, "IDEFICS_ERR_CHECKSUM", "one bit of w.raw data flipped");
    f = copy(&base); f.p[c0_off] ^= 0xFF; fix_chunk_sum(&f, c0); fix_all(&f);
    emit("zstd_bad_magic.idfx", &f, "IDEFICS_ERR_DECOMPRESS", "w.zst frame magic broken, checksum fixed");
    f = copy(&base); idf_wr64(f.p + c0 + 8, idf_rd64(f.p + c0 + 8) - 3); fix_chunk_sum(&f, c0); fix_all(&f);
    emit("zstd_short_frame.idfx", &f, "IDEFICS_ERR_DECOMPRESS", "w.zst frame cut by 3 bytes, checksum fixed");
    f = copy(&base);
    {
        /* retype the F16 [4,64] tensor as F16 [8,64]: its frame then declares
         * 512 bytes where the directory says 1024 */
        idf_wr64(f.p + L.t_dims[0], 8);
        idf_wr64(f.p + c0 + 16, 1024);
        fix_all(&f);
    }
    emit("zstd_size_mismatch.idfx", &f, "IDEFICS_ERR_DECOMPRESS", "frame content size 512, raw_size 1024");

    fclose(g_expected);
    free(base.p);
    return 0;
}
