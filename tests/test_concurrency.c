/*
 * test_concurrency.c - the public API's thread rules under load (issue 15),
 * meant to run under ThreadSanitizer (tools/run-sanitizers) as well as in the
 * normal suite:
 *   1. several sessions on one shared model, generating at the same time,
 *      give the same greedy tokens as one session alone;
 *   2. idefics_session_cancel from another thread stops a running generate
 *      (IDEFICS_ERR_CANCELLED or a normal finish if it was already done) and
 *      the session stays usable;
 *   3. idefics_tokenize / idefics_token_to_text from 4 threads at once, with
 *      errors mixed in: every thread reads back its own error text.
 * Usage: test_concurrency MODEL.idfx
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idefics.h"

static int failures;
static pthread_mutex_t fail_mu = PTHREAD_MUTEX_INITIALIZER;

#define CHECK(cond, ...)                                 \
    do {                                                 \
        if (!(cond)) {                                   \
            pthread_mutex_lock(&fail_mu);                \
            failures++;                                  \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                \
            fputc('\n', stderr);                         \
            pthread_mutex_unlock(&fail_mu);              \
        }                                                \
    } while (0)

#define N_GEN 8
static const char *const prompts[3] = {"What is in the image?", "Count the dots.", "Say hello."};

typedef struct gen_job {
    idefics_model *model;
    const char *prompt;
    int32_t tokens[N_GEN];
    int n;
    idefics_status st;
} gen_job;

static bool collect(void *ud, int32_t token, const char *piece) {
    (void)piece;
    gen_job *j = ud;
    if (j->n < N_GEN) j->tokens[j->n++] = token;
    return true;
}

static void *gen_thread(void *arg) {
    gen_job *j = arg;
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = 128;
    sp.n_threads = 1;
    idefics_session *s = NULL;
    char err[256];
    j->st = idefics_session_create(j->model, &sp, &s, err, sizeof err);
    if (j->st != IDEFICS_OK) return NULL;
    j->st = idefics_add_user_turn(s, j->prompt);
    if (j->st == IDEFICS_OK) {
        idefics_generate_params gp = idefics_generate_default_params();
        gp.max_new_tokens = N_GEN;
        gp.stop_at_eos = false;
        j->st = idefics_generate(s, &gp, collect, j);
    }
    idefics_session_free(s);
    return NULL;
}

/* ---- cancel from another thread */

typedef struct cancel_job {
    idefics_session *s;
    atomic_int done;
} cancel_job;

static void *cancel_thread(void *arg) {
    cancel_job *c = arg;
    /* keep cancelling until the generate returns: whichever layer it is in sees it */
    while (!atomic_load(&c->done)) idefics_session_cancel(c->s);
    return NULL;
}

static bool count_tokens(void *ud, int32_t token, const char *piece) {
    (void)token;
    (void)piece;
    (*(int *)ud)++;
    return true;
}

/* ---- tokenize from 4 threads */

typedef struct tok_job {
    const idefics_model *model;
    int id;
    int32_t ref[64];
    int n_ref;
} tok_job;

