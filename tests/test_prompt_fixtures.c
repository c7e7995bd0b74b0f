/*
 * test_prompt_fixtures.c - the processor (runtime/prompt.c) against what
 * transformers' IdeficsProcessor produced for the recorded cases in
 * tests/fixtures/models: for every case, the prompt items rebuild the exact
 * full_text; the runtime tokenizer (built from the case's tokenizer files with
 * the converter's importer) turns it into the exact input_ids; and the
 * image-mask scan over those ids gives the exact image_attention_mask. Also
 * the streaming decoder (idf_stream) on byte-fallback tokens of the tiny vocabulary.
 * Skips (77) when the fixtures are absent.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fixture_io.h"
#include "prompt.h"
#include "tokenizer.h"
#include "tokenizer_import.h"

static int n_checked, n_plain;
#include "check.h"

static cJSON *read_json(const char *dir, const char *name) {
    char p[4096];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = buf ? fread(buf, 1, (size_t)n, f) : 0;
    fclose(f);
    if (!buf) return NULL;
    buf[got] = 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    return j;
}

static int json_int(const cJSON *o, const char *key, int def) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsNumber(v) ? v->valueint : def;
}

static void check_case(const idf_fixture_case *c, const idf_tokenizer *tok, int32_t tok_image, int32_t tok_eos) {
    static const idf_alloc al = {{0}};
    idf_prompt p;
    idf_prompt_init(&p, &al, c->add_eou != 0);
    for (int i = 0; i < c->n_items; i++) {
        if (c->items[i].kind == IDF_FIXTURE_IMAGE)
            idf_prompt_add_image(&p);
        else
            idf_prompt_add_text(&p, c->items[i].text, strlen(c->items[i].text), true);
    }
    CHECK(strcmp(p.text, c->full_text) == 0, "%s/%s text\n  got  %s\n  want %s", c->model_name, c->case_name, p.text,
          c->full_text);

    /* the ids: the whole text tokenized at once, no BOS added (the literal <s> gives it) */
    int T = c->seq_len;
    int32_t *ids = calloc((size_t)T + 16, sizeof *ids);
    int32_t *img = calloc((size_t)T + 16, sizeof *img);
    int n = 0;
    idf_err err = {{0}};
    idefics_status st = idf_tokenize(tok, p.text, p.len, false, ids, T + 16, &n, &err);
    CHECK(st == IDEFICS_OK, "%s/%s tokenize: %s", c->model_name, c->case_name, err.msg);
    int same = st == IDEFICS_OK && n == T;
    for (int i = 0; same && i < T; i++) same = ids[i] == c->input_ids[i];
    CHECK(same, "%s/%s input_ids differ (n %d vs %d)", c->model_name, c->case_name, n, T);

    /* the mask, from the recorded ids so a tokenizer difference cannot hide a scan bug */
    idf_scan_state sc;
    idf_image_scan_init(&sc);
    idf_image_scan(&sc, c->input_ids, T, tok_image, tok_eos, p.n_images, img);
    int N = c->num_images;
    int mask_ok = p.n_images == 0 ? N == 1 : p.n_images == N;
    for (int t = 0; mask_ok && t < T; t++)
        for (int k = 0; k < N; k++) {
            int want = c->image_attention_mask[(size_t)t * (size_t)N + (size_t)k];
            if ((img[t] == k) != (want != 0)) {
                fprintf(stderr, "%s/%s: token %d (id %d) sees image %d, fixture row has %d at %d\n", c->model_name,
                        c->case_name, t, c->input_ids[t], img[t], want, k);
                mask_ok = 0;
                break;
            }
        }
    CHECK(mask_ok, "%s/%s image_attention_mask differs", c->model_name, c->case_name);

    /* The session's path: special tokens recognised only in the prompt's special
     * spans (all of it here, every item being raw text), then every text item
     * added as plain user text. Plain text next to structure must segment as
     * HF segments the whole text, so the ids stay HF's whenever no item spells
     * a special token itself. */
    int32_t *ids2 = calloc((size_t)T + 16, sizeof *ids2);
    int n2 = 0;
    st = idf_tokenize_spans(tok, p.text, p.len, p.sp, p.n_sp, false, ids2, T + 16, &n2, &err);
    CHECK(st == IDEFICS_OK && n2 == n && !memcmp(ids2, ids, sizeof(int32_t) * (size_t)n),
          "%s/%s: the special-span tokenization differs", c->model_name, c->case_name);
    idf_prompt q;
    idf_prompt_init(&q, &al, c->add_eou != 0);
    bool spells_special = false;
    static const char *sp_str[] = {"<s>", "</s>", "<unk>", IDF_PROMPT_IMAGE, IDF_PROMPT_FAKE, IDF_PROMPT_EOU};
    for (int i = 0; i < c->n_items; i++) {
        if (c->items[i].kind == IDF_FIXTURE_IMAGE) {
            idf_prompt_add_image(&q);
            continue;
        }
        for (size_t k = 0; k < sizeof sp_str / sizeof sp_str[0]; k++)
            spells_special |= strstr(c->items[i].text, sp_str[k]) != NULL;
        idf_prompt_add_text(&q, c->items[i].text, strlen(c->items[i].text), false);
    }
    /* measure first: spelled special strings tokenize to more ids than the fixture's */
    st = idf_tokenize_spans(tok, q.text, q.len, q.sp, q.n_sp, false, NULL, 0, &n2, &err);
    if (st == IDEFICS_OK && n2 > T + 16) {
        int32_t *grown = realloc(ids2, (size_t)n2 * sizeof *ids2);
        CHECK(grown != NULL, "out of memory");
        if (grown) ids2 = grown;
    }
    if (st == IDEFICS_OK)
        st = idf_tokenize_spans(tok, q.text, q.len, q.sp, q.n_sp, false, ids2, n2 > T + 16 ? n2 : T + 16, &n2, &err);
    if (!spells_special) {
        same = st == IDEFICS_OK && n2 == T;
        for (int i = 0; same && i < T; i++) same = ids2[i] == c->input_ids[i];
        CHECK(same, "%s/%s: plain text items change the ids (n %d vs %d)", c->model_name, c->case_name, n2, T);
        n_plain++;
    } else {
        /* then the spelled special strings must not become special tokens */
        int n_img = 0;
        for (int i = 0; i < n2; i++) n_img += ids2[i] == tok_image;
        CHECK(st == IDEFICS_OK && n_img == q.n_images, "%s/%s: plain text made %d <image> tokens for %d images",
              c->model_name, c->case_name, n_img, q.n_images);
    }
    idf_prompt_free(&q);
    free(ids2);
    n_checked++;
    free(ids);
    free(img);
    idf_prompt_free(&p);
}

