/*
 * test_idfx_roundtrip.c - writer -> reader round trip over every type, layout,
 * codec and filter combination, with random data: decoded bytes must equal the
 * bytes written, metadata must read back through the typed getters, raw
 * tensors must be zero-copy pointers into the mapping, and materialize must
 * give the same bytes with and without a thread pool. Also checks that the
 * writer rejects invalid input and that abort/close leave no temporary files.
 */
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>

#include "idfx_writer.h"
#include "quant.h"
#include "test_idfx_util.h"

typedef struct tspec {
    const char *name;
    int type, layout;
    uint32_t lp;
    uint32_t n_dims;
    uint64_t dims[4];
} tspec;

static const tspec SPECS[] = {
    {"f32.1d", IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 1, {37}},
    {"f32.2d", IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 2, {5, 300}},
    {"f32.3d", IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 3, {2, 3, 70}},
    {"f32.4d", IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 4, {2, 2, 2, 9}},
    {"f16.1d", IDFX_TYPE_F16, IDFX_LAYOUT_ROWMAJOR, 0, 1, {100}},
    {"f16.2d", IDFX_TYPE_F16, IDFX_LAYOUT_ROWMAJOR, 0, 2, {33, 200}},
    /* 4096-byte rows: multi-chunk raw tensors stay contiguous (zero copy) */
    {"f16.big", IDFX_TYPE_F16, IDFX_LAYOUT_ROWMAJOR, 0, 2, {64, 2048}},
    {"q4.r4", IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 4, 2, {13, 64}},
    {"q4.r64", IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 64, 2, {64, 96}},
    {"q4.r1", IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 1, 2, {7, 32}},
    {"q8.r8", IDFX_TYPE_Q8, IDFX_LAYOUT_ROWTILE, 8, 2, {10, 128}},
    {"q8.r2", IDFX_TYPE_Q8, IDFX_LAYOUT_ROWTILE, 2, 2, {3, 32}},
};
#define N_SPECS (sizeof SPECS / sizeof SPECS[0])

typedef struct config {
    const char *name;
    int codec, shuffle;
    double min_saving;
    uint64_t chunk_bytes;
    uint32_t alignment;
    int n_threads;
} config;

static const config CONFIGS[] = {
    {"raw", IDFX_CODEC_RAW, 0, 0.05, IDFX_DEFAULT_CHUNK_BYTES, 4096, 2},
    {"raw-small-chunks", IDFX_CODEC_RAW, 0, 0.05, 1000, 4096, 3},
    {"raw-shuffle", IDFX_CODEC_RAW, 1, 0.05, 3000, 4096, 2},
    {"zstd-forced", IDFX_CODEC_ZSTD, 0, -1.0, 2000, 4096, 2},
    {"zstd-shuffle-forced", IDFX_CODEC_ZSTD, 1, -1.0, 5000, 4096, 4},
    {"zstd-auto", IDFX_CODEC_ZSTD, -1, 0.05, 8192, 4096, 2},
    {"zstd-auto-align64k", IDFX_CODEC_ZSTD, -1, 0.05, IDFX_DEFAULT_CHUNK_BYTES, 65536, 1},
};
#define N_CONFIGS (sizeof CONFIGS / sizeof CONFIGS[0])

/* Weight-like bytes: F32/F16 Gaussian values (their exponent bytes are
 * compressible, especially once shuffled); Q4/Q8 random quants with a run of
 * similar scales. */
static uint8_t *make_data(const tspec *s, uint64_t seed, uint64_t *nbytes) {
    uint64_t unit;
    if (!idfx_tensor_nbytes(s->type, s->layout, s->lp, s->n_dims, s->dims, nbytes, &unit)) return NULL;
    uint8_t *d = malloc(*nbytes);
    uint64_t rs = seed * 0x9E3779B97F4A7C15ull + 1;
    if (s->type == IDFX_TYPE_F32) {
        for (uint64_t i = 0; i < *nbytes / 4; i++) {
            float v = rng_normal(&rs) * 0.02f;
            memcpy(d + 4 * i, &v, 4);
        }
    } else if (s->type == IDFX_TYPE_F16) {
        for (uint64_t i = 0; i < *nbytes / 2; i++) {
            uint16_t h = idfx_fp32_to_fp16(rng_normal(&rs) * 0.02f);
            memcpy(d + 2 * i, &h, 2);
        }
    } else {
        for (uint64_t i = 0; i < *nbytes; i++) d[i] = (uint8_t)(rng_next(&rs) >> 56);
    }
    return d;
}

