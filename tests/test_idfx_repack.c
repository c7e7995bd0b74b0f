/*
 * test_idfx_repack.c - idfx_repack keeps tensors and metadata: zstd -> raw ->
 * zstd (other chunk size) gives byte-identical decoded tensors, identical
 * descriptors and identical metadata entries; the raw copy is fully zero-copy;
 * a damaged input is refused and leaves no output behind.
 */
#include <sys/stat.h>

#include "idfx_writer.h"
#include "quant.h"
#include "repack.h"
#include "test_idfx_util.h"

static int write_source(const char *path) {
    idfx_writer_opts o = idfx_writer_default_opts();
    o.chunk_bytes = 6000;
    o.zstd_level = 3;
    o.n_threads = 2;
    char err[512];
    idfx_writer *w = idfx_writer_open(path, &o, err, sizeof err);
    CHECK(w, "open: %s", err);
    if (!w) return -1;
    static const char *const toks[] = {"a", "bb", "\xe2\x96\x81x"};
    static const float mean[] = {0.48145466f, 0.4578275f, 0.40821073f};
    idfx_writer_kv_str(w, "general.architecture", "idefics", 7);
    idfx_writer_kv_u32(w, "idefics.hidden_size", 64);
    idfx_writer_kv_bool(w, "idefics.use_resampler", 1);
    idfx_writer_kv_f32(w, "idefics.rms_norm_eps", 1e-6f);
    idfx_writer_kv_i32(w, "x.i32", -3);
    idfx_writer_kv_u64(w, "x.u64", 123456789012345ull);
    idfx_writer_kv_u8(w, "x.u8", 9);
    idfx_writer_kv_arr_str(w, "tokenizer.tokens", toks, NULL, 3);
    idfx_writer_kv_arr_f32(w, "vision.image_mean", mean, 3);
    uint64_t rs = 42;
    /* F16 Gaussian (compressible under shuffle), Q4 random, F32 constant-ish */
    uint64_t d1[2] = {40, 256}, d2[2] = {70, 128}, d3[1] = {1000};
    uint64_t n1, n2, n3, u;
    idfx_tensor_nbytes(IDFX_TYPE_F16, IDFX_LAYOUT_ROWMAJOR, 0, 2, d1, &n1, &u);
    idfx_tensor_nbytes(IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 16, 2, d2, &n2, &u);
    idfx_tensor_nbytes(IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 1, d3, &n3, &u);
    uint16_t *a = malloc(n1);
    uint8_t *b = malloc(n2);
    float *c = malloc(n3);
    for (uint64_t i = 0; i < n1 / 2; i++) a[i] = idfx_fp32_to_fp16(rng_normal(&rs) * 0.05f);
    for (uint64_t i = 0; i < n2; i++) b[i] = (uint8_t)(rng_next(&rs) >> 56);
    for (uint64_t i = 0; i < n3 / 4; i++) c[i] = 1.0f + (float)(i % 3) * 0.25f;
    int r = 0;
    r |= idfx_writer_add_tensor(w, "w.f16", IDFX_TYPE_F16, IDFX_LAYOUT_ROWMAJOR, 0, 2, d1, a, n1);
    r |= idfx_writer_add_tensor(w, "w.q4", IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 16, 2, d2, b, n2);
    r |= idfx_writer_add_tensor(w, "w.norm", IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 1, d3, c, n3);
    CHECK(r == 0, "add: %s", idfx_writer_error(w));
    free(a);
    free(b);
    free(c);
    r = idfx_writer_close(w, err, sizeof err);
    CHECK(r == 0, "close: %s", err);
    return r;
}

/* Compare two opened + materialized files entry by entry. */
static void compare(const idfx_file *x, const idfx_file *y, const char *what) {
    CHECK(x->n_kv == y->n_kv && x->n_tensors == y->n_tensors, "%s: counts differ", what);
    for (uint32_t i = 0; i < x->n_kv && i < y->n_kv; i++) {
        const idfx_kv *a = &x->kv[i], *b = &y->kv[i];
        CHECK(!strcmp(a->key, b->key) && a->type == b->type && a->elem_type == b->elem_type && a->count == b->count &&
                  a->value_size == b->value_size && !memcmp(a->value, b->value, a->value_size),
              "%s: metadata entry %u (%s) differs", what, i, a->key);
    }
    for (uint32_t i = 0; i < x->n_tensors && i < y->n_tensors; i++) {
        const idfx_tensor *a = &x->tensors[i], *b = &y->tensors[i];
        CHECK(!strcmp(a->name, b->name) && a->type == b->type && a->layout == b->layout &&
                  a->layout_param == b->layout_param && a->n_dims == b->n_dims &&
                  !memcmp(a->dims, b->dims, sizeof a->dims) && a->nbytes == b->nbytes,
              "%s: tensor %u (%s) descriptor differs", what, i, a->name);
        CHECK(a->data && b->data && a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes),
              "%s: tensor %s bytes differ", what, a->name);
    }
}

