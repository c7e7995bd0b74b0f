/*
 * test_batch.c - batched generation (idefics.h "batched generation"):
 *   usage: test_batch MODEL.idfx BACKEND IMAGE_DIR   (BACKEND: cpu-ref | cpu | opencl)
 * Table-driven: every scenario runs its sessions through one idefics_batch and
 * each session alone through idefics_generate, and checks that every session
 * streams the same greedy tokens, ends with the same status, and saw logits
 * within the backend's tolerance of the single run at every step. Scenarios:
 * B = 1, 2, 3, 5 at once; prompts of different lengths, with and without
 * images, two images in one prompt; a session joining mid-way; one cancelled;
 * one filling its context; one removed; prompts chunked into decode steps.
 * Skips (77) when the model file is absent or the backend has no device here.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idefics.h"

#include "check.h"

#define MAX_NEW 12
#define MAX_SEQ 6

static idefics_model *g_model;
static const char *g_imgdir;
static int g_vocab;

typedef struct spec {
    const char *text;
    const char *img1, *img2;
} spec;

/* different lengths; with and without images; two images in one prompt */
static const spec g_specs[] = {
    {"What is in the picture?", "shape_red_circle.png", NULL},
    {"Hello", NULL, NULL},
    {"Compare these two images and tell me which one is brighter.", "shape_blue_square.png", "ring_gray.png"},
    {"A longer text-only prompt: the quick brown fox jumps over the lazy dog, then again, and once more.", NULL, NULL},
    {"Describe it.", "noise_small.png", NULL},
    {"One more?", "red_square.png", NULL},
};

typedef struct run {
    idefics_session *s;
    int32_t ids[MAX_NEW + 1];
    int n;
    float *lg; /* [MAX_NEW][vocab]: the logits each token was sampled from */
    int cancel_after; /* cancel from the callback after this many tokens (0 = never) */
    bool done;
    idefics_status st;
} run;

static bool on_tok(void *ud, int32_t tok, const char *piece) {
    (void)piece;
    run *r = ud;
    const float *l = idefics_session_get_logits(r->s);
    if (r->n < MAX_NEW) {
        r->ids[r->n] = tok;
        if (l) memcpy(r->lg + (size_t)r->n * g_vocab, l, (size_t)g_vocab * sizeof(float));
        r->n++;
    }
    if (r->cancel_after && r->n == r->cancel_after) idefics_session_cancel(r->s);
    return true;
}

static void on_done(void *ud, idefics_session *s, idefics_status st) {
    run *r = ud;
    CHECK(s == r->s, "on_done names another session");
    CHECK(!r->done, "on_done twice");
    r->done = true;
    r->st = st;
}

static idefics_session *make_session(const spec *sp, int n_ctx) {
    idefics_session_params p = idefics_session_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = 2;
    idefics_session *s = NULL;
    char err[512], path[1024];
    if (idefics_session_create(g_model, &p, &s, err, sizeof err) != IDEFICS_OK) {
        CHECK(0, "session_create: %s", err);
        return NULL;
    }
    const char *im[2] = {sp->img1, sp->img2};
    for (int i = 0; i < 2; i++)
        if (im[i]) {
            snprintf(path, sizeof path, "%s/%s", g_imgdir, im[i]);
            CHECK(idefics_add_image_file(s, path) == IDEFICS_OK, "image %s: %s", path, idefics_session_last_error(s));
        }
    CHECK(idefics_add_user_turn(s, sp->text) == IDEFICS_OK, "user turn: %s", idefics_session_last_error(s));
    return s;
}

static int prompt_tokens(const spec *sp) {
    idefics_session *s = make_session(sp, 0);
    const int n = s ? idefics_session_get_tokens(s, NULL) : 0;
    idefics_session_free(s);
    return n;
}

typedef struct scenario {
    const char *name;
    int n;                     /* sessions */
    int join_at[MAX_SEQ];      /* step at which session i joins */
    int cancel_after[MAX_SEQ]; /* tokens, 0 = never */
    int ctx_room[MAX_SEQ];     /* n_ctx = prompt + this (0 = 256) */
    int remove_at[MAX_SEQ];    /* step at which it is removed (0 = never) */
    int max_sessions, prefill_chunk;
} scenario;

