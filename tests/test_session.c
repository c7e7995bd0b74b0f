/*
 * test_session.c - the session API end to end on a tiny converted model:
 *   usage: test_session MODEL.idfx FIXTURE_MODEL   (e.g. tiny-instruct)
 * - every recorded case: the prompt items through idefics_add_* give the HF
 *   input_ids, and greedy idefics_generate gives the HF tokens (up to where HF
 *   had to hold off a stop token that we honour);
 * - the streamed pieces concatenate to the decoded answer;
 * - a second turn re-uses the KV cache and gives what a fresh session given
 *   the same conversation gives;
 * - cancel from another thread; stop at the end of the context; seeded
 *   sampling is reproducible;
 * - bad input (missing/corrupt/oversized image, over-long prompt, empty
 *   question) fails with a message and leaves the session unchanged and usable.
 * Skips (77) when the model file or the fixtures are absent.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fixture_io.h"
#include "idefics.h"
#include "model.h"
#include "prompt.h"
#include "tokenizer.h"

#include "check.h"

static idefics_model *g_model; /* test-program state, not library state */
static const char *g_image;    /* a fixture image */

/* ---- collecting what generate streams */

typedef struct collect {
    int32_t ids[4096];
    int n;
    char text[16384];
    size_t len;
} collect;

static bool on_tok(void *ud, int32_t tok, const char *piece) {
    collect *c = ud;
    if (c->n < 4096) c->ids[c->n++] = tok;
    size_t n = strlen(piece);
    if (c->len + n < sizeof c->text) {
        memcpy(c->text + c->len, piece, n + 1);
        c->len += n;
    }
    return true;
}

static idefics_session *new_session(int n_ctx) {
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = 1;
    idefics_session *s = NULL;
    char err[512];
    idefics_status st = idefics_session_create(g_model, &sp, &s, err, sizeof err);
    CHECK(st == IDEFICS_OK, "session_create: %s", err);
    return s;
}

static idefics_generate_params greedy(int n) {
    idefics_generate_params gp = idefics_generate_default_params();
    gp.max_new_tokens = n;
    return gp;
}

static int32_t argmax_allowed(const float *l, int n, const int32_t *ban, int n_ban) {
    int32_t best = -1;
    for (int i = 0; i < n; i++) {
        bool banned = false;
        for (int k = 0; k < n_ban; k++) banned |= ban[k] == i;
        if (!banned && (best < 0 || l[i] > l[best])) best = i;
    }
    return best;
}

/* ---- every recorded case through the public API */

