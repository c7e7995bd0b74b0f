/*
 * test_sampling.c - runtime/sampling.c against the transformers semantics:
 * repetition penalty math, bad words, argmax ties, top-k ties, top-p sets
 * (checked against a direct transcription of HF's ascending-cumsum rule on
 * random logits), temperature, draw frequencies and seed determinism.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampling.h"

#include "check.h"

static void test_rng(void) {
    idf_rng a, b, c;
    idf_rng_seed(&a, 42);
    idf_rng_seed(&b, 42);
    idf_rng_seed(&c, 43);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = idf_rng_next(&a), y = idf_rng_next(&b), z = idf_rng_next(&c);
        CHECK(x == y, "same seed diverged at draw %d", i);
        same_c += x == z;
    }
    CHECK(same_c == 0, "seeds 42 and 43 gave %d equal draws", same_c);
    /* seed 0 must not give the all-zero (stuck) state */
    idf_rng z0;
    idf_rng_seed(&z0, 0);
    uint64_t o = 0;
    for (int i = 0; i < 8; i++) o |= idf_rng_next(&z0);
    CHECK(o != 0, "seed 0 produced zeros");
    double sum = 0, lo = 1, hi = 0;
    for (int i = 0; i < 100000; i++) {
        double u = idf_rng_uniform(&a);
        CHECK(u >= 0 && u < 1, "uniform %g out of [0,1)", u);
        sum += u;
        if (u < lo) lo = u;
        if (u > hi) hi = u;
    }
    CHECK(fabs(sum / 100000 - 0.5) < 0.01, "mean %g", sum / 100000);
    CHECK(lo < 0.001 && hi > 0.999, "range %g..%g", lo, hi);
}

static void test_penalty(void) {
    float l[5] = {2.0f, -2.0f, 1.0f, 0.5f, 0.0f};
    int32_t ids[] = {0, 1, 0, 4, 99, -3, 0};
    uint8_t seen[5];
    idf_penalize_repetition(l, 5, ids, 7, 2.0f, seen);
    CHECK(l[0] == 1.0f, "positive logit divided once, got %g", l[0]);
    CHECK(l[1] == -4.0f, "negative logit multiplied, got %g", l[1]);
    CHECK(l[2] == 1.0f && l[3] == 0.5f, "untouched ids changed: %g %g", l[2], l[3]);
    CHECK(l[4] == 0.0f, "zero stays zero, got %g", l[4]);
    float m[2] = {3, -3};
    int32_t one[] = {0, 1};
    idf_penalize_repetition(m, 2, one, 2, 1.0f, seen);
    CHECK(m[0] == 3 && m[1] == -3, "penalty 1 must be a no-op");
    idf_penalize_repetition(m, 2, one, 2, 0.5f, seen);
    CHECK(m[0] == 6 && m[1] == -1.5f, "penalty < 1 encourages: %g %g", m[0], m[1]);
}

static void test_ban_argmax(void) {
    float l[6] = {1, 7, 7, 3, NAN, 2};
    CHECK(idf_argmax(l, 6) == 1, "first max on ties, got %d", idf_argmax(l, 6));
    int32_t ban[] = {1, 2, 77, -1};
    idf_ban_tokens(l, 6, ban, 4);
    CHECK(isinf(l[1]) && l[1] < 0 && isinf(l[2]), "banned not -inf");
    CHECK(idf_argmax(l, 6) == 3, "argmax after ban (NaN skipped) got %d", idf_argmax(l, 6));
    float all[3] = {-INFINITY, -INFINITY, NAN};
    CHECK(idf_argmax(all, 3) == -1, "no finite logit must give -1");
    idf_cand cand[3];
    idf_sampling sp = {1.0f, 0, 1.0f, 1.0f};
    CHECK(idf_sample_candidates(all, 3, &sp, cand) == 0, "no candidates expected");
    /* banned tokens are never drawn */
    float l2[4] = {5, 5, 5, 5};
    int32_t ban2[] = {0, 2};
    idf_ban_tokens(l2, 4, ban2, 2);
    idf_rng r;
    idf_rng_seed(&r, 7);
    idf_cand c4[4];
    for (int i = 0; i < 2000; i++) {
        int32_t t = idf_sample_token(l2, 4, &sp, c4, &r);
        CHECK(t == 1 || t == 3, "drew banned token %d", t);
        if (t != 1 && t != 3) break;
    }
}

static void test_top_k(void) {
    float l[5] = {1, 5, 3, 3, 2};
    idf_cand c[5];
    idf_sampling sp = {1.0f, 2, 1.0f, 1.0f};
    int n = idf_sample_candidates(l, 5, &sp, c);
    CHECK(n == 3, "top-2 keeps the tie with the 2nd logit: n=%d", n);
    CHECK(n >= 3 && c[0].id == 1 && c[1].id == 2 && c[2].id == 3, "order by logit then id");
    double s = 0;
    for (int i = 0; i < n; i++) s += c[i].p;
    CHECK(fabs(s - 1) < 1e-6, "renormalised mass %g", s);
    double z = exp(5) + 2 * exp(3);
    CHECK(fabs(c[0].p - exp(5) / z) < 1e-6, "p0 %g want %g", c[0].p, exp(5) / z);
    sp.top_k = 1;
    CHECK(idf_sample_candidates(l, 5, &sp, c) == 1 && c[0].id == 1, "top-1");
    sp.top_k = 50;
    CHECK(idf_sample_candidates(l, 5, &sp, c) == 5, "top-k above the vocab keeps all");
}