static const scenario g_scen[] = {
    {"B1", 1, {0}, {0}, {0}, {0}, 8, 0},
    {"B2", 2, {0}, {0}, {0}, {0}, 8, 0},
    {"B3", 3, {0}, {0}, {0}, {0}, 3, 0},
    {"B5", 5, {0}, {0}, {0}, {0}, 5, 0},
    {"join-midway", 3, {0, 0, 4}, {0}, {0}, {0}, 3, 0},
    {"cancel-one", 3, {0}, {0, 3, 0}, {0}, {0}, 4, 0},
    {"fill-context", 3, {0}, {0}, {0, 0, 4}, {0}, 4, 0},
    {"remove-one", 3, {0}, {0}, {0}, {0, 3, 0}, 4, 0},
    {"chunked-prefill", 4, {0, 0, 2, 5}, {0}, {0}, {0}, 4, 8},
    {"chunked-cancel-fill", 3, {0, 1, 1}, {0, 2, 0}, {0, 0, 3}, {0}, 3, 5},
};

static double nmse(const float *a, const float *b, int n) {
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return den > 0 ? num / den : num;
}

static double g_tol, g_worst;

static void run_scenario(const scenario *sc) {
    run single[MAX_SEQ] = {0}, batched[MAX_SEQ] = {0};
    int n_ctx[MAX_SEQ];
    idefics_generate_params gp = idefics_generate_default_params();
    gp.max_new_tokens = MAX_NEW;
    for (int i = 0; i < sc->n; i++) {
        const spec *sp = &g_specs[i % (int)(sizeof g_specs / sizeof g_specs[0])];
        n_ctx[i] = sc->ctx_room[i] ? prompt_tokens(sp) + sc->ctx_room[i] : 256;
        run *rs[2] = {&single[i], &batched[i]};
        for (int k = 0; k < 2; k++) {
            rs[k]->lg = calloc((size_t)MAX_NEW * g_vocab, sizeof(float));
            rs[k]->cancel_after = sc->cancel_after[i];
            rs[k]->s = make_session(sp, n_ctx[i]);
            if (!rs[k]->s || !rs[k]->lg) return;
        }
        /* alone; a removed session is compared up to its removal only */
        single[i].st = idefics_generate(single[i].s, &gp, on_tok, &single[i]);
        single[i].done = true;
    }
    idefics_batch_params bp = idefics_batch_default_params();
    bp.max_sessions = sc->max_sessions;
    bp.prefill_chunk = sc->prefill_chunk;
    bp.n_threads = 2;
    idefics_batch *b = NULL;
    char err[512];
    idefics_status st = idefics_batch_create(g_model, &bp, &b, err, sizeof err);
    CHECK(st == IDEFICS_OK, "%s: batch_create: %s", sc->name, err);
    if (st) return;
    int joined = 0;
    for (int step = 0; step < 200; step++) {
        for (int i = 0; i < sc->n; i++)
            if (sc->join_at[i] == step) {
                st = idefics_batch_add(b, batched[i].s, &gp, on_tok, on_done, &batched[i]);
                CHECK(st == IDEFICS_OK, "%s: batch_add %d: %s", sc->name, i, idefics_batch_last_error(b));
                joined++;
            }
        for (int i = 0; i < sc->n; i++)
            if (sc->remove_at[i] && sc->remove_at[i] == step) {
                CHECK(idefics_batch_contains(b, batched[i].s), "%s: %d left before its removal", sc->name, i);
                CHECK(idefics_batch_remove(b, batched[i].s) == IDEFICS_OK, "%s: remove %d", sc->name, i);
                CHECK(!idefics_batch_contains(b, batched[i].s), "%s: %d still a member", sc->name, i);
                batched[i].done = true;
                batched[i].st = IDEFICS_ERR_CANCELLED;
            }
        if (joined == sc->n && idefics_batch_n_sessions(b) == 0) break;
        CHECK(idefics_batch_step(b) == IDEFICS_OK, "%s: step", sc->name);
    }
    CHECK(idefics_batch_n_sessions(b) == 0, "%s: sessions still in the batch after 200 steps", sc->name);
    for (int i = 0; i < sc->n; i++) {
        const run *x = &single[i], *y = &batched[i];
        CHECK(y->done, "%s/%d: never finished", sc->name, i);
        const bool removed = sc->remove_at[i] != 0;
        if (!removed) {
            CHECK(x->st == y->st, "%s/%d: status %s alone, %s batched", sc->name, i, idefics_status_str(x->st),
                  idefics_status_str(y->st));
            CHECK(x->n == y->n, "%s/%d: %d tokens alone, %d batched", sc->name, i, x->n, y->n);
            const idefics_finish_reason fx = idefics_session_finish_reason(x->s), fy = idefics_session_finish_reason(y->s);
            CHECK(fx == fy, "%s/%d: finish reason %s alone, %s batched", sc->name, i, idefics_finish_reason_str(fx),
                  idefics_finish_reason_str(fy));
            if (sc->cancel_after[i])
                CHECK(fy == IDEFICS_FINISH_CANCELLED, "%s/%d: cancelled but %s", sc->name, i,
                      idefics_finish_reason_str(fy));
            if (sc->ctx_room[i])
                CHECK(fy == IDEFICS_FINISH_CONTEXT_FULL || fy == IDEFICS_FINISH_STOP, "%s/%d: context %s", sc->name,
                      i, idefics_finish_reason_str(fy));
        } else {
            CHECK(y->n > 0 && y->n < x->n, "%s/%d: removed after %d tokens (alone %d)", sc->name, i, y->n, x->n);
            CHECK(idefics_session_finish_reason(y->s) == IDEFICS_FINISH_CANCELLED, "%s/%d: removed but %s", sc->name,
                  i, idefics_finish_reason_str(idefics_session_finish_reason(y->s)));
        }
        for (int t = 0; t < x->n && t < y->n; t++) {
            CHECK(x->ids[t] == y->ids[t], "%s/%d: token %d: %d alone, %d batched", sc->name, i, t, x->ids[t],
                  y->ids[t]);
            const double e = nmse(y->lg + (size_t)t * g_vocab, x->lg + (size_t)t * g_vocab, g_vocab);
            if (e > g_worst) g_worst = e;
            CHECK(e <= g_tol, "%s/%d: token %d: logits NMSE %.3g > %.3g", sc->name, i, t, e, g_tol);
        }
        /* the conversations agree too: the answer was appended, the session is usable */
        const int32_t *a, *c;
        const int na = idefics_session_get_tokens(x->s, &a), nc = idefics_session_get_tokens(y->s, &c);
        if (!removed)
            CHECK(na == nc && !memcmp(a, c, (size_t)na * sizeof *a), "%s/%d: conversations differ", sc->name, i);
    }
    /* a session is usable after the batch: a second turn alone continues it */
    if (sc->n > 1 && !sc->remove_at[0] && !sc->cancel_after[0]) {
        CHECK(idefics_add_user_turn(batched[0].s, "And then?") == IDEFICS_OK, "%s: second turn", sc->name);
        CHECK(idefics_add_user_turn(single[0].s, "And then?") == IDEFICS_OK, "%s: second turn", sc->name);
        run r2a = {.s = single[0].s, .lg = single[0].lg}, r2b = {.s = batched[0].s, .lg = batched[0].lg};
        idefics_generate_params g4 = gp;
        g4.max_new_tokens = 4;
        idefics_generate(r2a.s, &g4, on_tok, &r2a);
        idefics_generate(r2b.s, &g4, on_tok, &r2b);
        CHECK(r2a.n == r2b.n && !memcmp(r2a.ids, r2b.ids, (size_t)r2a.n * sizeof(int32_t)),
              "%s: second turns differ", sc->name);
    }
    idefics_batch_free(b);
    for (int i = 0; i < sc->n; i++) {
        idefics_session_free(single[i].s);
        idefics_session_free(batched[i].s);
        free(single[i].lg);
        free(batched[i].lg);
    }
}