/* Strict UTF-8 check for the test's own assertions. */
static int valid_utf8(const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n;) {
        int need = p[i] < 0x80 ? 0 : (p[i] >> 5) == 6 ? 1 : (p[i] >> 4) == 14 ? 2 : (p[i] >> 3) == 30 ? 3 : -1;
        if (need < 0 || i + (size_t)need >= n) return 0;
        for (int k = 1; k <= need; k++)
            if ((p[i + (size_t)k] & 0xC0) != 0x80) return 0;
        i += (size_t)need + 1;
    }
    return 1;
}

/* Feed ids through the stream; the pieces must each be valid UTF-8 and
 * concatenate to idf_detokenize(ids, skip_special). Returns the pieces joined. */
static void run_stream(const idf_tokenizer *tok, const int32_t *ids, const bool *special, int n, char *joined,
                       size_t cap, const char *what, const char *must_hold_whole) {
    int32_t byte_id[256];
    idf_stream_byte_ids(tok, byte_id);
    idf_stream so;
    idf_stream_init(&so, tok, byte_id);
    size_t len = 0;
    int whole = must_hold_whole == NULL;
    joined[0] = 0;
    for (int i = 0; i < n; i++) {
        const char *piece = idf_stream_token(&so, ids[i], special && special[i], i == n - 1);
        size_t pl = strlen(piece);
        CHECK(valid_utf8((const unsigned char *)piece, pl), "%s: piece %d is not valid UTF-8", what, i);
        if (must_hold_whole && strstr(piece, must_hold_whole)) whole = 1;
        if (len + pl < cap) {
            memcpy(joined + len, piece, pl + 1);
            len += pl;
        }
    }
    /* detokenize skips what the tokenizer calls special; mark the same ids */
    int32_t kept[64];
    int nk = 0;
    for (int i = 0; i < n && nk < 64; i++)
        if (!(special && special[i])) kept[nk++] = ids[i];
    char want[1024];
    idf_detokenize(tok, kept, nk, true, want, sizeof want);
    CHECK(strcmp(joined, want) == 0, "%s: stream \"%s\" != decoded \"%s\"", what, joined, want);
    CHECK(whole, "%s: no piece holds the whole character", what);
}

