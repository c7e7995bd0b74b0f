/*
 * test_fixtures.c - sanity test of the reference model fixtures and of fixture_io.
 * Loads every case listed in tests/fixtures/models/manifest.json and checks that the
 * JSON, the .bin arrays and the model's config.json agree with each other: shapes,
 * finiteness, id ranges, mask structure (re-derived from input_ids with the processor
 * rule of spec 4.4), the greedy tokens against the recorded per-step logits, and that
 * the reader rejects a truncated .bin. Skips (77) if the fixtures are absent.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fixture_io.h"

#include "check.h"

static int file_exists(const char *dir, const char *name) {
    char p[4096];
    struct stat st;
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* What the case checks need from config.json; absent keys take the IdeficsConfig
 * defaults, because save_pretrained omits keys equal to the class defaults. */
typedef struct {
    int vocab, additional, use_resampler;
    int image_size, patch, vision_dim, n_latents;
} model_info;

static int cfg_int(const cJSON *o, const char *key, int def) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    return cJSON_IsNumber(v) ? v->valueint : def;
}

static int read_config(const char *dir, model_info *mi) {
    char p[4096];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "rb");
    if (!f) return -1;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (!buf) return -1;
    buf[n] = 0;
    cJSON *j = cJSON_Parse(buf);
    free(buf);
    if (!j) return -1;
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(j, "vision_config");
    const cJSON *pc = cJSON_GetObjectItemCaseSensitive(j, "perceiver_config");
    mi->vocab = cfg_int(j, "vocab_size", 32000);
    mi->additional = cfg_int(j, "additional_vocab_size", 0);
    mi->use_resampler = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "use_resampler"));
    mi->image_size = cfg_int(vc, "image_size", 224);
    mi->patch = cfg_int(vc, "patch_size", 14);
    mi->vision_dim = cfg_int(vc, "embed_dim", 768);
    mi->n_latents = cfg_int(pc, "resampler_n_latents", 64);
    cJSON_Delete(j);
    return 0;
}

static int all_finite(const idf_fixture_tensor *t) {
    for (size_t i = 0; i < t->count; i++)
        if (!isfinite(t->data[i])) return 0;
    return 1;
}

static int shape_is(const idf_fixture_tensor *t, int nd, const int64_t *want) {
    if (t->ndim != nd) return 0;
    for (int i = 0; i < nd; i++)
        if (t->shape[i] != want[i]) return 0;
    return 1;
}

static int is_suppressed(const idf_fixture_case *c, int id) {
    for (int i = 0; i < c->n_suppressed; i++)
        if (c->suppressed[i] == id) return 1;
    return 0;
}

