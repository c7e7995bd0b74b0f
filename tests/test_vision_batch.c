/*
 * test_vision_batch.c - batched image encoding (issue 11): several images
 * through the vision tower, perceiver and cross-attention K/V projections as
 * one batch (forward.h idf_state_add_images, idf_state_encode_images).
 *   usage: test_vision_batch MODEL.idfx BACKEND IMAGE_DIR   (BACKEND: cpu-ref | cpu | opencl)
 * Table-driven. Every case encodes N images in one call and one by one, and
 * compares what the state keeps (latents, every block's cross K/V in the
 * state's KV type: the bytes of idf_state_save), the logits of a prompt whose
 * tokens see each image in turn, and greedy tokens: N = 1, 2, 3, 5, 8 (over
 * IDF_VISION_BATCH = 4: chunks), F16 and Q8 caches, images added after others,
 * images of two states in one call. Then the public API: a prompt with two
 * and one with five images encoded in one call vs one by one (an eval after
 * each image), and sessions with images joining an idefics_batch in one step
 * (their images encoded together, checked through the DEBUG log) vs alone;
 * a low_memory model (one image's scratch: chunks of one); a failing second
 * chunk (the first stays).
 * Skips (77) when the model file is absent or the backend has no device.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "idefics.h"
#include "image.h"
#include "model.h"

#include "check.h"

#define MAX_IMG 8
#define N_GREEDY 6

static idefics_model *g_model;
static const char *g_imgdir;
static const char *g_be;
static bool g_exact; /* results must be bitwise equal (see main) */
static double g_tol, g_worst, g_worst_api; /* worst NMSE: state level, public API */

static const char *const g_files[MAX_IMG] = {
    "shape_red_circle.png", "shape_blue_square.png", "ring_gray.png",      "noise_small.png",
    "red_square.png",       "gradient_wide.png",     "dots_rgba.png",      "shape_yellow_triangle.png",
};
static float *g_px[MAX_IMG];

/* Normalised pixels of an image file, as the session prepares them. */
static float *pixels_of(const char *name) {
    static const idf_alloc al = {{0}};
    const idf_config *c = &g_model->cfg;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", g_imgdir, name);
    idf_image_limits lim = {40 * 1000 * 1000, 64 << 20, false};
    idf_image im = {0}, rs = {0};
    idf_err err = {{0}};
    const int sz = (int)c->v_image_size;
    if (idf_image_load_file(path, &lim, &al, &im, &err) != IDEFICS_OK) return NULL;
    idefics_status st = idf_image_resize_bicubic(&im, sz, sz, &al, &rs, &err);
    idf_image_free(&im, &al);
    if (st != IDEFICS_OK) return NULL;
    float *chw = malloc((size_t)c->v_channels * (size_t)sz * (size_t)sz * sizeof(float));
    if (chw) idf_image_normalize(&rs, c->image_mean, c->image_std, chw);
    idf_image_free(&rs, &al);
    return chw;
}

static double nmse(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? num / den : num;
}

/* a (batched) against b (one by one): bitwise where the backend is exact,
 * else within g_tol; the worst NMSE is reported. */
static void same_floats(const float *a, const float *b, size_t n, const char *what, const char *name) {
    const double e = nmse(a, b, n);
    if (e > g_worst) g_worst = e;
    if (g_exact)
        CHECK(!memcmp(a, b, n * sizeof(float)), "%s: %s differ (NMSE %.3g), expected bitwise equal", name, what, e);
    else
        CHECK(e <= g_tol, "%s: %s NMSE %.3g > %.3g", name, what, e, g_tol);
}

/* ------------------------------------------------------------ state level */

typedef struct vcase {
    const char *name;
    int pre;  /* images added one by one to both states first */
    int n;    /* then n images: one call vs one by one */
    idefics_kv_type kv;
    bool two; /* the n images alternate between two states, in one idf_state_encode_images */
    idefics_kv_type kv2; /* the second state's KV type */
} vcase;