static void test_case(const idf_fixture_case *c) {
    idefics_session *s = new_session(0);
    if (!s) return;
    idefics_status st = IDEFICS_OK;
    bool prev_text = false;
    for (int i = 0; i < c->n_items && st == IDEFICS_OK; i++) {
        if (c->items[i].kind == IDF_FIXTURE_IMAGE) {
            st = idefics_add_image_file(s, c->items[i].image_path);
            prev_text = false;
        } else {
            /* idefics_add_text never inserts the EOU; the processor did when add_eou.
             * The recorded items are raw prompt text (HF semantics): IDEFICS_TEXT_SPECIAL. */
            const char *t = c->items[i].text;
            if (c->add_eou && prev_text)
                st = idefics_add_text_n(s, IDF_PROMPT_EOU, strlen(IDF_PROMPT_EOU), IDEFICS_TEXT_SPECIAL);
            if (st == IDEFICS_OK) st = idefics_add_text_n(s, t, strlen(t), IDEFICS_TEXT_SPECIAL);
            prev_text = true;
        }
    }
    CHECK(st == IDEFICS_OK, "%s/%s: adding items: %s", c->model_name, c->case_name, idefics_session_last_error(s));
    const int32_t *ids;
    int n = idefics_session_get_tokens(s, &ids);
    bool same = n == c->seq_len;
    for (int i = 0; same && i < n; i++) same = ids[i] == c->input_ids[i];
    CHECK(same, "%s/%s: session tokens differ from the HF input_ids (%d vs %d)", c->model_name, c->case_name, n,
          c->seq_len);

    collect col = {0};
    idefics_generate_params gp = greedy(c->n_new);
    gp.stop_at_eos = false; /* HF held eos off with min_new_tokens */
    st = idefics_generate(s, &gp, on_tok, &col);
    CHECK(st == IDEFICS_OK, "%s/%s: generate: %s", c->model_name, c->case_name, idefics_session_last_error(s));
    idefics_timings tm;
    idefics_session_get_timings(s, &tm);
    CHECK(tm.n_prompt_tokens == c->seq_len && tm.n_generated == col.n, "%s/%s: timings count %d prompt, %d generated",
          c->model_name, c->case_name, tm.n_prompt_tokens, tm.n_generated);

    /* HF's tokens, except where the unconstrained greedy choice was a token HF
     * suppressed (eos / <end_of_utterance>): there we must pick that token,
     * and an instruct model stops. */
    const idf_config *cfg = &g_model->cfg;
    int32_t ban[2] = {cfg->tok_image, cfg->tok_fake_image};
    int V = c->vocab_total, matched = 0;
    for (int i = 0; i < c->n_new; i++) {
        int32_t want = argmax_allowed(c->gen_logits.data + (size_t)i * (size_t)V, V, ban, 2);
        bool hf_same = want == c->gen_tokens[i];
        if (i >= col.n) {
            CHECK(0, "%s/%s: stopped after %d tokens, HF made %d", c->model_name, c->case_name, col.n, c->n_new);
            break;
        }
        if (col.ids[i] != want) {
            CHECK(0, "%s/%s: step %d: got %d, want %d (HF %d)", c->model_name, c->case_name, i, col.ids[i], want,
                  c->gen_tokens[i]);
            break;
        }
        matched++;
        if (!hf_same) {
            if (cfg->is_instruct && want == cfg->tok_end_of_utterance)
                CHECK(col.n == i + 1, "%s/%s: did not stop at <end_of_utterance>", c->model_name, c->case_name);
            break;
        }
    }
    CHECK(matched >= 4 || (matched > 0 && cfg->is_instruct), "%s/%s: only %d steps compared", c->model_name,
          c->case_name, matched);
    printf("  %s/%s: %d prompt tokens, %d/%d greedy tokens as HF\n", c->model_name, c->case_name, n, matched,
           c->n_new);

    /* the stream is the decoded answer */
    char want_text[16384];
    idf_detokenize(g_model->tok, col.ids, col.n, true, want_text, sizeof want_text);
    CHECK(strcmp(want_text, col.text) == 0, "%s/%s: stream \"%s\" != decoded \"%s\"", c->model_name, c->case_name,
          col.text, want_text);
    /* and the session's ids continue with exactly the generated tokens */
    n = idefics_session_get_tokens(s, &ids);
    CHECK(n == c->seq_len + col.n && memcmp(ids + c->seq_len, col.ids, sizeof(int32_t) * (size_t)col.n) == 0,
          "%s/%s: session tokens do not end with the generated ones", c->model_name, c->case_name);
    idefics_session_free(s);
}

/* ---- a second turn: KV re-use equals a fresh evaluation */