static void check_case(const idf_fixture_case *c, const model_info *mi, const char *model) {
    const char *tag = c->json_path;
    const int B = c->batch, T = c->seq_len, N = c->num_images, V = c->vocab_total;
    const int fake_id = mi->vocab, image_id = mi->vocab + 1;
    CHECK(!strcmp(c->model_name, model), "%s: model \"%s\" in the %s folder", tag, c->model_name,
          model);
    CHECK(V == mi->vocab + mi->additional, "%s: vocab_size_total %d, config says %d + %d", tag, V,
          mi->vocab, mi->additional);
    CHECK(c->image_size == mi->image_size, "%s: image_size %d vs config %d", tag, c->image_size,
          mi->image_size);

    int64_t pv[5] = {B, N, 3, c->image_size, c->image_size};
    int64_t lg[3] = {B, T, V};
    int grid = mi->image_size / mi->patch;
    int64_t lat = mi->use_resampler ? mi->n_latents : (int64_t)grid * grid + 1;
    int64_t ih[4] = {B, N, lat, mi->vision_dim};
    int64_t gl[3] = {B, c->n_new, V};
    CHECK(shape_is(&c->pixel_values, 5, pv), "%s: pixel_values shape", tag);
    CHECK(shape_is(&c->logits, 3, lg), "%s: logits shape", tag);
    CHECK(shape_is(&c->image_hidden_states, 4, ih), "%s: image_hidden_states shape", tag);
    CHECK(c->gen_logits.data && shape_is(&c->gen_logits, 3, gl), "%s: gen_logits shape", tag);
    CHECK(all_finite(&c->pixel_values), "%s: pixel_values not finite", tag);
    CHECK(all_finite(&c->logits), "%s: logits not finite", tag);
    CHECK(all_finite(&c->image_hidden_states), "%s: image_hidden_states not finite", tag);
    CHECK(all_finite(&c->gen_logits), "%s: gen_logits not finite", tag);

    int n_image_items = 0;
    for (int i = 0; i < c->n_items; i++) {
        if (c->items[i].kind != IDF_FIXTURE_IMAGE) continue;
        n_image_items++;
        struct stat st;
        CHECK(stat(c->items[i].image_path, &st) == 0, "%s: image %s missing", tag,
              c->items[i].image_path);
    }
    CHECK(strncmp(c->full_text, "<s>", 3) == 0, "%s: full_text must start with <s>", tag);

    for (int b = 0; b < B; b++) {
        const int32_t *ids = c->input_ids + (size_t)b * T;
        const int32_t *am = c->attention_mask + (size_t)b * T;
        const int32_t *iam = c->image_attention_mask + (size_t)b * T * N;
        int n_image_tokens = 0, cnt = -1, seen_eod = 0;
        for (int t = 0; t < T; t++) {
            CHECK(ids[t] >= 0 && ids[t] < V, "%s: input_ids[%d] = %d", tag, t, ids[t]);
            CHECK(am[t] == 0 || am[t] == 1, "%s: attention_mask[%d] = %d", tag, t, am[t]);
            /* Spec 4.4: a token sees the latest <image> before or at it, until </s>. */
            if (ids[t] == image_id) {
                cnt++;
                seen_eod = 0;
                n_image_tokens++;
            }
            int want = seen_eod ? -1 : cnt;
            if (ids[t] == 2) seen_eod = 1;
            if (want >= N) want = -1;
            int ones = 0, at = -1;
            for (int k = 0; k < N; k++) {
                int v = iam[(size_t)t * N + k];
                CHECK(v == 0 || v == 1, "%s: image_attention_mask[%d][%d] = %d", tag, t, k, v);
                if (v == 1) {
                    ones++;
                    at = k;
                }
            }
            CHECK(ones <= 1, "%s: image_attention_mask row %d is not one-hot or zero", tag, t);
            CHECK(at == want, "%s: token %d sees image %d, processor rule says %d", tag, t, at,
                  want);
        }
        CHECK(ids[0] == 1 || am[0] == 0, "%s: first real token must be <s>", tag);
        CHECK(n_image_tokens == n_image_items, "%s: %d <image> ids for %d image items", tag,
              n_image_tokens, n_image_items);
        CHECK(N == (n_image_items > 0 ? n_image_items : 1), "%s: num_images %d for %d images", tag,
              N, n_image_items);
        if (n_image_items == 0) {
            int zero = 1;
            for (size_t i = 0; i < c->pixel_values.count; i++) zero &= c->pixel_values.data[i] == 0.0f;
            CHECK(zero, "%s: text-only pixel_values must be zeros", tag);
        }
        (void)fake_id;

        /* Greedy tokens agree with the recorded logits: the argmax over allowed ids, and
         * the recorded top-2 gap, at every step. */
        for (int s = 0; s < c->n_new; s++) {
            const float *row = c->gen_logits.data + ((size_t)b * c->n_new + s) * V;
            int best = -1, second = -1;
            for (int v = 0; v < V; v++) {
                if (is_suppressed(c, v)) continue;
                if (best < 0 || row[v] > row[best]) {
                    second = best;
                    best = v;
                } else if (second < 0 || row[v] > row[second]) {
                    second = v;
                }
            }
            int tok = c->gen_tokens[(size_t)b * c->n_new + s];
            CHECK(tok >= 0 && tok < V && !is_suppressed(c, tok), "%s: step %d token %d", tag, s,
                  tok);
            CHECK(best == tok, "%s: step %d argmax %d but token %d", tag, s, best, tok);
            float gap = row[best] - row[second];
            float want_gap = c->top2_gap[(size_t)b * c->n_new + s];
            CHECK(fabsf(gap - want_gap) <= 1e-5f + 1e-5f * fabsf(want_gap),
                  "%s: step %d gap %g vs recorded %g", tag, s, gap, want_gap);
            CHECK(gap >= c->min_top2_gap - 1e-5f, "%s: step %d gap %g below recorded min %g", tag,
                  s, gap, c->min_top2_gap);
            CHECK(gap > 0.0f, "%s: step %d is an exact tie", tag, s);
        }
        /* The first generate step (KV-cache prefill) matches the forward's last row. */
        float maxdiff = 0.0f;
        const float *last = c->logits.data + ((size_t)b * T + (T - 1)) * V;
        const float *step0 = c->gen_logits.data + (size_t)b * c->n_new * V;
        for (int v = 0; v < V; v++) maxdiff = fmaxf(maxdiff, fabsf(last[v] - step0[v]));
        CHECK(maxdiff < 1e-4f, "%s: prefill vs forward max diff %g", tag, maxdiff);
    }
    for (int i = 0; i < c->n_suppressed; i++)
        CHECK(c->suppressed[i] >= 0 && c->suppressed[i] < V, "%s: suppressed id %d", tag,
              c->suppressed[i]);
    CHECK(is_suppressed(c, image_id) && is_suppressed(c, fake_id) && is_suppressed(c, c->eos_id),
          "%s: <image>, <fake_token_around_image> and eos must be suppressed", tag);
}