static const vcase g_cases[] = {
    {"N1", 0, 1, IDEFICS_KV_F32, false, IDEFICS_KV_F32},
    {"N2", 0, 2, IDEFICS_KV_F32, false, IDEFICS_KV_F32},
    {"N3", 0, 3, IDEFICS_KV_F32, false, IDEFICS_KV_F32},
    {"N5-chunks", 0, 5, IDEFICS_KV_F32, false, IDEFICS_KV_F32},
    {"N8-two-chunks", 0, 8, IDEFICS_KV_F32, false, IDEFICS_KV_F32},
    {"N3-f16", 0, 3, IDEFICS_KV_F16, false, IDEFICS_KV_F32},
    {"N5-q8", 0, 5, IDEFICS_KV_Q8, false, IDEFICS_KV_F32},
    {"after-2-then-3", 2, 3, IDEFICS_KV_F32, false, IDEFICS_KV_F32},
    {"two-states-N6", 0, 6, IDEFICS_KV_F32, true, IDEFICS_KV_F32},
    {"two-states-N5-q8", 0, 5, IDEFICS_KV_Q8, true, IDEFICS_KV_Q8},
    {"two-states-f32-q8", 0, 3, IDEFICS_KV_F32, true, IDEFICS_KV_Q8},
    {"two-states-f16-f32", 0, 5, IDEFICS_KV_F16, true, IDEFICS_KV_F32},
};

/* The logits of a prompt on st: two text tokens, then three tokens per image
 * seeing that image, then N_GREEDY greedy tokens seeing the last one.
 * logits: [(2 + 3 n_img) * n_vocab] then the greedy ids in *greedy. */
static int prompt_logits(idf_state *st, int n_img, float *logits, int32_t *greedy, const char *name) {
    const idf_config *c = &g_model->cfg;
    const int n = 2 + 3 * n_img;
    int32_t ids[2 + 3 * MAX_IMG], img[2 + 3 * MAX_IMG];
    for (int t = 0; t < n; t++) {
        ids[t] = (int32_t)((5 + 7 * t) % (int)c->n_vocab);
        img[t] = t < 2 ? -1 : (t - 2) / 3;
    }
    idf_err err = {{0}};
    idefics_status s = idf_state_eval(st, ids, img, n, logits, true, &err);
    CHECK(s == IDEFICS_OK, "%s: eval: %s", name, err.msg);
    if (s) return 0;
    float *last = malloc(c->n_vocab * sizeof(float));
    memcpy(last, logits + (size_t)(n - 1) * c->n_vocab, c->n_vocab * sizeof(float));
    int32_t gen_img = img[n - 1];
    for (int g = 0; g < N_GREEDY && s == IDEFICS_OK; g++) {
        int32_t best = 0;
        for (uint32_t v = 1; v < c->n_vocab; v++)
            if (last[v] > last[best]) best = (int32_t)v;
        greedy[g] = best;
        s = idf_state_eval(st, &best, &gen_img, 1, last, false, &err);
        CHECK(s == IDEFICS_OK, "%s: greedy eval: %s", name, err.msg);
    }
    free(last);
    return n;
}

/* Everything the states keep for their images (idf_state_save at n_past 0). */
static void compare_states(idf_state *a, idf_state *b, const char *name) {
    idf_err err = {{0}};
    const size_t na = idf_state_save_bytes(a), nb = idf_state_save_bytes(b);
    CHECK(na == nb && na > 0, "%s: saved sizes %zu vs %zu", name, na, nb);
    if (na != nb || !na) return;
    void *ba = malloc(na), *bb = malloc(nb);
    CHECK(idf_state_save(a, ba, na, &err) == IDEFICS_OK, "%s: save: %s", name, err.msg);
    CHECK(idf_state_save(b, bb, nb, &err) == IDEFICS_OK, "%s: save: %s", name, err.msg);
    if (g_exact)
        CHECK(!memcmp(ba, bb, na), "%s: saved latents / cross K/V differ, expected bitwise equal", name);
    free(ba);
    free(bb);
    const size_t nl = (size_t)g_model->n_img_tokens * g_model->cfg.v_dim;
    for (int i = 0; i < idf_state_n_images(a); i++) {
        const float *la = idf_state_image_latents(a, i), *lb = idf_state_image_latents(b, i);
        CHECK(la && lb, "%s: slot %d has no latents", name, i);
        if (la && lb) same_floats(lb, la, nl, "latents", name);
    }
}