static void test_stream(const idf_tokenizer *tok) {
    /* characters outside the tiny vocabulary become byte-fallback tokens */
    const char *text = "Caf\xC3\xA9 costs 5\xE2\x82\xAC \xF0\x9F\x98\x80!";
    int32_t ids[64];
    int n = 0;
    idf_err err = {{0}};
    CHECK(idf_tokenize(tok, text, strlen(text), false, ids, 64, &n, &err) == IDEFICS_OK && n <= 64, "tokenize");
    char joined[1024];
    run_stream(tok, ids, NULL, n, joined, sizeof joined, "split characters", "\xE2\x82\xAC");
    CHECK(strcmp(joined, text) == 0, "stream \"%s\" != text \"%s\"", joined, text);
    int32_t b_e2 = idf_tokenizer_find(tok, "<0xE2>"), b_82 = idf_tokenizer_find(tok, "<0x82>"),
            b_ac = idf_tokenizer_find(tok, "<0xAC>"), b_20 = idf_tokenizer_find(tok, "<0x20>");
    int32_t word = idf_tokenizer_find(tok, "\xE2\x96\x81the");
    CHECK(b_e2 >= 0 && b_82 >= 0 && b_ac >= 0 && b_20 >= 0 && word >= 0, "tiny vocabulary lacks byte tokens");
    /* an incomplete sequence closed by a normal token: U+FFFD per byte */
    int32_t bad[] = {b_e2, b_82, word, b_ac};
    run_stream(tok, bad, NULL, 4, joined, sizeof joined, "invalid run", NULL);
    CHECK(strstr(joined, "\xEF\xBF\xBD\xEF\xBF\xBD the\xEF\xBF\xBD") != NULL, "invalid run gave \"%s\"", joined);
    /* a special token inside a run does not break it */
    int32_t mid[] = {b_e2, 0, b_82, b_ac};
    bool sp[] = {false, true, false, false};
    run_stream(tok, mid, sp, 4, joined, sizeof joined, "special inside a run", "\xE2\x82\xAC");
    CHECK(strcmp(joined, "\xE2\x82\xAC") == 0, "got \"%s\"", joined);
    /* the answer's leading space is dropped, even from a byte token */
    int32_t lead[] = {b_20, word};
    run_stream(tok, lead, NULL, 2, joined, sizeof joined, "leading space", NULL);
    CHECK(strcmp(joined, " the") == 0, "got \"%s\"", joined);
}

int main(void) {
    char root[4096], err[IDF_FIXTURE_ERR_LEN];
    idf_fixture_models_root(root, sizeof root);
    idf_fixture_manifest man;
    if (idf_fixture_manifest_load(root, &man, err, sizeof err) != 0) {
        printf("SKIP: no model fixtures (%s)\n", err);
        return 77;
    }
    for (int m = 0; m < man.n_models; m++) {
        const idf_fixture_model *fm = &man.models[m];
        cJSON *added = read_json(fm->dir, "added_tokens.json");
        cJSON *cfg = read_json(fm->dir, "config.json");
        const cJSON *im = added ? cJSON_GetObjectItemCaseSensitive(added, "<image>") : NULL;
        CHECK(cJSON_IsNumber(im), "%s: no <image> in added_tokens.json", fm->name);
        int32_t tok_image = cJSON_IsNumber(im) ? im->valueint : -1;
        int32_t tok_eos = json_int(cfg, "eos_token_id", 2);
        cJSON_Delete(added);
        cJSON_Delete(cfg);

        idf_tok_vocab_owned vo = {0};
        idf_tokenizer *tok = NULL;
        idf_err terr = {{0}};
        static const idf_alloc al = {{0}};
        if (idf_tokenizer_import_dir(fm->dir, &vo, err, sizeof err) != 0) {
            CHECK(0, "%s: tokenizer import: %s", fm->name, err);
            continue;
        }
        if (idf_tokenizer_create(&vo.v, &al, &tok, &terr) != IDEFICS_OK) {
            CHECK(0, "%s: tokenizer create: %s", fm->name, terr.msg);
            idf_tok_vocab_owned_free(&vo);
            continue;
        }
        if (m == 0) test_stream(tok);
        for (int k = 0; k < fm->n_cases; k++) {
            idf_fixture_case c;
            if (idf_fixture_case_load(fm->case_paths[k], &c, err, sizeof err) != 0) {
                CHECK(0, "%s", err);
                continue;
            }
            check_case(&c, tok, tok_image, tok_eos);
            idf_fixture_case_free(&c);
        }
        idf_tokenizer_free(tok);
        idf_tok_vocab_owned_free(&vo);
    }
    idf_fixture_manifest_free(&man);
    if (failures) {
        fprintf(stderr, "test_prompt_fixtures: %d failure(s) over %d cases\n", failures, n_checked);
        return 1;
    }
    printf("test_prompt_fixtures: %d cases match the HF processor (%d also with every text item plain)\n", n_checked,
           n_plain);
    return n_checked > 0 ? 0 : 1;
}