static void test_multiturn(void) {
    idefics_session *a = new_session(0);
    if (!a) return;
    CHECK(idefics_add_image_file(a, g_image) == IDEFICS_OK, "image: %s", idefics_session_last_error(a));
    CHECK(idefics_add_user_turn(a, "Describe this image.") == IDEFICS_OK, "turn 1");
    idefics_generate_params gp = greedy(6);
    collect c1 = {0}, c2 = {0}, c3 = {0};
    CHECK(idefics_generate(a, &gp, on_tok, &c1) == IDEFICS_OK, "generate 1: %s", idefics_session_last_error(a));
    int n_before = idefics_session_get_tokens(a, NULL);
    CHECK(idefics_add_user_turn(a, "And what colour is it?") == IDEFICS_OK, "turn 2: %s",
          idefics_session_last_error(a));
    char *text = strdup(idf_session_text(a));
    const int32_t *ids_a;
    int n_a = idefics_session_get_tokens(a, &ids_a);
    int32_t *copy_a = malloc(sizeof(int32_t) * (size_t)n_a);
    memcpy(copy_a, ids_a, sizeof(int32_t) * (size_t)n_a);
    CHECK(idefics_generate(a, &gp, on_tok, &c2) == IDEFICS_OK, "generate 2: %s", idefics_session_last_error(a));
    idefics_timings t2;
    idefics_session_get_timings(a, &t2);
    CHECK(t2.n_prompt_tokens > 0 && t2.n_prompt_tokens < n_a - 4 && t2.image_encode_ms == 0,
          "turn 2 evaluated %d of %d tokens (image %.2f ms): the cache was not re-used", t2.n_prompt_tokens, n_a,
          t2.image_encode_ms);
    CHECK(n_a > n_before, "turn 2 added nothing");

    /* the same conversation text, given to a fresh session in one go */
    idefics_session *b = new_session(0);
    const char *img = strstr(text, IDF_PROMPT_FAKE IDF_PROMPT_IMAGE IDF_PROMPT_FAKE);
    CHECK(img != NULL && !strncmp(text, "<s>", 3), "conversation text: %s", text);
    if (b && img) {
        char *head = strndup(text + 3, (size_t)(img - text - 3));
        const char *rest = img + strlen(IDF_PROMPT_FAKE IDF_PROMPT_IMAGE IDF_PROMPT_FAKE);
        CHECK(idefics_add_text_n(b, head, strlen(head), IDEFICS_TEXT_SPECIAL) == IDEFICS_OK &&
                  idefics_add_image_file(b, g_image) == IDEFICS_OK &&
                  idefics_add_text_n(b, rest, strlen(rest), IDEFICS_TEXT_SPECIAL) == IDEFICS_OK,
              "rebuilding: %s", idefics_session_last_error(b));
        CHECK(strcmp(idf_session_text(b), text) == 0, "rebuilt text differs:\n%s\n%s", idf_session_text(b), text);
        const int32_t *ids_b;
        int n_b = idefics_session_get_tokens(b, &ids_b);
        CHECK(n_b == n_a && !memcmp(ids_b, copy_a, sizeof(int32_t) * (size_t)n_a), "rebuilt tokens differ");
        CHECK(idefics_generate(b, &gp, on_tok, &c3) == IDEFICS_OK, "generate fresh: %s",
              idefics_session_last_error(b));
        CHECK(c3.n == c2.n && !memcmp(c3.ids, c2.ids, sizeof(int32_t) * (size_t)c2.n) && !strcmp(c3.text, c2.text),
              "turn 2 with the cache (\"%s\") differs from a fresh session (\"%s\")", c2.text, c3.text);
        const float *la = idefics_session_get_logits(a), *lb = idefics_session_get_logits(b);
        CHECK(la && lb, "no logits");
        double md = 0;
        for (uint32_t i = 0; la && lb && i < g_model->cfg.n_vocab; i++) md = fmax(md, fabs(la[i] - lb[i]));
        CHECK(md < 1e-3, "logits differ by %g", md);
        printf("  multiturn: turn 2 evaluated %d of %d tokens; answer \"%s\"; max logit diff %.2g\n",
               t2.n_prompt_tokens, n_a, c2.text, md);
        free(head);
    }
    free(copy_a);
    free(text);
    idefics_session_free(b);
    idefics_session_free(a);
}

/* ---- cancel from another thread */

typedef struct cancel_ctx {
    idefics_session *s;
    int seen;          /* tokens streamed */
    int done;          /* the canceller has called cancel */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} cancel_ctx;