static void test_temperature(void) {
    float l[3] = {1, 2, 4};
    idf_cand c[3];
    idf_sampling sp = {2.0f, 0, 1.0f, 1.0f};
    int n = idf_sample_candidates(l, 3, &sp, c);
    CHECK(n == 3, "n %d", n);
    double z = exp(0.5) + exp(1.0) + exp(2.0);
    CHECK(fabs(c[0].p - exp(2.0) / z) < 1e-6 && fabs(c[2].p - exp(0.5) / z) < 1e-6, "softmax(l/T): %g %g", c[0].p,
          c[2].p);
}

/* HF TopPLogitsWarper, transcribed: sort ascending, cumulative softmax, drop
 * entries whose cumulative mass is <= 1 - top_p, always keep the largest. */
static int hf_top_p_set(const float *l, int n, float top_p, uint8_t *keep) {
    int *ord = malloc(sizeof(int) * (size_t)n);
    for (int i = 0; i < n; i++) ord[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort ascending */
        int v = ord[i], j = i - 1;
        while (j >= 0 && l[ord[j]] > l[v]) ord[j + 1] = ord[j], j--;
        ord[j + 1] = v;
    }
    double mx = l[ord[n - 1]], z = 0, cum = 0;
    for (int i = 0; i < n; i++) z += exp((double)l[i] - mx);
    int kept = 0;
    for (int i = 0; i < n; i++) {
        cum += exp((double)l[ord[i]] - mx) / z;
        keep[ord[i]] = !(cum <= 1.0 - top_p) || i == n - 1;
        kept += keep[ord[i]];
    }
    free(ord);
    return kept;
}

static void test_top_p(void) {
    /* probabilities 0.5 0.3 0.15 0.05 */
    float l[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
    idf_cand c[4];
    idf_sampling sp = {1.0f, 0, 0.75f, 1.0f};
    int n = idf_sample_candidates(l, 4, &sp, c);
    CHECK(n == 2 && c[0].id == 1 && c[1].id == 3, "top_p 0.75 keeps {1,3}, n=%d", n);
    CHECK(fabs(c[0].p - 0.5 / 0.8) < 1e-5, "renormalised %g", c[0].p);
    sp.top_p = 0.85f;
    CHECK(idf_sample_candidates(l, 4, &sp, c) == 3, "top_p 0.85 keeps 3");
    sp.top_p = 0.01f;
    CHECK(idf_sample_candidates(l, 4, &sp, c) == 1 && c[0].id == 1, "at least one kept");
    sp.top_p = 1.0f;
    CHECK(idf_sample_candidates(l, 4, &sp, c) == 4, "top_p 1 is off");

    /* random logits: same kept set as HF's rule */
    idf_rng r;
    idf_rng_seed(&r, 1234);
    enum { N = 300 };
    float rl[N];
    idf_cand rc[N];
    uint8_t keep[N];
    for (int trial = 0; trial < 200; trial++) {
        for (int i = 0; i < N; i++) rl[i] = (float)(idf_rng_uniform(&r) * 8.0 - 4.0);
        float tp = (float)(0.05 + 0.9 * idf_rng_uniform(&r));
        idf_sampling s2 = {1.0f, 0, tp, 1.0f};
        int m = idf_sample_candidates(rl, N, &s2, rc);
        int want = hf_top_p_set(rl, N, tp, keep);
        int agree = m == want;
        for (int i = 0; i < m && agree; i++) agree = keep[rc[i].id];
        CHECK(agree, "trial %d top_p %g: %d kept, HF keeps %d", trial, tp, m, want);
        if (!agree) break;
    }
    /* top-k then top-p: top-p renormalises within the top-k set */
    float l2[4] = {logf(0.4f), logf(0.3f), logf(0.2f), logf(0.1f)};
    idf_sampling s3 = {1.0f, 2, 0.5f, 1.0f};
    n = idf_sample_candidates(l2, 4, &s3, c);
    /* within top-2: 0.4/0.7 = 0.571 >= 0.5, so one token */
    CHECK(n == 1 && c[0].id == 0, "top-k=2 then top-p=0.5 keeps 1, n=%d", n);
}

static void test_draws(void) {
    float l[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    idf_cand c[3];
    idf_sampling sp = {1.0f, 0, 1.0f, 1.0f};
    idf_rng r;
    idf_rng_seed(&r, 99);
    int cnt[3] = {0};
    enum { D = 40000 };
    for (int i = 0; i < D; i++) {
        int32_t t = idf_sample_token(l, 3, &sp, c, &r);
        CHECK(t >= 0 && t < 3, "token %d", t);
        if (t >= 0 && t < 3) cnt[t]++;
    }
    CHECK(fabs(cnt[0] / (double)D - 0.5) < 0.015 && fabs(cnt[1] / (double)D - 0.3) < 0.015 &&
              fabs(cnt[2] / (double)D - 0.2) < 0.015,
          "frequencies %d %d %d", cnt[0], cnt[1], cnt[2]);

    /* same seed, same sequence; greedy ignores the generator */
    idf_rng a, b;
    idf_rng_seed(&a, 5);
    idf_rng_seed(&b, 5);
    int diff = 0;
    for (int i = 0; i < 500; i++) diff += idf_sample_token(l, 3, &sp, c, &a) != idf_sample_token(l, 3, &sp, c, &b);
    CHECK(diff == 0, "same seed gave %d different tokens", diff);
    idf_sampling greedy = {0.0f, 0, 1.0f, 1.0f};
    for (int i = 0; i < 50; i++) CHECK(idf_sample_token(l, 3, &greedy, c, &a) == 0, "greedy must be argmax");
}

int main(void) {
    test_rng();
    test_penalty();
    test_ban_argmax();
    test_top_k();
    test_temperature();
    test_top_p();
    test_draws();
    if (failures) {
        fprintf(stderr, "test_sampling: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_sampling: ok\n");
    return 0;
}
