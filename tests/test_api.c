/*
 * test_api.c - the integrators' API of issue 14 on a tiny converted model:
 *   usage: test_api MODEL.idfx FIXTURE_MODEL   (e.g. tiny-instruct)
 * - idefics_version() against the header and the version string;
 * - the finish reason of every way idefics_generate ends;
 * - model metadata rendered as text, against the parsed config;
 * - idefics_session_render_prompt and idefics_session_eval;
 * - user text is plain text (special-token strings typed by a user stay text),
 *   IDEFICS_TEXT_SPECIAL keeps HF's semantics, NUL bytes are refused;
 * - interleaved user turns (begin/end) against the processor fixtures and the
 *   raw-prompt path;
 * - snapshot/restore: a second question about one image re-uses its encoding
 *   and answers as a fresh session does.
 * Skips (77) when the model file or the fixtures are absent.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fixture_io.h"
#include "idefics.h"
#include "model.h"
#include "prompt.h"

#include "check.h"

static idefics_model *g_model; /* test-program state, not library state */
static const char *g_image, *g_image2, *g_image3;

typedef struct collect {
    int32_t ids[1024];
    int n;
    char text[8192];
    size_t len;
    int stop_after; /* > 0: return false after this many tokens */
    idefics_session *cancel_after_first;
} collect;

static bool on_tok(void *ud, int32_t tok, const char *piece) {
    collect *c = ud;
    if (c->n < 1024) c->ids[c->n++] = tok;
    size_t n = strlen(piece);
    if (c->len + n < sizeof c->text) {
        memcpy(c->text + c->len, piece, n + 1);
        c->len += n;
    }
    if (c->cancel_after_first) idefics_session_cancel(c->cancel_after_first);
    return !(c->stop_after > 0 && c->n >= c->stop_after);
}

static idefics_session *new_session(int n_ctx) {
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = 1;
    sp.kv_type = IDEFICS_KV_F32;
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

static bool same_ids(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || memcmp(a, b, sizeof(int32_t) * (size_t)na) == 0);
}

/* ---------------------------------------------------------------- version */

static void test_version(void) {
    CHECK(idefics_version() == IDEFICS_VERSION_NUMBER, "idefics_version %u != header %d", idefics_version(),
          IDEFICS_VERSION_NUMBER);
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", IDEFICS_VERSION_MAJOR, IDEFICS_VERSION_MINOR, IDEFICS_VERSION_PATCH);
    CHECK(strcmp(idefics_version_string(), want) == 0, "version string %s, header %s", idefics_version_string(), want);
    CHECK(IDEFICS_VERSION_NUMBER == IDEFICS_VERSION_MAJOR * 10000 + IDEFICS_VERSION_MINOR * 100 + IDEFICS_VERSION_PATCH,
          "IDEFICS_VERSION_NUMBER");
}

/* ---------------------------------------------------------- finish reason */

static idefics_finish_reason run(idefics_session *s, idefics_generate_params gp, collect *c, idefics_status want) {
    idefics_status st = idefics_generate(s, &gp, on_tok, c);
    CHECK(st == want, "generate: %s, want %s (%s)", idefics_status_str(st), idefics_status_str(want),
          idefics_session_last_error(s));
    return idefics_session_finish_reason(s);
}