static int copy_file(const char *from, const char *to, long truncate_by) {
    FILE *a = fopen(from, "rb");
    if (!a) return -1;
    FILE *b = fopen(to, "wb");
    if (!b) {
        fclose(a);
        return -1;
    }
    fseek(a, 0, SEEK_END);
    long n = ftell(a) - truncate_by;
    rewind(a);
    int rc = 0;
    for (long i = 0; i < n; i++) {
        int ch = fgetc(a);
        if (ch == EOF || fputc(ch, b) == EOF) {
            rc = -1;
            break;
        }
    }
    fclose(a);
    fclose(b);
    return rc;
}

/* A case whose logits .bin lost its last float must be rejected with a message naming
 * the size mismatch, and the struct must come back zeroed. */
static void check_truncated_bin_rejected(const idf_fixture_case *good) {
    const char *tmp = getenv("TMPDIR");
    /* Sized so no path can be truncated: root < dir < cases < case_dir, p/q hold any. */
    char root[1024], dir[1100], cases[1200], p[8192], q[8192];
    snprintf(root, sizeof root, "%s/idf_fixture_XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(root)) {
        CHECK(0, "mkdtemp failed");
        return;
    }
    snprintf(dir, sizeof dir, "%s/m", root);
    snprintf(cases, sizeof cases, "%s/cases", dir);
    CHECK(mkdir(dir, 0700) == 0 && mkdir(cases, 0700) == 0, "mkdir scratch");
    const char *names[] = {"pixel_values", "logits", "image_hidden_states", "gen_logits"};
    char case_dir[4200];
    snprintf(case_dir, sizeof case_dir, "%s/cases", good->model_dir);
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s.%s.bin", case_dir, good->case_name, names[i]);
        snprintf(q, sizeof q, "%s/%s.%s.bin", cases, good->case_name, names[i]);
        CHECK(copy_file(p, q, i == 1 ? 4 : 0) == 0, "copy %s", p);
    }
    snprintf(q, sizeof q, "%s/%s.json", cases, good->case_name);
    CHECK(copy_file(good->json_path, q, 0) == 0, "copy %s", good->json_path);

    idf_fixture_case bad;
    char err[IDF_FIXTURE_ERR_LEN] = "";
    int rc = idf_fixture_case_load(q, &bad, err, sizeof err);
    CHECK(rc == -1, "truncated logits.bin accepted");
    CHECK(strstr(err, "bytes") && strstr(err, "logits"), "error does not name the problem: %s",
          err);
    CHECK(bad.logits.data == NULL && bad.input_ids == NULL, "failed load left data behind");

    /* And the untouched copy loads (so the failure above was the truncation). */
    snprintf(p, sizeof p, "%s/%s.logits.bin", case_dir, good->case_name);
    snprintf(q, sizeof q, "%s/%s.logits.bin", cases, good->case_name);
    CHECK(copy_file(p, q, 0) == 0, "copy %s", p);
    snprintf(q, sizeof q, "%s/%s.json", cases, good->case_name);
    rc = idf_fixture_case_load(q, &bad, err, sizeof err);
    CHECK(rc == 0, "intact copy rejected: %s", err);
    idf_fixture_case_free(&bad);

    for (int i = 0; i < 4; i++) {
        snprintf(q, sizeof q, "%s/%s.%s.bin", cases, good->case_name, names[i]);
        unlink(q);
    }
    snprintf(q, sizeof q, "%s/%s.json", cases, good->case_name);
    unlink(q);
    rmdir(cases);
    rmdir(dir);
    rmdir(root);
}