static void run_case(const vcase *vc) {
    const idf_config *c = &g_model->cfg;
    idf_err err = {{0}};
    /* one / batched; with `two`, a second pair gets the odd images */
    idf_state *one[2] = {0}, *bat[2] = {0};
    const int n_st = vc->two ? 2 : 1;
    for (int k = 0; k < n_st; k++) {
        const idefics_kv_type kv = k ? vc->kv2 : vc->kv;
        CHECK(idf_state_create(g_model, 64, kv, 2, &one[k], &err) == IDEFICS_OK, "%s: create: %s", vc->name, err.msg);
        CHECK(idf_state_create(g_model, 64, kv, 2, &bat[k], &err) == IDEFICS_OK, "%s: create: %s", vc->name, err.msg);
        if (!one[k] || !bat[k]) goto out;
    }
    for (int i = 0; i < vc->pre; i++) {
        int s1 = -1, s2 = -1;
        CHECK(idf_state_add_image(one[0], g_px[i], &s1, &err) == IDEFICS_OK && s1 == i, "%s: pre %d: %s", vc->name,
              i, err.msg);
        CHECK(idf_state_add_image(bat[0], g_px[i], &s2, &err) == IDEFICS_OK && s2 == i, "%s: pre %d: %s", vc->name,
              i, err.msg);
    }
    /* image i of the n goes to state i % n_st */
    const float *px[MAX_IMG];
    idf_state *dst[MAX_IMG];
    int slots[MAX_IMG], want[MAX_IMG], held[2] = {vc->pre, 0};
    for (int i = 0; i < vc->n; i++) {
        const int k = i % n_st;
        px[i] = g_px[(vc->pre + i) % MAX_IMG];
        dst[i] = bat[k];
        want[i] = held[k]++;
        slots[i] = -1;
        int s1 = -1;
        CHECK(idf_state_add_image(one[k], px[i], &s1, &err) == IDEFICS_OK && s1 == want[i], "%s: one by one %d: %s",
              vc->name, i, err.msg);
    }
    idefics_status st = vc->two ? idf_state_encode_images(bat[0], dst, px, vc->n, slots, &err)
                                : idf_state_add_images(bat[0], px, vc->n, slots, &err);
    CHECK(st == IDEFICS_OK, "%s: batched: %s", vc->name, err.msg);
    for (int i = 0; i < vc->n; i++)
        CHECK(slots[i] == want[i], "%s: image %d got slot %d, want %d", vc->name, i, slots[i], want[i]);
    for (int k = 0; k < n_st; k++) {
        CHECK(idf_state_n_images(bat[k]) == held[k], "%s: state %d holds %d images, want %d", vc->name, k,
              idf_state_n_images(bat[k]), held[k]);
        if (idf_state_n_images(bat[k]) != held[k]) goto out;
        compare_states(bat[k], one[k], vc->name);
        float *la = malloc((size_t)(2 + 3 * MAX_IMG) * c->n_vocab * sizeof(float));
        float *lb = malloc((size_t)(2 + 3 * MAX_IMG) * c->n_vocab * sizeof(float));
        int32_t ga[N_GREEDY] = {0}, gb[N_GREEDY] = {0};
        const int na = prompt_logits(one[k], held[k], la, ga, vc->name);
        const int nb = prompt_logits(bat[k], held[k], lb, gb, vc->name);
        CHECK(na == nb && na > 0, "%s: prompts of %d and %d tokens", vc->name, na, nb);
        if (na == nb && na > 0) {
            same_floats(lb, la, (size_t)na * c->n_vocab, "prompt logits", vc->name);
            CHECK(!memcmp(ga, gb, sizeof ga), "%s: greedy tokens differ", vc->name);
        }
        free(la);
        free(lb);
    }
out:
    for (int k = 0; k < 2; k++) {
        idf_state_free(one[k]);
        idf_state_free(bat[k]);
    }
}