static void test_finish_reason(void) {
    static const char *names[] = {"none", "stop", "length", "context_full", "cancelled", "callback"};
    for (int r = 0; r <= IDEFICS_FINISH_CALLBACK; r++)
        CHECK(strcmp(idefics_finish_reason_str((idefics_finish_reason)r), names[r]) == 0, "finish_reason_str(%d)", r);
    CHECK(strcmp(idefics_finish_reason_str((idefics_finish_reason)99), "unknown") == 0, "finish_reason_str(99)");

    idefics_session *s = new_session(0);
    if (!s) return;
    idefics_status st;
    CHECK(idefics_session_finish_reason(s) == IDEFICS_FINISH_NONE, "fresh session");
    collect c = {0};
    /* an error before generation: NONE */
    CHECK(run(s, greedy(4), &c, IDEFICS_ERR_EMPTY_PROMPT) == IDEFICS_FINISH_NONE, "empty prompt");
    CHECK(idefics_add_image_file(s, g_image) == IDEFICS_OK && idefics_add_user_turn(s, "What is this?") == IDEFICS_OK,
          "turn: %s", idefics_session_last_error(s));

    /* max_new_tokens: LENGTH (stop tokens off so the tiny model cannot stop first) */
    idefics_generate_params gp = greedy(3);
    gp.stop_at_eos = false;
    memset(&c, 0, sizeof c);
    idefics_finish_reason r = run(s, gp, &c, IDEFICS_OK);
    CHECK(r == IDEFICS_FINISH_LENGTH || (r == IDEFICS_FINISH_STOP && c.n <= 3), "max_new_tokens: %s after %d",
          idefics_finish_reason_str(r), c.n);
    gp.max_new_tokens = 0;
    CHECK(run(s, gp, &c, IDEFICS_OK) == IDEFICS_FINISH_LENGTH, "max_new_tokens 0");

    /* the callback says no after 2 tokens: CALLBACK */
    memset(&c, 0, sizeof c);
    c.stop_after = 2;
    gp.max_new_tokens = 10;
    r = run(s, gp, &c, IDEFICS_OK);
    CHECK((r == IDEFICS_FINISH_CALLBACK && c.n == 2) || r == IDEFICS_FINISH_STOP, "callback: %s after %d",
          idefics_finish_reason_str(r), c.n);

    /* cancelled from the callback: CANCELLED with IDEFICS_ERR_CANCELLED */
    memset(&c, 0, sizeof c);
    c.cancel_after_first = s;
    st = idefics_generate(s, &gp, on_tok, &c);
    r = idefics_session_finish_reason(s);
    CHECK((st == IDEFICS_ERR_CANCELLED && r == IDEFICS_FINISH_CANCELLED && c.n == 1) ||
              (st == IDEFICS_OK && r == IDEFICS_FINISH_STOP && c.n == 1),
          "cancel: %s, %s after %d", idefics_status_str(st), idefics_finish_reason_str(r), c.n);
    idefics_session_free(s);

    /* a context two tokens longer than the prompt: CONTEXT_FULL */
    s = new_session(0);
    if (!s) return;
    CHECK(idefics_add_image_file(s, g_image) == IDEFICS_OK && idefics_add_user_turn(s, "What is this?") == IDEFICS_OK,
          "turn");
    int n_prompt = idefics_session_get_tokens(s, NULL);
    idefics_session_free(s);
    s = new_session(n_prompt + 2);
    if (!s) return;
    CHECK(idefics_add_image_file(s, g_image) == IDEFICS_OK && idefics_add_user_turn(s, "What is this?") == IDEFICS_OK,
          "turn");
    memset(&c, 0, sizeof c);
    gp.max_new_tokens = 10;
    r = run(s, gp, &c, IDEFICS_OK);
    CHECK((r == IDEFICS_FINISH_CONTEXT_FULL && c.n == 3) || r == IDEFICS_FINISH_STOP, "context: %s after %d",
          idefics_finish_reason_str(r), c.n);
    idefics_session_reset(s);
    CHECK(idefics_session_finish_reason(s) == IDEFICS_FINISH_NONE, "reset keeps the finish reason");
    idefics_session_free(s);

    /* a stop token: STOP. With stop tokens on, generate until the model stops by
     * itself; the last token then is a stop token. The tiny models stop within
     * 64 tokens on some prompts, not all: check whichever way each ends. */
    const idf_config *cfg = &g_model->cfg;
    int n_stop = 0;
    const char *qs[] = {"What is this?", "Describe the image.", "Hi", "What colour is it?"};
    for (size_t q = 0; q < sizeof qs / sizeof qs[0]; q++) {
        s = new_session(0);
        if (!s) return;
        idefics_add_image_file(s, g_image);
        idefics_add_user_turn(s, qs[q]);
        memset(&c, 0, sizeof c);
        r = run(s, greedy(64), &c, IDEFICS_OK);
        int32_t last = c.n ? c.ids[c.n - 1] : -1;
        bool is_stop = last == cfg->tok_eos || (cfg->is_instruct && last == cfg->tok_end_of_utterance);
        for (int k = 0; k < cfg->n_stop_ids; k++) is_stop |= last == cfg->stop_ids[k];
        CHECK(is_stop ? r == IDEFICS_FINISH_STOP : (r == IDEFICS_FINISH_LENGTH && c.n == 64),
              "\"%s\": %s after %d tokens (last %d)", qs[q], idefics_finish_reason_str(r), c.n, last);
        n_stop += is_stop;
        idefics_session_free(s);
    }
    /* The tiny models rarely pick a stop token, so also make the second token
     * they pick a stop token (chat.stop_token_ids, in the test's copy of the
     * config) and check the answer ends there with STOP. */
    s = new_session(0);
    if (!s) return;
    idefics_add_image_file(s, g_image);
    idefics_add_user_turn(s, "What is this?");
    memset(&c, 0, sizeof c);
    gp = greedy(3);
    gp.stop_at_eos = false;
    run(s, gp, &c, IDEFICS_OK);
    if (c.n == 3 && cfg->n_stop_ids < 8) {
        int32_t t1 = c.ids[1];
        int first = c.ids[0] == t1 ? 0 : 1;
        idefics_session_reset(s);
        idefics_add_image_file(s, g_image);
        idefics_add_user_turn(s, "What is this?");
        idf_config *wcfg = (idf_config *)cfg;
        wcfg->stop_ids[wcfg->n_stop_ids++] = t1;
        memset(&c, 0, sizeof c);
        r = run(s, gp, &c, IDEFICS_OK);
        wcfg->n_stop_ids--;
        CHECK(r == IDEFICS_FINISH_STOP && c.n == first + 1, "stop token %d: %s after %d", t1,
              idefics_finish_reason_str(r), c.n);
    } else {
        CHECK(0, "could not set up the stop-token check (%d tokens)", c.n);
    }
    idefics_session_free(s);
    printf("  finish reasons: ok (%d of 4 prompts ended at a stop token by themselves)\n", n_stop);
}