static void test_misuse(void) {
    idefics_batch_params bp = idefics_batch_default_params();
    bp.max_sessions = 1;
    idefics_batch *b = NULL;
    char err[256];
    CHECK(idefics_batch_create(NULL, &bp, &b, err, sizeof err) == IDEFICS_ERR_INVALID_ARG && !b, "NULL model");
    bp.max_sessions = 0;
    CHECK(idefics_batch_create(g_model, &bp, &b, err, sizeof err) == IDEFICS_ERR_INVALID_ARG && err[0], "0 sessions");
    bp.max_sessions = 1;
    CHECK(idefics_batch_create(g_model, &bp, &b, err, sizeof err) == IDEFICS_OK, "create: %s", err);
    if (!b) return;
    idefics_session *s1 = make_session(&g_specs[1], 128), *s2 = make_session(&g_specs[1], 128);
    idefics_session_params p = idefics_session_default_params();
    p.n_ctx = 64;
    idefics_session *empty = NULL;
    idefics_session_create(g_model, &p, &empty, err, sizeof err);
    CHECK(idefics_batch_add(b, empty, NULL, NULL, NULL, NULL) == IDEFICS_ERR_EMPTY_PROMPT, "empty prompt joins");
    CHECK(idefics_batch_n_sessions(b) == 0, "a refused session is a member");
    idefics_generate_params bad = idefics_generate_default_params();
    bad.top_p = 2;
    CHECK(idefics_batch_add(b, s1, &bad, NULL, NULL, NULL) == IDEFICS_ERR_INVALID_ARG, "bad params join");
    CHECK(idefics_batch_add(b, s1, NULL, NULL, NULL, NULL) == IDEFICS_OK, "add: %s", idefics_batch_last_error(b));
    CHECK(idefics_batch_add(b, s1, NULL, NULL, NULL, NULL) == IDEFICS_ERR_INVALID_ARG, "added twice");
    CHECK(idefics_batch_add(b, s2, NULL, NULL, NULL, NULL) == IDEFICS_ERR_INVALID_ARG, "over max_sessions");
    CHECK(idefics_batch_remove(b, s2) == IDEFICS_ERR_INVALID_ARG, "removing a non-member");
    CHECK(idefics_batch_step(b) == IDEFICS_OK, "step");
    /* freeing the batch with a member leaves the session usable */
    idefics_batch_free(b);
    idefics_generate_params g2 = idefics_generate_default_params();
    g2.max_new_tokens = 2;
    CHECK(idefics_generate(s1, &g2, NULL, NULL) == IDEFICS_OK, "session after batch_free: %s",
          idefics_session_last_error(s1));
    CHECK(idefics_batch_step(NULL) == IDEFICS_ERR_INVALID_ARG, "NULL step");
    /* cancelled between joining and its first step: leaves with CANCELLED, no token */
    bp.max_sessions = 2;
    CHECK(idefics_batch_create(g_model, &bp, &b, err, sizeof err) == IDEFICS_OK, "create: %s", err);
    if (b) {
        run r = {.s = make_session(&g_specs[0], 128), .lg = calloc((size_t)MAX_NEW * g_vocab, sizeof(float))};
        CHECK(idefics_batch_add(b, r.s, NULL, on_tok, on_done, &r) == IDEFICS_OK, "add");
        idefics_session_cancel(r.s);
        CHECK(idefics_batch_run(b) == IDEFICS_OK, "run");
        CHECK(r.done && r.st == IDEFICS_ERR_CANCELLED && r.n == 0, "early cancel: done %d %s, %d tokens", r.done,
              idefics_status_str(r.st), r.n);
        CHECK(idefics_session_finish_reason(r.s) == IDEFICS_FINISH_CANCELLED &&
                  strstr(idefics_session_last_error(r.s), "cancel"),
              "early cancel: reason %s, error '%s'", idefics_finish_reason_str(idefics_session_finish_reason(r.s)),
              idefics_session_last_error(r.s));
        idefics_batch_free(b);
        idefics_session_free(r.s);
        free(r.lg);
    }
    idefics_session_free(s1);
    idefics_session_free(s2);
    idefics_session_free(empty);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: test_batch MODEL.idfx cpu-ref|cpu|opencl IMAGE_DIR\n");
        return 2;
    }
    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        printf("SKIP: %s is absent\n", argv[1]);
        return 77;
    }
    fclose(f);
    g_imgdir = argv[3];
    idefics_model_params mp = idefics_model_default_params();
    const char *be = argv[2];
    mp.backend = !strcmp(be, "cpu-ref") ? IDEFICS_BACKEND_CPU_REF
                 : !strcmp(be, "cpu")   ? IDEFICS_BACKEND_CPU
                                        : IDEFICS_BACKEND_OPENCL;
    mp.n_threads = 2;
    char err[512];
    idefics_status st = idefics_model_load(argv[1], &mp, &g_model, err, sizeof err);
    if (st == IDEFICS_ERR_NO_DEVICE) {
        printf("SKIP: no %s device: %s\n", be, err);
        return 77;
    }
    if (st) {
        fprintf(stderr, "load %s: %s\n", argv[1], err);
        return 1;
    }
    idefics_model_info mi;
    idefics_model_get_info(g_model, &mi);
    g_vocab = mi.n_vocab;
    /* The batched pass runs each matmul over B rows where a single run has
     * one: the exact backends (fp32 sums) agree to rounding; the fast CPU
     * backend's int8 activations are quantized per row, so per-row results
     * do not depend on B either, but its kernels for one row and for several
     * sum in other orders: the op tests' Q4/Q8 matmul tolerance. */
    g_tol = !strcmp(be, "cpu") ? 2e-4 : 1e-8;
    for (size_t i = 0; i < sizeof g_scen / sizeof g_scen[0]; i++) {
        const int f0 = failures;
        run_scenario(&g_scen[i]);
        printf("%-20s %s\n", g_scen[i].name, failures == f0 ? "ok" : "FAILED");
    }
    test_misuse();
    printf("backend %s (%s): worst logits NMSE batched vs alone %.3g (tolerance %.3g)\n", be, mi.backend, g_worst,
           g_tol);
    idefics_model_free(g_model);
    return failures != 0;
}