/* Bad calls and cancellation leave the states' images as they were. */
static void test_misuse(void) {
    idf_err err = {{0}};
    idf_state *s = NULL, *o = NULL, *pass = NULL;
    if (idf_state_create(g_model, 32, IDEFICS_KV_F32, 1, &s, &err) ||
        idf_state_create(g_model, 32, IDEFICS_KV_F16, 1, &o, &err) ||
        idf_state_create_pass(g_model, 4, 1, &pass, &err)) {
        CHECK(0, "misuse: create: %s", err.msg);
        goto out;
    }
    const float *px[3] = {g_px[0], NULL, g_px[1]};
    CHECK(idf_state_add_images(s, px, 3, NULL, &err) == IDEFICS_ERR_INVALID_ARG && idf_state_n_images(s) == 0,
          "a NULL image: %s", err.msg);
    CHECK(idf_state_add_images(s, px, 0, NULL, &err) == IDEFICS_OK && idf_state_n_images(s) == 0, "n = 0");
    CHECK(idf_state_add_images(pass, px, 1, NULL, &err) == IDEFICS_ERR_INVALID_ARG, "a pass state encodes");
    idf_state *d2[2] = {o, pass};
    const float *ok2[2] = {g_px[0], g_px[1]};
    CHECK(idf_state_encode_images(s, d2, ok2, 2, NULL, &err) == IDEFICS_ERR_INVALID_ARG && idf_state_n_images(o) == 0,
          "images into a pass state: %s", err.msg);
    /* a cancel flag of a destination stops the encode; nothing is added anywhere */
    atomic_int flag = 1;
    idf_state_set_cancel_flag(o, &flag);
    idf_state *d3[3] = {s, o, s};
    const float *p3[3] = {g_px[0], g_px[1], g_px[2]};
    CHECK(idf_state_encode_images(s, d3, p3, 3, NULL, &err) == IDEFICS_ERR_CANCELLED, "another state's cancel: %s",
          err.msg);
    CHECK(idf_state_n_images(s) == 0 && idf_state_n_images(o) == 0, "cancelled encode added images: %d, %d",
          idf_state_n_images(s), idf_state_n_images(o));
    atomic_store(&flag, 0);
    int slots[3] = {-1, -1, -1};
    CHECK(idf_state_encode_images(s, d3, p3, 3, slots, &err) == IDEFICS_OK, "after the cancel: %s", err.msg);
    CHECK(slots[0] == 0 && slots[1] == 0 && slots[2] == 1 && idf_state_n_images(s) == 2 && idf_state_n_images(o) == 1,
          "slots %d %d %d", slots[0], slots[1], slots[2]);
    idf_state_set_cancel_flag(s, &flag);
    atomic_store(&flag, 1);
    CHECK(idf_state_add_images(s, p3, 3, NULL, &err) == IDEFICS_ERR_CANCELLED && idf_state_n_images(s) == 2,
          "own cancel: %s", err.msg);
out:
    idf_state_free(s);
    idf_state_free(o);
    idf_state_free(pass);
}

/* A model loaded with low_memory keeps one image's vision scratch: five
 * images in one call run as five chunks and give the same states. */
static void test_low_memory(const char *path, idefics_backend be) {
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = be;
    mp.n_threads = 2;
    mp.low_memory = true;
    idefics_model *lm = NULL;
    char msg[512];
    idf_err err = {{0}};
    idf_state *a = NULL, *b = NULL;
    CHECK(idefics_model_load(path, &mp, &lm, msg, sizeof msg) == IDEFICS_OK, "low_memory load: %s", msg);
    if (!lm) return;
    if (idf_state_create(g_model, 64, IDEFICS_KV_F16, 2, &a, &err) ||
        idf_state_create(lm, 64, IDEFICS_KV_F16, 2, &b, &err)) {
        CHECK(0, "low_memory: create: %s", err.msg);
        goto out;
    }
    for (int i = 0; i < 5; i++)
        CHECK(idf_state_add_image(a, g_px[i], NULL, &err) == IDEFICS_OK, "low_memory: one by one: %s", err.msg);
    int slots[5] = {-1, -1, -1, -1, -1};
    CHECK(idf_state_add_images(b, (const float *const *)g_px, 5, slots, &err) == IDEFICS_OK, "low_memory: %s",
          err.msg);
    CHECK(slots[4] == 4 && idf_state_n_images(b) == 5, "low_memory: slot %d, %d images", slots[4],
          idf_state_n_images(b));
    compare_states(b, a, "low_memory");
out:
    idf_state_free(a);
    idf_state_free(b);
    idefics_model_free(lm);
}

/* An allocator that fails the k-th allocation of one size once armed. */
typedef struct failing {
    size_t size;
    int left; /* allocations of `size` still granted; -1 = disarmed */
} failing;

static void *fail_malloc(void *ud, size_t n) {
    failing *f = ud;
    if (f->left >= 0 && n == f->size && f->left-- == 0) return NULL;
    return malloc(n);
}
static void *fail_realloc(void *ud, void *p, size_t n) {
    (void)ud;
    return realloc(p, n);
}
static void fail_free(void *ud, void *p) {
    (void)ud;
    free(p);
}

