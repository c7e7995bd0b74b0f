/*
 * test_lowmem.c - idefics_model_params.low_memory (forward.c pages weights in
 * and out of the mapping per layer) and use_mmap = false (the weights copied
 * into anonymous memory, platform idf_map_make_private) must not change results:
 *   usage: test_lowmem MODEL.idfx IMAGE
 * MODEL is converted with --compress none so the weights point into the
 * mapping and the madvise paths really run. Loads the model three times (normal,
 * low_memory, no mmap), asks the same question with greedy decoding and sampling, and
 * compares the generated tokens and the final logits bit for bit; a second
 * turn checks that weights dropped after one pass are faulted back correctly.
 * Skips (77) when the model file is absent.
 */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "idefics.h"

#include "check.h"

typedef struct run {
    int32_t ids[2][64];
    int n[2];
    float last_logit[2][8];
} run;

typedef struct tok_sink {
    run *r;
    int turn;
} tok_sink;

static bool on_tok(void *ud, int32_t tok, const char *piece) {
    (void)piece;
    tok_sink *t = ud;
    if (t->r->n[t->turn] < 64) t->r->ids[t->turn][t->r->n[t->turn]++] = tok;
    return true;
}

static bool run_model(const char *path, const char *image, bool low, bool use_mmap, run *r) {
    idefics_model_params mp = idefics_model_default_params();
    mp.low_memory = low;
    mp.use_mmap = use_mmap;
    mp.n_threads = 1;
    mp.backend = IDEFICS_BACKEND_CPU;
    idefics_model *m = NULL;
    char err[512];
    idefics_status st = idefics_model_load(path, &mp, &m, err, sizeof err);
    CHECK(st == IDEFICS_OK, "load (low_memory %d): %s", low, err);
    if (st) return false;
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = 256;
    sp.n_threads = 1;
    idefics_session *s = NULL;
    st = idefics_session_create(m, &sp, &s, err, sizeof err);
    CHECK(st == IDEFICS_OK, "session: %s", err);
    bool ok = st == IDEFICS_OK;
    memset(r, 0, sizeof *r);
    for (int turn = 0; ok && turn < 2; turn++) {
        if (turn == 0) CHECK(idefics_add_image_file(s, image) == IDEFICS_OK, "image: %s", idefics_session_last_error(s));
        CHECK(idefics_add_user_turn(s, turn ? "And then?" : "What is in this image?") == IDEFICS_OK, "turn");
        idefics_generate_params gp = idefics_generate_default_params();
        gp.max_new_tokens = 12;
        gp.stop_at_eos = false;
        if (turn == 1) gp.temperature = 0.8f, gp.top_k = 20, gp.seed = 7;
        tok_sink t = {r, turn};
        st = idefics_generate(s, &gp, on_tok, &t);
        CHECK(st == IDEFICS_OK, "generate turn %d: %s", turn, idefics_session_last_error(s));
        const float *lg = idefics_session_get_logits(s);
        if (lg) memcpy(r->last_logit[turn], lg, sizeof r->last_logit[turn]);
        ok = st == IDEFICS_OK;
    }
    idefics_session_free(s);
    idefics_model_free(m);
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_lowmem MODEL.idfx IMAGE\n");
        return 2;
    }
    struct stat st;
    if (stat(argv[1], &st) != 0) {
        printf("SKIP: no model file %s\n", argv[1]);
        return 77;
    }
    static run normal, other[2];
    const char *names[2] = {"low_memory", "use_mmap = false"};
    if (run_model(argv[1], argv[2], false, true, &normal) && run_model(argv[1], argv[2], true, true, &other[0]) &&
        run_model(argv[1], argv[2], false, false, &other[1])) {
        for (int o = 0; o < 2; o++)
            for (int t = 0; t < 2; t++) {
                CHECK(normal.n[t] > 0 && normal.n[t] == other[o].n[t] &&
                          !memcmp(normal.ids[t], other[o].ids[t], sizeof(int32_t) * (size_t)normal.n[t]),
                      "turn %d: %s generated different tokens", t, names[o]);
                CHECK(!memcmp(normal.last_logit[t], other[o].last_logit[t], sizeof normal.last_logit[t]),
                      "turn %d: %s logits differ", t, names[o]);
            }
    }
    /* low_memory pages through the mapping: without one it is refused, clearly */
    idefics_model_params mp = idefics_model_default_params();
    mp.low_memory = true;
    mp.use_mmap = false;
    idefics_model *m = NULL;
    char err[512];
    const idefics_status bad = idefics_model_load(argv[1], &mp, &m, err, sizeof err);
    CHECK(bad == IDEFICS_ERR_INVALID_ARG && !m && strstr(err, "use_mmap"),
          "low_memory without use_mmap: status %d, \"%s\"", (int)bad, err);
    idefics_model_free(m);
    printf("low_memory and no-mmap vs normal: %s\n", failures ? "DIFFERENT" : "identical tokens and logits");
    return failures ? 1 : 0;
}