typedef struct opened {
    idf_mapping m;
    idfx_file f;
    int ok;
} opened;

static void open_mat(opened *o, const char *path) {
    idf_err e;
    o->ok = 0;
    idefics_status st = map_open(path, &o->m, &o->f, &e);
    CHECK(st == IDEFICS_OK, "%s: %s", path, e.msg);
    if (st != IDEFICS_OK) return;
    st = idfx_materialize(&o->f, NULL, true, &e);
    CHECK(st == IDEFICS_OK, "%s: materialize: %s", path, e.msg);
    o->ok = st == IDEFICS_OK;
    if (!o->ok) {
        idfx_close(&o->f);
        idf_unmap_file(&o->m);
    }
}

static void close_opened(opened *o) {
    if (!o->ok) return;
    idfx_close(&o->f);
    idf_unmap_file(&o->m);
}

int main(void) {
    char dir[4096], src[4200], raw[4200], back[4200], bad[4200], out[4200], err[512];
    if (make_scratch(dir, sizeof dir, "idfx_repack")) return 1;
    snprintf(src, sizeof src, "%s/src.idfx", dir);
    snprintf(raw, sizeof raw, "%s/raw.idfx", dir);
    snprintf(back, sizeof back, "%s/back.idfx", dir);
    snprintf(bad, sizeof bad, "%s/bad.idfx", dir);
    snprintf(out, sizeof out, "%s/out.idfx", dir);
    if (write_source(src)) return finish("test_idfx_repack");

    idfx_writer_opts o = idfx_writer_default_opts();
    o.codec = IDFX_CODEC_RAW;
    CHECK(idfx_repack(src, raw, &o, err, sizeof err) == 0, "zstd -> raw: %s", err);
    o = idfx_writer_default_opts();
    o.chunk_bytes = 2048;
    o.zstd_level = 5;
    CHECK(idfx_repack(raw, back, &o, err, sizeof err) == 0, "raw -> zstd: %s", err);
    CHECK(idfx_repack(src, src, &o, err, sizeof err) == -1, "repack onto itself accepted");

    opened s, r, b;
    open_mat(&s, src);
    open_mat(&r, raw);
    open_mat(&b, back);
    if (s.ok && r.ok && b.ok) {
        compare(&s.f, &r.f, "src vs raw");
        compare(&s.f, &b.f, "src vs back");
        int zstd_src = 0, zstd_back = 0;
        for (uint32_t i = 0; i < r.f.n_tensors; i++) {
            const idfx_tensor *t = &r.f.tensors[i];
            CHECK((const uint8_t *)t->data >= r.m.data && (const uint8_t *)t->data < r.m.data + r.m.size,
                  "raw copy: %s is not zero-copy", t->name);
            for (uint32_t k = 0; k < t->n_chunks; k++) CHECK(t->chunks[k].codec == IDFX_CODEC_RAW, "raw copy has zstd");
            for (uint32_t k = 0; k < s.f.tensors[i].n_chunks; k++) zstd_src += s.f.tensors[i].chunks[k].codec == 1;
            for (uint32_t k = 0; k < b.f.tensors[i].n_chunks; k++) zstd_back += b.f.tensors[i].chunks[k].codec == 1;
        }
        CHECK(zstd_src > 0 && zstd_back > 0, "no zstd chunks (%d, %d): the test would not exercise decoding", zstd_src,
              zstd_back);
        CHECK(b.f.tensors[0].n_chunks > s.f.tensors[0].n_chunks, "chunk size option ignored");
    }
    /* damage one byte of a chunk: repack must refuse and leave nothing */
    if (s.ok) {
        const idfx_chunk *ch = &s.f.tensors[1].chunks[0];
        FILE *fi = fopen(src, "rb"), *fo = fopen(bad, "wb");
        uint8_t *all = malloc(s.m.size);
        if (fi && fo && all && fread(all, 1, s.m.size, fi) == s.m.size) {
            all[ch->offset + ch->stored_size / 2] ^= 0x10;
            fwrite(all, 1, s.m.size, fo);
        }
        free(all);
        if (fi) fclose(fi);
        if (fo) fclose(fo);
        CHECK(idfx_repack(bad, out, &o, err, sizeof err) == -1, "damaged input repacked");
        CHECK(strstr(err, "IDEFICS_ERR_CHECKSUM") && strstr(err, "w.q4"), "message: %s", err);
        struct stat sb;
        CHECK(stat(out, &sb) != 0, "output left behind");
        CHECK(count_dir_entries(dir) == 4, "temporary files left behind");
    }
    close_opened(&s);
    close_opened(&r);
    close_opened(&b);
    remove_scratch(dir);
    return finish("test_idfx_repack");
}