static void *canceller(void *arg) {
    cancel_ctx *c = arg;
    pthread_mutex_lock(&c->mu);
    while (c->seen < 3) pthread_cond_wait(&c->cv, &c->mu);
    idefics_session_cancel(c->s);
    c->done = 1;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static bool on_tok_cancel(void *ud, int32_t tok, const char *piece) {
    (void)tok, (void)piece;
    cancel_ctx *c = ud;
    pthread_mutex_lock(&c->mu);
    c->seen++;
    pthread_cond_broadcast(&c->cv);
    /* hold the generation at token 3 until the other thread has cancelled */
    while (c->seen == 3 && !c->done) pthread_cond_wait(&c->cv, &c->mu);
    pthread_mutex_unlock(&c->mu);
    return true;
}

static void test_cancel(void) {
    idefics_session *s = new_session(0);
    if (!s) return;
    CHECK(idefics_add_user_turn(s, "Count to one hundred.") == IDEFICS_OK, "turn");
    cancel_ctx c = {.s = s};
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv, NULL);
    pthread_t th;
    pthread_create(&th, NULL, canceller, &c);
    idefics_generate_params gp = greedy(200);
    gp.stop_at_eos = false;
    idefics_status st = idefics_generate(s, &gp, on_tok_cancel, &c);
    if (st == IDEFICS_OK && c.seen < 3) {
        /* the model stopped by itself first: let the thread finish */
        printf("  cancel: the model stopped after %d tokens, nothing to cancel\n", c.seen);
        pthread_mutex_lock(&c.mu);
        c.seen = 3;
        pthread_cond_broadcast(&c.cv);
        pthread_mutex_unlock(&c.mu);
        CHECK(g_model->cfg.is_instruct, "a base model with stop_at_eos=false stopped early");
    } else {
        CHECK(st == IDEFICS_ERR_CANCELLED, "generate returned %s", idefics_status_str(st));
        CHECK(c.seen == 3, "%d tokens streamed before the cancel took effect", c.seen);
        CHECK(strstr(idefics_session_last_error(s), "cancel") != NULL, "error text: %s", idefics_session_last_error(s));
        printf("  cancel: stopped after %d tokens\n", c.seen);
    }
    pthread_join(th, NULL);
    /* still usable: the next turn works and the flag was cleared */
    collect col = {0};
    CHECK(idefics_add_user_turn(s, "Stop.") == IDEFICS_OK, "turn after cancel: %s", idefics_session_last_error(s));
    st = idefics_generate(s, &(idefics_generate_params){.max_new_tokens = 3, .top_p = 1, .repetition_penalty = 1},
                          on_tok, &col);
    CHECK(st == IDEFICS_OK && col.n >= 1, "generate after cancel: %s", idefics_status_str(st));
    pthread_mutex_destroy(&c.mu);
    pthread_cond_destroy(&c.cv);
    idefics_session_free(s);
}

/* ---- the end of the context */

static void test_context_end(void) {
    idefics_session *probe = new_session(0);
    if (!probe) return;
    CHECK(idefics_add_user_turn(probe, "Hello there.") == IDEFICS_OK, "turn");
    int n_prompt = idefics_session_get_tokens(probe, NULL);
    idefics_session_free(probe);

    idefics_session *s = new_session(n_prompt + 3);
    CHECK(idefics_add_user_turn(s, "Hello there.") == IDEFICS_OK, "turn in a small context");
    collect col = {0};
    idefics_generate_params gp = greedy(100);
    gp.stop_at_eos = false;
    idefics_status st = idefics_generate(s, &gp, on_tok, &col);
    CHECK(st == IDEFICS_OK, "generate at the context end: %s", idefics_session_last_error(s));
    bool stopped = col.n > 0 && col.ids[col.n - 1] == g_model->cfg.tok_end_of_utterance;
    CHECK(col.n == 4 || (stopped && col.n < 4), "%d tokens in a context with room for 3 + 1", col.n);
    /* full: more input is refused, the session is unchanged, reset recovers */
    int n_full = idefics_session_get_tokens(s, NULL);
    if (col.n == 4) {
        st = idefics_add_user_turn(s, "More?");
        CHECK(st == IDEFICS_ERR_CONTEXT_FULL, "add to a full context: %s", idefics_status_str(st));
        CHECK(idefics_session_get_tokens(s, NULL) == n_full, "a refused add changed the tokens");
        st = idefics_generate(s, &gp, on_tok, &col);
        CHECK(st == IDEFICS_ERR_CONTEXT_FULL, "generate in a full context: %s", idefics_status_str(st));
    }
    idefics_session_reset(s);
    CHECK(idefics_session_get_tokens(s, NULL) == 1, "reset leaves only <s>");
    collect c2 = {0};
    CHECK(idefics_add_user_turn(s, "Hello there.") == IDEFICS_OK &&
              idefics_generate(s, &gp, on_tok, &c2) == IDEFICS_OK,
          "after reset: %s", idefics_session_last_error(s));
    CHECK(c2.n == col.n || col.n > 4, "after reset the same prompt gave %d tokens, first time %d", c2.n, col.n);
    idefics_session_free(s);
}