static void *tok_thread(void *arg) {
    tok_job *t = arg;
    for (int it = 0; it < 200; it++) {
        int32_t ids[64];
        int n = 0;
        idefics_status st = idefics_tokenize(t->model, "User: What is in this image?<image>", true, ids, 64, &n);
        CHECK(st == IDEFICS_OK && n == t->n_ref && !memcmp(ids, t->ref, (size_t)n * sizeof *ids),
              "thread %d: tokenize gave %d ids (%s)", t->id, n, idefics_status_str(st));
        CHECK(idefics_model_last_error(t->model)[0] == '\0', "thread %d: error after success: %s", t->id,
              idefics_model_last_error(t->model));
        if ((it + t->id) % 3 == 0) {
            /* an error of this thread's own making: max_ids > 0 without ids */
            st = idefics_tokenize(t->model, "x", false, NULL, 4, &n);
            const char *e = idefics_model_last_error(t->model);
            CHECK(st == IDEFICS_ERR_INVALID_ARG && strstr(e, "idefics_tokenize"), "thread %d: error text '%s'",
                  t->id, e);
        } else {
            char piece[32];
            st = (idefics_status)idefics_token_to_text(t->model, -1, -5, piece, sizeof piece);
            const char *e = idefics_model_last_error(t->model);
            CHECK(st == IDEFICS_ERR_INVALID_ARG && strstr(e, "idefics_token_to_text"), "thread %d: error text '%s'",
                  t->id, e);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL.idfx\n", argv[0]);
        return 2;
    }
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = IDEFICS_BACKEND_CPU;
    mp.n_threads = 2;
    mp.verify = IDEFICS_VERIFY_ALWAYS; /* the load's verification pool runs too */
    idefics_model *model = NULL;
    char err[512];
    idefics_status st = idefics_model_load(argv[1], &mp, &model, err, sizeof err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], err);
        return 1;
    }
    CHECK(!idefics_model_contains_address(model, &st), "a stack address is not in the model");
    {
        /* an out-of-range verify mode is refused, not treated as one of the three */
        idefics_model_params bad = mp;
        bad.verify = 7;
        idefics_model *m2 = NULL;
        st = idefics_model_load(argv[1], &bad, &m2, err, sizeof err);
        CHECK(st == IDEFICS_ERR_INVALID_ARG && !m2 && strstr(err, "params.verify"), "verify = 7: %s (%s)",
              idefics_status_str(st), err);
        st = IDEFICS_OK;
    }
    CHECK(!idefics_model_contains_address(NULL, &st), "NULL model contains nothing");

    /* 1. reference tokens one at a time, then all three at once */
    gen_job ref[3], par[3];
    for (int i = 0; i < 3; i++) {
        ref[i] = (gen_job){.model = model, .prompt = prompts[i]};
        gen_thread(&ref[i]);
        CHECK(ref[i].st == IDEFICS_OK && ref[i].n == N_GEN, "reference %d: %s, %d tokens", i,
              idefics_status_str(ref[i].st), ref[i].n);
    }
    pthread_t th[4];
    for (int i = 0; i < 3; i++) {
        par[i] = (gen_job){.model = model, .prompt = prompts[i]};
        pthread_create(&th[i], NULL, gen_thread, &par[i]);
    }
    for (int i = 0; i < 3; i++) {
        pthread_join(th[i], NULL);
        CHECK(par[i].st == IDEFICS_OK && par[i].n == ref[i].n &&
                  !memcmp(par[i].tokens, ref[i].tokens, sizeof par[i].tokens),
              "session %d in parallel differs from alone (%s)", i, idefics_status_str(par[i].st));
    }
    printf("ok: 3 sessions on one model in parallel match the serial tokens\n");

    /* 2. cancel from another thread */
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = 128;
    sp.n_threads = 2;
    idefics_session *s = NULL;
    st = idefics_session_create(model, &sp, &s, err, sizeof err);
    CHECK(st == IDEFICS_OK, "session: %s", err);
    if (s) {
        idefics_generate_params gp = idefics_generate_default_params();
        gp.max_new_tokens = 64;
        gp.stop_at_eos = false;
        CHECK(idefics_add_user_turn(s, prompts[0]) == IDEFICS_OK, "add turn");
        cancel_job c = {.s = s};
        atomic_init(&c.done, 0);
        pthread_create(&th[3], NULL, cancel_thread, &c);
        int n = 0;
        st = idefics_generate(s, &gp, count_tokens, &n);
        atomic_store(&c.done, 1);
        pthread_join(th[3], NULL);
        CHECK(st == IDEFICS_ERR_CANCELLED && n < 64, "cancel from another thread: %s after %d tokens",
              idefics_status_str(st), n);
        /* still usable: a new turn generates */
        idefics_session_reset(s);
        CHECK(idefics_add_user_turn(s, prompts[1]) == IDEFICS_OK, "add turn after cancel");
        n = 0;
        gp.max_new_tokens = 4;
        st = idefics_generate(s, &gp, count_tokens, &n);
        CHECK(st == IDEFICS_OK && n == 4, "generate after cancel: %s, %d tokens", idefics_status_str(st), n);
        idefics_session_free(s);
        printf("ok: cancel from another thread\n");
    }

    /* 3. tokenize from 4 threads */
    tok_job tj[4];
    for (int i = 0; i < 4; i++) {
        tj[i] = (tok_job){.model = model, .id = i};
        st = idefics_tokenize(model, "User: What is in this image?<image>", true, tj[i].ref, 64, &tj[i].n_ref);
        CHECK(st == IDEFICS_OK, "tokenize reference");
    }
    for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, tok_thread, &tj[i]);
    for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
    printf("ok: tokenize and token_to_text from 4 threads, errors per thread\n");

    idefics_model_free(model);
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("all concurrency checks passed\n");
    return 0;
}