static void write_metadata(idfx_writer *w) {
    static const char *const toks[] = {"<unk>", "", "\xe2\x96\x81the", "<0x0A>"};
    static const float fa[] = {0.5f, -1.25f, 3e-8f};
    static const uint32_t ua[] = {7, 0, 4000000000u};
    CHECK(idfx_writer_kv_str(w, "general.architecture", "idefics", 7) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_u8(w, "t.u8", 200) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_bool(w, "t.bool", 1) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_u32(w, "t.u32", 4096) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_i32(w, "t.i32", -5) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_i32(w, "t.i32pos", 12) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_f32(w, "t.f32", 1e-6f) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_u64(w, "t.u64", 1ull << 40) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_str(w, "t.empty", "", 0) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_arr_str(w, "t.toks", toks, NULL, 4) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_arr_f32(w, "t.fa", fa, 3) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_arr_u32(w, "t.ua", ua, 3) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_kv_arr_u32(w, "t.ua0", NULL, 0) == 0, "%s", idfx_writer_error(w));
    /* duplicate keys are rejected and do not corrupt the metadata written so far */
    CHECK(idfx_writer_kv_u32(w, "t.u32", 1) == -1, "duplicate key accepted");
    CHECK(strstr(idfx_writer_error(w), "t.u32") != NULL, "message does not name the key: %s", idfx_writer_error(w));
}

static void check_metadata(const idfx_file *f) {
    idf_err e;
    uint32_t u;
    float x;
    bool b;
    const char *s;
    uint32_t len;
    CHECK(f->n_kv == 13, "n_kv %u", f->n_kv);
    CHECK(idfx_get_str(f, "general.architecture", &s, &len, &e) == IDEFICS_OK && len == 7 && !memcmp(s, "idefics", 7),
          "architecture");
    CHECK(idfx_get_u32(f, "t.u8", &u, &e) == IDEFICS_OK && u == 200, "u8 %u", u);
    CHECK(idfx_get_bool(f, "t.bool", &b, &e) == IDEFICS_OK && b, "bool");
    CHECK(idfx_get_u32(f, "t.bool", &u, &e) == IDEFICS_OK && u == 1, "bool as u32");
    CHECK(idfx_get_u32(f, "t.u32", &u, &e) == IDEFICS_OK && u == 4096, "u32 %u", u);
    CHECK(idfx_get_u32(f, "t.i32", &u, &e) == IDEFICS_ERR_BAD_CONFIG && strstr(e.msg, "t.i32"), "negative i32 as u32");
    CHECK(idfx_get_u32(f, "t.i32pos", &u, &e) == IDEFICS_OK && u == 12, "i32 >= 0 as u32");
    CHECK(idfx_get_f32(f, "t.f32", &x, &e) == IDEFICS_OK && x == 1e-6f, "f32 %g", x);
    CHECK(idfx_get_f32(f, "t.u32", &x, &e) == IDEFICS_ERR_BAD_CONFIG, "u32 read as f32");
    CHECK(idfx_get_u32(f, "t.missing", &u, &e) == IDEFICS_ERR_BAD_CONFIG && strstr(e.msg, "t.missing"), "missing key");
    const idfx_kv *kv = idfx_find_kv(f, "t.u64");
    CHECK(kv && kv->type == IDFX_KV_U64 && idf_rd64(kv->value) == (1ull << 40), "u64");
    CHECK(idfx_get_str(f, "t.empty", &s, &len, &e) == IDEFICS_OK && len == 0, "empty string");
    CHECK(idfx_get_arr(f, "t.toks", IDFX_KV_STR, &kv, &e) == IDEFICS_OK && kv->count == 4, "string array");
    if (kv && kv->count == 4) {
        static const char *const want[] = {"<unk>", "", "\xe2\x96\x81the", "<0x0A>"};
        uint64_t pos = 0;
        int i = 0;
        while (idfx_arr_next_str(kv, &pos, &s, &len)) {
            CHECK(i < 4 && len == strlen(want[i]) && !memcmp(s, want[i], len), "token %d", i);
            i++;
        }
        CHECK(i == 4, "iterated %d strings", i);
    }
    CHECK(idfx_get_arr(f, "t.fa", IDFX_KV_F32, &kv, &e) == IDEFICS_OK && kv->count == 3 && idfx_arr_f32(kv, 1) == -1.25f &&
              idfx_arr_f32(kv, 2) == 3e-8f,
          "f32 array");
    CHECK(idfx_get_arr(f, "t.fa", IDFX_KV_U32, &kv, &e) == IDEFICS_ERR_BAD_CONFIG, "f32 array read as u32 array");
    CHECK(idfx_get_arr(f, "t.ua", IDFX_KV_U32, &kv, &e) == IDEFICS_OK && idfx_arr_u32(kv, 2) == 4000000000u &&
              idfx_arr_u32(kv, 3) == 0,
          "u32 array");
    CHECK(idfx_get_arr(f, "t.ua0", IDFX_KV_U32, &kv, &e) == IDEFICS_OK && kv->count == 0, "empty array");
}