int main(void) {
    char root[4096];
    idf_fixture_models_root(root, sizeof root);
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/manifest.json", root);
    if (access(mpath, R_OK) != 0) {
        printf("SKIP: %s not found (run tools/reference/make_model_fixtures.py)\n", mpath);
        return 77;
    }
    idf_fixture_manifest man;
    char err[IDF_FIXTURE_ERR_LEN];
    if (idf_fixture_manifest_load(root, &man, err, sizeof err)) {
        fprintf(stderr, "manifest: %s\n", err);
        return 1;
    }
    CHECK(man.n_images > 0, "manifest lists no images");
    for (int i = 0; i < man.n_images; i++) {
        struct stat st;
        CHECK(stat(man.images[i], &st) == 0, "image %s missing", man.images[i]);
    }
    int n_cases = 0, did_truncation = 0;
    int saw_instruct = 0, saw_base = 0, saw_sharded = 0;
    for (int mi_ = 0; mi_ < man.n_models; mi_++) {
        const idf_fixture_model *m = &man.models[mi_];
        saw_instruct |= !strcmp(m->flavour, "instruct");
        saw_base |= !strcmp(m->flavour, "base");
        saw_sharded |= m->sharded;
        const char *need[] = {"config.json", "tokenizer.model", "tokenizer.json",
                              "tokenizer_config.json", "special_tokens_map.json",
                              "preprocessor_config.json"};
        for (size_t k = 0; k < sizeof need / sizeof need[0]; k++)
            CHECK(file_exists(m->dir, need[k]), "%s: %s missing", m->dir, need[k]);
        CHECK(file_exists(m->dir, m->sharded ? "model.safetensors.index.json" : "model.safetensors"),
              "%s: weights missing", m->dir);
        model_info info;
        if (read_config(m->dir, &info)) {
            CHECK(0, "%s: config.json unreadable", m->dir);
            continue;
        }
        CHECK(info.use_resampler == m->use_resampler, "%s: use_resampler differs", m->dir);
        CHECK(info.additional == (!strcmp(m->flavour, "instruct") ? 3 : 2),
              "%s: additional_vocab_size %d for a %s model", m->dir, info.additional, m->flavour);
        for (int k = 0; k < m->n_cases; k++) {
            idf_fixture_case c;
            if (idf_fixture_case_load(m->case_paths[k], &c, err, sizeof err)) {
                CHECK(0, "%s", err);
                continue;
            }
            check_case(&c, &info, m->name);
            if (!did_truncation) {
                check_truncated_bin_rejected(&c);
                did_truncation = 1;
            }
            n_cases++;
            idf_fixture_case_free(&c);
        }
    }
    CHECK(saw_base && saw_instruct && saw_sharded, "fixture set lacks a base, instruct or sharded model");

    idf_fixture_case missing;
    CHECK(idf_fixture_case_load("/nonexistent/cases/x.json", &missing, err, sizeof err) == -1,
          "missing case file accepted");
    printf("%d models, %d cases checked, %d failures\n", man.n_models, n_cases, failures);
    idf_fixture_manifest_free(&man);
    return failures ? 1 : 0;
}