/* ---- seeded sampling */

static void sample(uint64_t seed, collect *out) {
    idefics_session *s = new_session(0);
    if (!s) return;
    idefics_add_image_file(s, g_image);
    idefics_add_user_turn(s, "Tell me a story.");
    idefics_generate_params gp = greedy(12);
    gp.temperature = 1.5f;
    gp.top_k = 40;
    gp.top_p = 0.95f;
    gp.repetition_penalty = 1.3f;
    gp.seed = seed;
    gp.stop_at_eos = false;
    CHECK(idefics_generate(s, &gp, on_tok, out) == IDEFICS_OK, "sampling: %s", idefics_session_last_error(s));
    idefics_session_free(s);
}

static void test_sampling(void) {
    collect a = {0}, b = {0};
    sample(7, &a);
    sample(7, &b);
    CHECK(a.n == b.n && !memcmp(a.ids, b.ids, sizeof(int32_t) * (size_t)a.n), "seed 7 twice gave different tokens");
    int distinct = 0;
    for (uint64_t seed = 100; seed < 104; seed++) {
        collect c = {0};
        sample(seed, &c);
        distinct += c.n != a.n || memcmp(c.ids, a.ids, sizeof(int32_t) * (size_t)a.n) != 0;
        for (int i = 0; i < c.n; i++)
            CHECK(c.ids[i] != g_model->cfg.tok_image && c.ids[i] != g_model->cfg.tok_fake_image,
                  "sampled a bad word %d", c.ids[i]);
    }
    CHECK(distinct > 0, "four other seeds all gave seed 7's tokens");
}

/* ---- bad input leaves the session as it was */

typedef struct snapshot {
    int32_t ids[512];
    int n;
    char text[4096];
} snapshot;

static void snap(idefics_session *s, snapshot *o) {
    const int32_t *ids;
    o->n = idefics_session_get_tokens(s, &ids);
    memcpy(o->ids, ids, sizeof(int32_t) * (size_t)(o->n < 512 ? o->n : 512));
    snprintf(o->text, sizeof o->text, "%s", idf_session_text(s));
}

static void expect_unchanged(idefics_session *s, const snapshot *before, idefics_status st, idefics_status want,
                             const char *what) {
    snapshot now;
    snap(s, &now);
    CHECK(st == want, "%s: %s, want %s", what, idefics_status_str(st), idefics_status_str(want));
    CHECK(idefics_session_last_error(s)[0] != '\0', "%s: no error text", what);
    CHECK(now.n == before->n && !memcmp(now.ids, before->ids, sizeof(int32_t) * (size_t)now.n) &&
              !strcmp(now.text, before->text),
          "%s changed the session", what);
    printf("  %s -> %s: %s\n", what, idefics_status_str(st), idefics_session_last_error(s));
}

static void good_turn(idefics_session *s, collect *out) {
    uint8_t px[8 * 8 * 3];
    for (int i = 0; i < (int)sizeof px; i++) px[i] = (uint8_t)(i * 37);
    CHECK(idefics_add_image_pixels(s, px, 8, 8, 3, 0) == IDEFICS_OK, "pixels: %s", idefics_session_last_error(s));
    CHECK(idefics_add_user_turn(s, "What is this?") == IDEFICS_OK, "turn: %s", idefics_session_last_error(s));
    idefics_generate_params gp = greedy(5);
    CHECK(idefics_generate(s, &gp, on_tok, out) == IDEFICS_OK, "generate: %s", idefics_session_last_error(s));
}