/* Writer must reject invalid tensors with a message naming them. */
static void check_rejections(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/reject.idfx", dir);
    idfx_writer_opts o = idfx_writer_default_opts();
    o.n_threads = 1;
    char err[256];
    idfx_writer *w = idfx_writer_open(path, &o, err, sizeof err);
    CHECK(w != NULL, "open: %s", err);
    if (!w) return;
    static uint8_t buf[64 * 1024];
    struct {
        const char *name;
        int type, layout;
        uint32_t lp, n_dims;
        uint64_t dims[4], nbytes;
    } bad[] = {
        {"f16.rowtile", IDFX_TYPE_F16, IDFX_LAYOUT_ROWTILE, 4, 2, {4, 32}, 256},
        {"q4.rowmajor", IDFX_TYPE_Q4, IDFX_LAYOUT_ROWMAJOR, 0, 2, {4, 32}, 72},
        {"q4.k33", IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 4, 2, {4, 33}, 72},
        {"q4.r3", IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 3, 2, {4, 32}, 72},
        {"q8.3d", IDFX_TYPE_Q8, IDFX_LAYOUT_ROWTILE, 4, 3, {1, 4, 32}, 136},
        {"f32.zero", IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 2, {0, 4}, 0},
        {"f32.5d", IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 5, {1, 1, 1, 1}, 4},
        {"f32.nbytes", IDFX_TYPE_F32, IDFX_LAYOUT_ROWMAJOR, 0, 1, {8}, 31},
        {"type.9", 9, IDFX_LAYOUT_ROWMAJOR, 0, 1, {8}, 32},
        {"layout.5", IDFX_TYPE_F32, 5, 0, 1, {8}, 32},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int r = idfx_writer_add_tensor(w, bad[i].name, bad[i].type, bad[i].layout, bad[i].lp, bad[i].n_dims, bad[i].dims,
                                       buf, bad[i].nbytes);
        CHECK(r == -1, "invalid tensor %s accepted", bad[i].name);
        CHECK(strstr(idfx_writer_error(w), bad[i].name) != NULL, "message does not name %s: %s", bad[i].name,
              idfx_writer_error(w));
    }
    uint64_t d[1] = {8};
    CHECK(idfx_writer_add_tensor(w, "", IDFX_TYPE_F32, 0, 0, 1, d, buf, 32) == -1, "empty name accepted");
    CHECK(idfx_writer_add_tensor(w, "ok", IDFX_TYPE_F32, 0, 0, 1, d, buf, 32) == 0, "%s", idfx_writer_error(w));
    CHECK(idfx_writer_add_tensor(w, "ok", IDFX_TYPE_F32, 0, 0, 1, d, buf, 32) == -1, "duplicate name accepted");
    CHECK(strstr(idfx_writer_error(w), "'ok'") != NULL, "duplicate message: %s", idfx_writer_error(w));
    /* the output appears only at close; abort leaves nothing behind */
    struct stat sb;
    CHECK(stat(path, &sb) != 0, "output exists before close");
    CHECK(count_dir_entries(dir) == 1, "expected exactly the temp file in %s", dir);
    idfx_writer_abort(w);
    CHECK(count_dir_entries(dir) == 0, "abort left files in %s", dir);
    /* bad options */
    o.alignment = 3000;
    CHECK(idfx_writer_open(path, &o, err, sizeof err) == NULL && strstr(err, "alignment"), "alignment 3000 accepted");
}