/* A chunk that fails adds nothing, and the chunks before it stay: five images
 * where the fifth image's slot cannot be allocated leave the first four (one
 * full chunk) encoded; the fifth then goes in alone, and the state equals
 * five added one by one. */
static void test_chunk_failure(const char *path, idefics_backend be) {
    failing f = {(size_t)g_model->n_img_tokens * g_model->cfg.v_dim * sizeof(float), -1};
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = be;
    mp.n_threads = 2;
    mp.allocator = (idefics_allocator){fail_malloc, fail_realloc, fail_free, &f};
    idefics_model *fm = NULL;
    char msg[512];
    idf_err err = {{0}};
    idf_state *a = NULL, *b = NULL;
    CHECK(idefics_model_load(path, &mp, &fm, msg, sizeof msg) == IDEFICS_OK, "chunk failure: load: %s", msg);
    if (!fm) return;
    if (idf_state_create(g_model, 64, IDEFICS_KV_F32, 2, &a, &err) ||
        idf_state_create(fm, 64, IDEFICS_KV_F32, 2, &b, &err)) {
        CHECK(0, "chunk failure: create: %s", err.msg);
        goto out;
    }
    for (int i = 0; i < 5; i++)
        CHECK(idf_state_add_image(a, g_px[i], NULL, &err) == IDEFICS_OK, "chunk failure: one by one: %s", err.msg);
    int slots[5] = {-1, -1, -1, -1, -1};
    /* a slot allocates its latents and its K and V (F32 here: n_cross * nl *
     * hidden floats each, the latents' size on some shapes): slots 0 .. 3 are
     * granted, slot 4's first allocation of that size fails */
    const size_t kv = (size_t)g_model->cfg.n_cross * g_model->n_img_tokens * g_model->cfg.hidden * sizeof(float);
    f.left = IDF_VISION_BATCH * (kv == f.size ? 3 : 1);
    const idefics_status st = idf_state_add_images(b, (const float *const *)g_px, 5, slots, &err);
    f.left = -1;
    CHECK(st == IDEFICS_ERR_OUT_OF_MEMORY, "chunk failure: %s (%s)", idefics_status_str(st), err.msg);
    CHECK(idf_state_n_images(b) == IDF_VISION_BATCH && slots[3] == 3 && slots[4] == -1,
          "chunk failure: %d images, slots[3] %d, slots[4] %d", idf_state_n_images(b), slots[3], slots[4]);
    err = (idf_err){{0}};
    CHECK(idf_state_add_images(b, (const float *const *)g_px + 4, 1, slots + 4, &err) == IDEFICS_OK && slots[4] == 4,
          "chunk failure: the fifth again: %s", err.msg);
    if (idf_state_n_images(b) == 5) compare_states(b, a, "chunk-failure");
out:
    idf_state_free(a);
    idf_state_free(b);
    idefics_model_free(fm);
}

/* -------------------------------------------------------------- public API */

static idefics_session *new_session(void) {
    idefics_session_params p = idefics_session_default_params();
    p.n_ctx = 256;
    p.n_threads = 2;
    idefics_session *s = NULL;
    char err[512];
    CHECK(idefics_session_create(g_model, &p, &s, err, sizeof err) == IDEFICS_OK, "session_create: %s", err);
    return s;
}

typedef struct gen {
    idefics_session *s;
    int32_t ids[N_GREEDY];
    float *lg; /* [N_GREEDY][vocab] */
    int n, vocab;
    bool done;
    idefics_status st;
} gen;

static bool on_tok(void *ud, int32_t tok, const char *piece) {
    (void)piece;
    gen *g = ud;
    const float *l = idefics_session_get_logits(g->s);
    if (g->n < N_GREEDY) {
        if (l) memcpy(g->lg + (size_t)g->n * g->vocab, l, (size_t)g->vocab * sizeof(float));
        g->ids[g->n++] = tok;
    }
    return true;
}

static void on_done(void *ud, idefics_session *s, idefics_status st) {
    gen *g = ud;
    (void)s;
    g->done = true;
    g->st = st;
}

/* A prompt of n images, each followed by a word, then a question. apart: an
 * eval after each image (so each is encoded alone). */