static void test_bad_input(void) {
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = 64;
    sp.max_image_pixels = 16 * 16;
    idefics_session *s = NULL;
    char err[256];
    CHECK(idefics_session_create(g_model, &sp, &s, err, sizeof err) == IDEFICS_OK, "create: %s", err);
    if (!s) return;
    snapshot before;
    snap(s, &before);
    idefics_status st = idefics_add_image_file(s, "/nonexistent/idefics-test.png");
    expect_unchanged(s, &before, st, st == IDEFICS_ERR_IO ? IDEFICS_ERR_IO : IDEFICS_ERR_IMAGE_DECODE, "missing file");
    static const char junk[] = "\x89PNG\r\n\x1a\n but not really an image";
    expect_unchanged(s, &before, idefics_add_image_memory(s, junk, sizeof junk), IDEFICS_ERR_IMAGE_DECODE,
                     "corrupt image");
    uint8_t big[20 * 20 * 3] = {0};
    expect_unchanged(s, &before, idefics_add_image_pixels(s, big, 20, 20, 3, 0), IDEFICS_ERR_IMAGE_TOO_LARGE,
                     "image over the pixel limit");
    char longtext[4000] = {0};
    for (int i = 0; i < 300; i++) strcat(longtext, "word ");
    expect_unchanged(s, &before, idefics_add_text(s, longtext), IDEFICS_ERR_CONTEXT_FULL, "prompt over the context");
    expect_unchanged(s, &before, idefics_add_user_turn(s, longtext), IDEFICS_ERR_CONTEXT_FULL,
                     "question over the context");
    expect_unchanged(s, &before, idefics_add_user_turn(s, " \n\t"), IDEFICS_ERR_EMPTY_PROMPT, "empty question");
    expect_unchanged(s, &before, idefics_generate(s, NULL, NULL, NULL), IDEFICS_ERR_EMPTY_PROMPT,
                     "generate with nothing added");
    idefics_generate_params bad = greedy(4);
    bad.top_p = 0;
    expect_unchanged(s, &before, idefics_generate(s, &bad, NULL, NULL), IDEFICS_ERR_INVALID_ARG, "top_p = 0");

    /* after all that, the session behaves exactly like a fresh one */
    collect used = {0}, fresh = {0};
    good_turn(s, &used);
    idefics_session *f = NULL;
    CHECK(idefics_session_create(g_model, &sp, &f, err, sizeof err) == IDEFICS_OK, "create: %s", err);
    if (f) good_turn(f, &fresh);
    CHECK(used.n == fresh.n && used.n > 0 && !memcmp(used.ids, fresh.ids, sizeof(int32_t) * (size_t)used.n),
          "the session that saw errors answers differently from a fresh one");
    idefics_session_free(f);
    idefics_session_free(s);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_session MODEL.idfx FIXTURE_MODEL\n");
        return 2;
    }
    struct stat stt;
    if (stat(argv[1], &stt) != 0) {
        printf("SKIP: no model file %s\n", argv[1]);
        return 77;
    }
    char root[4096], err[IDF_FIXTURE_ERR_LEN];
    idf_fixture_models_root(root, sizeof root);
    idf_fixture_manifest man;
    if (idf_fixture_manifest_load(root, &man, err, sizeof err) != 0) {
        printf("SKIP: no model fixtures (%s)\n", err);
        return 77;
    }
    const idf_fixture_model *fm = idf_fixture_find_model(&man, argv[2]);
    if (!fm) {
        printf("SKIP: fixture model %s not in the manifest\n", argv[2]);
        idf_fixture_manifest_free(&man);
        return 77;
    }
    g_image = man.n_images > 4 ? man.images[4] : man.images[0];
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = IDEFICS_BACKEND_CPU_REF;
    mp.n_threads = 1;
    char lerr[512];
    idefics_status st = idefics_model_load(argv[1], &mp, &g_model, lerr, sizeof lerr);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "cannot load %s: %s (%s)\n", argv[1], lerr, idefics_status_str(st));
        idf_fixture_manifest_free(&man);
        return 1;
    }
    printf("test_session: %s (%s)\n", argv[1], g_model->cfg.is_instruct ? "instruct" : "base");
    for (int k = 0; k < fm->n_cases; k++) {
        idf_fixture_case c;
        if (idf_fixture_case_load(fm->case_paths[k], &c, err, sizeof err) != 0) {
            CHECK(0, "%s", err);
            continue;
        }
        test_case(&c);
        idf_fixture_case_free(&c);
    }
    test_multiturn();
    test_cancel();
    test_context_end();
    test_sampling();
    test_bad_input();
    idefics_model_free(g_model);
    idf_fixture_manifest_free(&man);
    if (failures) {
        fprintf(stderr, "test_session: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_session: ok\n");
    return 0;
}