/* --------------------------------------------------------------- metadata */

static char *meta(const char *key) {
    size_t len = 0;
    idefics_status st = idefics_model_meta(g_model, key, NULL, 0, &len);
    CHECK(st == IDEFICS_OK, "meta %s: %s", key, idefics_model_last_error(g_model));
    if (st != IDEFICS_OK) return NULL;
    char *b = malloc(len + 1);
    size_t len2 = 0;
    CHECK(idefics_model_meta(g_model, key, b, len + 1, &len2) == IDEFICS_OK && len2 == len && strlen(b) == len,
          "meta %s: second call", key);
    return b;
}

static void test_meta(void) {
    int n = idefics_model_meta_count(g_model);
    CHECK(n > 20 && n == (int)g_model->file.n_kv, "meta count %d", n);
    CHECK(idefics_model_meta_key(g_model, -1) == NULL && idefics_model_meta_key(g_model, n) == NULL,
          "out-of-range key");
    bool found_arch = false;
    for (int i = 0; i < n; i++) {
        const char *k = idefics_model_meta_key(g_model, i);
        CHECK(k && *k, "key %d", i);
        if (k && !strcmp(k, "general.architecture")) found_arch = true;
        size_t len;
        CHECK(k && idefics_model_meta(g_model, k, NULL, 0, &len) == IDEFICS_OK, "meta %s", k ? k : "?");
    }
    CHECK(found_arch, "no general.architecture key");
    const idf_config *cfg = &g_model->cfg;
    char want[256];
    char *v = meta("general.architecture");
    CHECK(v && !strcmp(v, "idefics"), "architecture \"%s\"", v ? v : "");
    free(v);
    v = meta("idefics.vocab_size"); /* U32 */
    snprintf(want, sizeof want, "%u", cfg->vocab_size);
    CHECK(v && !strcmp(v, want), "vocab_size \"%s\", want %s", v ? v : "", want);
    free(v);
    v = meta("idefics.rms_norm_eps"); /* F32 */
    CHECK(v && (float)strtod(v, NULL) == cfg->rms_eps, "rms_norm_eps \"%s\" vs %g", v ? v : "", (double)cfg->rms_eps);
    free(v);
    v = meta("idefics.use_resampler"); /* BOOL */
    CHECK(v && !strcmp(v, cfg->use_resampler ? "true" : "false"), "use_resampler \"%s\"", v ? v : "");
    free(v);
    v = meta("vision.image_mean"); /* ARR of F32 */
    float m[3] = {0};
    CHECK(v && sscanf(v, "[%g, %g, %g]", &m[0], &m[1], &m[2]) == 3 && m[0] == cfg->image_mean[0] &&
              m[1] == cfg->image_mean[1] && m[2] == cfg->image_mean[2],
          "image_mean \"%s\"", v ? v : "");
    free(v);
    v = meta("tokenizer.tokens"); /* ARR of STR: JSON strings */
    CHECK(v && v[0] == '[' && strstr(v, "\"<image>\"") && v[strlen(v) - 1] == ']', "tokens \"%.60s...\"", v ? v : "");
    free(v);
    /* truncation: NUL-terminated, full length reported */
    char small[4];
    size_t len = 0;
    CHECK(idefics_model_meta(g_model, "general.architecture", small, sizeof small, &len) == IDEFICS_OK && len == 7 &&
              !strcmp(small, "ide"),
          "truncated meta \"%s\" len %zu", small, len);
    CHECK(idefics_model_meta(g_model, "no.such.key", small, sizeof small, &len) == IDEFICS_ERR_INVALID_ARG &&
              strstr(idefics_model_last_error(g_model), "no.such.key"),
          "absent key: %s", idefics_model_last_error(g_model));
    CHECK(idefics_model_meta(g_model, NULL, small, sizeof small, &len) == IDEFICS_ERR_INVALID_ARG, "NULL key");
    CHECK(idefics_model_meta(g_model, "general.architecture", NULL, 4, &len) == IDEFICS_ERR_INVALID_ARG, "NULL buf");
    printf("  metadata: %d keys ok\n", n);
}