static idefics_session *image_prompt(int first, int n, bool apart) {
    idefics_session *s = new_session();
    char path[1024];
    for (int i = 0; s && i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", g_imgdir, g_files[(first + i) % MAX_IMG]);
        CHECK(idefics_add_image_file(s, path) == IDEFICS_OK, "image %s: %s", path, idefics_session_last_error(s));
        CHECK(idefics_add_text(s, i % 2 ? "and" : "then") == IDEFICS_OK, "text");
        if (apart) CHECK(idefics_session_eval(s) == IDEFICS_OK, "eval: %s", idefics_session_last_error(s));
    }
    if (s) CHECK(idefics_add_user_turn(s, "What do these show?") == IDEFICS_OK, "turn");
    return s;
}

static void compare_gens(const gen *x, const gen *y, const char *name) {
    CHECK(x->st == IDEFICS_OK && y->st == IDEFICS_OK, "%s: generate %s / %s", name, idefics_status_str(x->st),
          idefics_status_str(y->st));
    CHECK(x->n == y->n && !memcmp(x->ids, y->ids, (size_t)x->n * sizeof(int32_t)), "%s: greedy tokens differ",
          name);
    for (int t = 0; t < x->n && t < y->n; t++) {
        /* the sessions evaluate their prompts in different chunks (the
         * apart one from its cached prefix), so the exactness of
         * the fast backend's chunking does not apply: the batch test's tolerance */
        const double e = nmse(y->lg + (size_t)t * y->vocab, x->lg + (size_t)t * x->vocab, (size_t)x->vocab);
        if (e > g_worst_api) g_worst_api = e;
        CHECK(e <= g_tol, "%s: token %d logits NMSE %.3g > %.3g", name, t, e, g_tol);
    }
}

static void test_sessions(int vocab) {
    const int ns[] = {2, 5};
    for (int k = 0; k < 2; k++) {
        char name[64];
        snprintf(name, sizeof name, "session-%d-images", ns[k]);
        gen x = {.s = image_prompt(0, ns[k], true), .vocab = vocab}, y = {.s = image_prompt(0, ns[k], false),
                                                                             .vocab = vocab};
        x.lg = calloc((size_t)N_GREEDY * vocab, sizeof(float));
        y.lg = calloc((size_t)N_GREEDY * vocab, sizeof(float));
        idefics_generate_params gp = idefics_generate_default_params();
        gp.max_new_tokens = N_GREEDY;
        gp.stop_at_eos = false;
        if (x.s && y.s) {
            x.st = idefics_generate(x.s, &gp, on_tok, &x);
            y.st = idefics_generate(y.s, &gp, on_tok, &y);
            compare_gens(&x, &y, name);
            idefics_timings tm;
            idefics_session_get_timings(y.s, &tm);
            CHECK(tm.image_encode_ms > 0, "%s: image_encode_ms %g", name, tm.image_encode_ms);
        }
        idefics_session_free(x.s);
        idefics_session_free(y.s);
        free(x.lg);
        free(y.lg);
    }
}

static int g_joint; /* DEBUG lines of a joint encode in the batch */

static void on_log(void *ud, idefics_log_level level, const char *msg) {
    (void)ud;
    (void)level;
    if (strstr(msg, "encoded together")) g_joint++;
}

/* Sessions with 2, 1, 0 and 3 images join one batch in the same step: the
 * images of the three with images are encoded together (one log line), and
 * every session streams what it streams alone with its images encoded one by
 * one. */