/* Which (type, codec, filter) combinations the round trips produced. */
static int seen[IDFX_TYPE_COUNT][IDFX_CODEC_COUNT][IDFX_FILTER_COUNT];

static void run_config(const config *c, const char *dir, idf_pool *pool) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.idfx", dir, c->name);
    idfx_writer_opts o = idfx_writer_default_opts();
    o.codec = c->codec;
    o.shuffle = c->shuffle;
    o.min_saving = c->min_saving;
    o.chunk_bytes = c->chunk_bytes;
    o.alignment = c->alignment;
    o.n_threads = c->n_threads;
    o.zstd_level = 3;
    char err[512];
    idfx_writer *w = idfx_writer_open(path, &o, err, sizeof err);
    CHECK(w != NULL, "%s: open: %s", c->name, err);
    if (!w) return;
    write_metadata(w);
    uint8_t *data[N_SPECS];
    uint64_t nb[N_SPECS];
    for (size_t i = 0; i < N_SPECS; i++) {
        data[i] = make_data(&SPECS[i], i + 1, &nb[i]);
        const tspec *s = &SPECS[i];
        CHECK(idfx_writer_add_tensor(w, s->name, s->type, s->layout, s->lp, s->n_dims, s->dims, data[i], nb[i]) == 0,
              "%s: add %s: %s", c->name, s->name, idfx_writer_error(w));
    }
    idfx_writer_stat stats[IDFX_TYPE_COUNT];
    idfx_writer_stats(w, stats);
    CHECK(stats[IDFX_TYPE_Q4].tensors == 3 && stats[IDFX_TYPE_Q4].params == 13 * 64 + 64 * 96 + 7 * 32,
          "Q4 stats: %llu tensors %llu params", (unsigned long long)stats[IDFX_TYPE_Q4].tensors,
          (unsigned long long)stats[IDFX_TYPE_Q4].params);
    CHECK(idfx_writer_close(w, err, sizeof err) == 0, "%s: close: %s", c->name, err);
    CHECK(count_dir_entries(dir) >= 1, "no output");

    idf_mapping m;
    idfx_file f;
    idf_err e;
    idefics_status st = map_open(path, &m, &f, &e);
    CHECK(st == IDEFICS_OK, "%s: open: %s %s", c->name, idefics_status_str(st), e.msg);
    if (st != IDEFICS_OK) goto out;
    CHECK(f.alignment == c->alignment, "alignment %u", f.alignment);
    check_metadata(&f);
    CHECK(f.n_tensors == N_SPECS, "n_tensors %u", f.n_tensors);
    uint64_t stored_sum = 0;
    for (size_t i = 0; i < N_SPECS && i < f.n_tensors; i++) {
        const idfx_tensor *t = idfx_find_tensor(&f, SPECS[i].name);
        CHECK(t == &f.tensors[i], "%s: find_tensor %s", c->name, SPECS[i].name);
        if (!t) continue;
        CHECK(t->type == SPECS[i].type && t->layout == SPECS[i].layout && t->layout_param == SPECS[i].lp &&
                  t->n_dims == SPECS[i].n_dims && t->nbytes == nb[i],
              "%s: %s descriptor", c->name, t->name);
        uint64_t n_el = 1;
        for (uint32_t d = 0; d < SPECS[i].n_dims; d++) {
            CHECK(t->dims[d] == SPECS[i].dims[d], "%s dims[%u]", t->name, d);
            n_el *= SPECS[i].dims[d];
        }
        CHECK(t->n_elements == n_el, "%s n_elements", t->name);
        /* per-chunk decode, serially */
        uint8_t *buf = malloc(t->nbytes);
        for (uint32_t k = 0; k < t->n_chunks; k++) {
            const idfx_chunk *ch = &t->chunks[k];
            seen[t->type][ch->codec][ch->filter]++;
            stored_sum += ch->stored_size;
            CHECK(ch->raw_size <= c->chunk_bytes || t->n_chunks == 1 || k == 0 || ch->raw_size == t->chunks[0].raw_size,
                  "%s chunk %u raw %llu", t->name, k, (unsigned long long)ch->raw_size);
            st = idfx_decode_chunk(&f, t, k, buf + ch->raw_offset, true, &e);
            CHECK(st == IDEFICS_OK, "%s: decode %s chunk %u: %s", c->name, t->name, k, e.msg);
        }
        CHECK(!memcmp(buf, data[i], t->nbytes), "%s: %s decoded bytes differ", c->name, t->name);
        free(buf);
    }
    uint64_t stats_stored = 0;
    for (int ty = 0; ty < IDFX_TYPE_COUNT; ty++) stats_stored += stats[ty].stored_bytes;
    CHECK(stats_stored == stored_sum, "stats stored %llu vs chunks %llu", (unsigned long long)stats_stored,
          (unsigned long long)stored_sum);

    /* materialize serially and with a pool: same bytes; raw tensors zero-copy */
    for (int pass = 0; pass < 2; pass++) {
        st = idfx_materialize(&f, pass ? pool : NULL, pass == 1, &e);
        CHECK(st == IDEFICS_OK, "%s: materialize: %s", c->name, e.msg);
        if (st != IDEFICS_OK) continue;
        for (size_t i = 0; i < N_SPECS; i++) {
            const idfx_tensor *t = &f.tensors[i];
            CHECK(t->data && !memcmp(t->data, data[i], nb[i]), "%s: %s materialized bytes differ", c->name, t->name);
            const uint8_t *p = t->data;
            bool in_map = p >= m.data && p < m.data + m.size;
            bool all_raw = true, contiguous = true;
            for (uint32_t k = 0; k < t->n_chunks; k++) {
                if (t->chunks[k].codec != IDFX_CODEC_RAW || t->chunks[k].filter != IDFX_FILTER_NONE) all_raw = false;
                if (t->chunks[k].offset != t->chunks[0].offset + t->chunks[k].raw_offset) contiguous = false;
            }
            CHECK(in_map == (all_raw && contiguous), "%s: %s zero-copy %d, raw %d contiguous %d", c->name, t->name,
                  in_map, all_raw, contiguous);
            if (!in_map) CHECK(((uintptr_t)p & 63) == 0, "%s: %s arena pointer not 64-byte aligned", c->name, t->name);
        }
    }
    /* raw + no shuffle: every tensor, including the multi-chunk f16.big, is in place */
    if (c->codec == IDFX_CODEC_RAW && c->shuffle == 0) {
        const idfx_tensor *big = idfx_find_tensor(&f, "f16.big");
        CHECK(big && (c->chunk_bytes >= big->nbytes || big->n_chunks > 1), "f16.big chunking");
        CHECK(big && (const uint8_t *)big->data == m.data + big->chunks[0].offset, "%s: f16.big not zero-copy", c->name);
    }
    idfx_close(&f);
    idf_unmap_file(&m);