/* ------------------------------------------------------ render_prompt, eval */

static void test_render_eval(void) {
    idefics_session *a = new_session(0), *b = new_session(0);
    if (!a || !b) return;
    size_t len = 99;
    char buf[4096];
    CHECK(idefics_session_render_prompt(a, NULL, 0, &len) == IDEFICS_OK && len == 3, "empty render len %zu", len);
    CHECK(idefics_session_render_prompt(a, buf, sizeof buf, &len) == IDEFICS_OK && !strcmp(buf, "<s>"), "\"%s\"", buf);
    CHECK(idefics_session_render_prompt(a, NULL, 4, &len) == IDEFICS_ERR_INVALID_ARG, "NULL buf");
    idefics_session *ss[2] = {a, b};
    for (int i = 0; i < 2; i++)
        CHECK(idefics_add_image_file(ss[i], g_image) == IDEFICS_OK &&
                  idefics_add_user_turn(ss[i], "What is this?") == IDEFICS_OK,
              "turn");
    CHECK(idefics_session_render_prompt(a, buf, sizeof buf, &len) == IDEFICS_OK && len == strlen(idf_session_text(a)) &&
              !strcmp(buf, idf_session_text(a)),
          "render \"%s\"", buf);
    const char *want_turn = g_model->cfg.is_instruct
                                ? "<s>User: What is this?<fake_token_around_image><image><fake_token_around_image>"
                                  "<end_of_utterance>\nAssistant:"
                                : "<s>User:<fake_token_around_image><image><fake_token_around_image>What is "
                                  "this?\nAssistant:";
    CHECK(!strcmp(buf, want_turn), "rendered\n  %s\nwant\n  %s", buf, want_turn);
    char tiny[5];
    CHECK(idefics_session_render_prompt(a, tiny, sizeof tiny, &len) == IDEFICS_OK && !strcmp(tiny, "<s>U") &&
              len == strlen(want_turn),
          "truncated render \"%s\"", tiny);

    /* eval: encodes and prefills; generate then evaluates nothing more for the prompt */
    CHECK(idefics_session_get_logits(a) == NULL, "logits before eval");
    CHECK(idefics_session_eval(a) == IDEFICS_OK, "eval: %s", idefics_session_last_error(a));
    idefics_timings t;
    idefics_session_get_timings(a, &t);
    int n_prompt = idefics_session_get_tokens(a, NULL);
    CHECK(t.n_prompt_tokens == n_prompt && t.image_encode_ms > 0 && t.n_generated == 0, "eval timings %d/%d, %g ms",
          t.n_prompt_tokens, n_prompt, t.image_encode_ms);
    CHECK(idefics_session_get_logits(a) != NULL, "no logits after eval");
    CHECK(idefics_session_eval(a) == IDEFICS_OK, "second eval");
    idefics_session_get_timings(a, &t);
    CHECK(t.n_prompt_tokens == 0 && t.image_encode_ms == 0, "second eval evaluated %d tokens", t.n_prompt_tokens);
    collect ca = {0}, cb = {0};
    idefics_generate_params gp = greedy(8);
    CHECK(idefics_generate(a, &gp, on_tok, &ca) == IDEFICS_OK && idefics_generate(b, &gp, on_tok, &cb) == IDEFICS_OK,
          "generate");
    idefics_session_get_timings(a, &t);
    CHECK(t.n_prompt_tokens == 0 && t.image_encode_ms == 0, "generate after eval re-evaluated %d tokens",
          t.n_prompt_tokens);
    CHECK(same_ids(ca.ids, ca.n, cb.ids, cb.n), "eval then generate (\"%s\") != generate (\"%s\")", ca.text, cb.text);
    /* the answer is part of the rendered conversation */
    CHECK(idefics_session_render_prompt(a, buf, sizeof buf, &len) == IDEFICS_OK && len > strlen(want_turn) &&
              !strncmp(buf, want_turn, strlen(want_turn)),
          "render after generate");
    idefics_session *e = new_session(0);
    CHECK(e && idefics_session_eval(e) == IDEFICS_ERR_EMPTY_PROMPT, "eval of an empty session");
    idefics_session_free(e);
    idefics_session_free(a);
    idefics_session_free(b);
    printf("  render_prompt, eval: ok\n");
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: test_api MODEL.idfx FIXTURE_MODEL\n");
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
    if (!fm || man.n_images < 8) {
        printf("SKIP: fixture model %s not in the manifest\n", argv[2]);
        idf_fixture_manifest_free(&man);
        return 77;
    }
    g_image = man.images[4];
    g_image2 = man.images[6];
    g_image3 = man.images[7];
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
    printf("test_api: %s (%s)\n", argv[1], g_model->cfg.is_instruct ? "instruct" : "base");
    test_version();
    test_finish_reason();
    test_meta();
    test_render_eval();
    idefics_model_free(g_model);
    idf_fixture_manifest_free(&man);
    if (failures) {
        fprintf(stderr, "test_api: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_api: ok\n");
    return 0;
}