static void test_batch(int vocab) {
    enum { NS = 4 };
    const int n_img[NS] = {2, 1, 0, 3};
    gen alone[NS] = {0}, joint[NS] = {0};
    idefics_generate_params gp = idefics_generate_default_params();
    gp.max_new_tokens = N_GREEDY;
    gp.stop_at_eos = false;
    for (int i = 0; i < NS; i++) {
        alone[i] = (gen){.s = image_prompt(i, n_img[i], true), .vocab = vocab};
        joint[i] = (gen){.s = image_prompt(i, n_img[i], false), .vocab = vocab};
        alone[i].lg = calloc((size_t)N_GREEDY * vocab, sizeof(float));
        joint[i].lg = calloc((size_t)N_GREEDY * vocab, sizeof(float));
        if (alone[i].s) alone[i].st = idefics_generate(alone[i].s, &gp, on_tok, &alone[i]);
    }
    idefics_batch_params bp = idefics_batch_default_params();
    bp.max_sessions = NS;
    bp.n_threads = 2;
    idefics_batch *b = NULL;
    char err[512];
    CHECK(idefics_batch_create(g_model, &bp, &b, err, sizeof err) == IDEFICS_OK, "batch_create: %s", err);
    const int j0 = g_joint;
    for (int i = 0; b && i < NS; i++)
        CHECK(idefics_batch_add(b, joint[i].s, &gp, on_tok, on_done, &joint[i]) == IDEFICS_OK, "batch_add: %s",
              idefics_batch_last_error(b));
    if (b) CHECK(idefics_batch_run(b) == IDEFICS_OK, "batch_run");
    CHECK(g_joint == j0 + 1, "%d joint encodes in the batch, want 1", g_joint - j0);
    for (int i = 0; i < NS; i++) {
        char name[64];
        snprintf(name, sizeof name, "batch-session-%d", i);
        CHECK(joint[i].done, "%s: not done", name);
        compare_gens(&alone[i], &joint[i], name);
    }
    idefics_batch_free(b);
    for (int i = 0; i < NS; i++) {
        idefics_session_free(alone[i].s);
        idefics_session_free(joint[i].s);
        free(alone[i].lg);
        free(joint[i].lg);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: test_vision_batch MODEL.idfx cpu-ref|cpu|opencl IMAGE_DIR\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        printf("SKIP: %s is absent\n", argv[1]);
        return 77;
    }
    fclose(f);
    g_imgdir = argv[3];
    g_be = argv[2];
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = !strcmp(g_be, "cpu-ref") ? IDEFICS_BACKEND_CPU_REF
                 : !strcmp(g_be, "cpu")   ? IDEFICS_BACKEND_CPU
                                          : IDEFICS_BACKEND_OPENCL;
    mp.n_threads = 2;
    mp.log = on_log;
    mp.log_level = IDEFICS_LOG_DEBUG;
    char err[512];
    idefics_status st = idefics_model_load(argv[1], &mp, &g_model, err, sizeof err);
    if (st == IDEFICS_ERR_NO_DEVICE) {
        printf("SKIP: no %s device: %s\n", g_be, err);
        return 77;
    }
    if (st) {
        fprintf(stderr, "load %s: %s\n", argv[1], err);
        return 1;
    }
    for (int i = 0; i < MAX_IMG; i++) {
        g_px[i] = pixels_of(g_files[i]);
        CHECK(g_px[i], "pixels of %s", g_files[i]);
        if (!g_px[i]) return 1;
    }
    idefics_model_info mi;
    idefics_model_get_info(g_model, &mi);
    /* Stacking images adds rows to each matmul and nothing else: every row's
     * result depends on that row only (fp32 sums in a fixed order on the
     * reference; per-row activation scales on the fast CPU backend), so the
     * batched encode is bitwise equal to one image at a time there. */
    g_exact = strcmp(g_be, "opencl") != 0;
    g_tol = !strcmp(g_be, "cpu") ? 2e-4 : 1e-8;
    for (size_t i = 0; i < sizeof g_cases / sizeof g_cases[0]; i++) {
        const int f0 = failures;
        run_case(&g_cases[i]);
        printf("%-20s %s\n", g_cases[i].name, failures == f0 ? "ok" : "FAILED");
    }
    int f0 = failures;
    test_misuse();
    printf("%-20s %s\n", "misuse", failures == f0 ? "ok" : "FAILED");
    f0 = failures;
    test_low_memory(argv[1], mp.backend);
    printf("%-20s %s\n", "low-memory", failures == f0 ? "ok" : "FAILED");
    f0 = failures;
    test_chunk_failure(argv[1], mp.backend);
    printf("%-20s %s\n", "chunk-failure", failures == f0 ? "ok" : "FAILED");
    f0 = failures;
    test_sessions(mi.n_vocab);
    printf("%-20s %s\n", "sessions", failures == f0 ? "ok" : "FAILED");
    f0 = failures;
    test_batch(mi.n_vocab);
    printf("%-20s %s\n", "idefics-batch", failures == f0 ? "ok" : "FAILED");
    printf("backend %s (%s): worst NMSE batched vs one by one: state %.3g (%s), sessions %.3g (tolerance %.3g)\n",
           g_be, mi.backend, g_worst, g_exact ? "bitwise equal required" : "tolerance", g_worst_api, g_tol);
    for (int i = 0; i < MAX_IMG; i++) free(g_px[i]);
    idefics_model_free(g_model);
    return failures != 0;
}