out:
    for (size_t i = 0; i < N_SPECS; i++) free(data[i]);
    unlink(path);
}

int main(void) {
    char dir[4096];
    if (make_scratch(dir, sizeof dir, "idfx_roundtrip")) {
        perror("mkdtemp");
        return 1;
    }
    idf_pool *pool = idf_pool_create(3, NULL, NULL, NULL);
    for (size_t i = 0; i < N_CONFIGS; i++) run_config(&CONFIGS[i], dir, pool);
    idf_pool_free(pool);
    /* coverage: every codec x filter combination appeared for the float types,
     * raw and zstd for the quantized ones */
    for (int ty = 0; ty < IDFX_TYPE_COUNT; ty++) {
        bool fl = ty == IDFX_TYPE_F16 || ty == IDFX_TYPE_F32;
        for (int co = 0; co < IDFX_CODEC_COUNT; co++) {
            CHECK(seen[ty][co][IDFX_FILTER_NONE] > 0, "type %s codec %s without filter never written",
                  idfx_type_name(ty), idfx_codec_name(co));
            int sf = ty == IDFX_TYPE_F16 ? IDFX_FILTER_SHUFFLE2 : IDFX_FILTER_SHUFFLE4;
            if (fl) CHECK(seen[ty][co][sf] > 0, "type %s codec %s with shuffle never written", idfx_type_name(ty),
                          idfx_codec_name(co));
        }
    }
    check_rejections(dir);
    remove_scratch(dir);
    return finish("test_idfx_roundtrip");
}
