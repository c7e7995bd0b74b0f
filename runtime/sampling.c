/*
 * sampling.c - logits processors, warpers and the seeded random generator
 * (sampling.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampling.h"

/* splitmix64: spreads any seed (0 included) over the xoshiro state, which must
 * not be all zero. */
static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void idf_rng_seed(idf_rng *r, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t idf_rng_next(idf_rng *r) {
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double idf_rng_uniform(idf_rng *r) { return (double)(idf_rng_next(r) >> 11) * 0x1.0p-53; }

void idf_penalize_repetition(float *logits, int n_vocab, const int32_t *ids, int n, float penalty, uint8_t *seen) {
    if (penalty == 1.0f || n <= 0) return;
    memset(seen, 0, (size_t)n_vocab);
    for (int i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= n_vocab || seen[id]) continue;
        seen[id] = 1;
        float v = logits[id];
        logits[id] = v < 0 ? v * penalty : v / penalty;
    }
}

void idf_ban_tokens(float *logits, int n_vocab, const int32_t *ban, int n_ban) {
    for (int i = 0; i < n_ban; i++)
        if (ban[i] >= 0 && ban[i] < n_vocab) logits[ban[i]] = -INFINITY;
}

int32_t idf_argmax(const float *logits, int n_vocab) {
    int32_t best = -1;
    float bv = -INFINITY;
    for (int i = 0; i < n_vocab; i++) {
        float v = logits[i];
        if (isnan(v) || v == -INFINITY) continue;
        if (best < 0 || v > bv) {
            best = i;
            bv = v;
        }
    }
    return best;
}

static int cand_cmp(const void *a, const void *b) {
    const idf_cand *x = a, *y = b;
    if (x->logit > y->logit) return -1;
    if (x->logit < y->logit) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

int idf_sample_candidates(const float *logits, int n_vocab, const idf_sampling *sp, idf_cand *cand) {
    float inv_t = sp->temperature > 0 ? 1.0f / sp->temperature : 1.0f;
    int n = 0;
    for (int i = 0; i < n_vocab; i++) {
        float v = logits[i];
        if (isnan(v) || v == -INFINITY) continue; /* -inf never survives a softmax */
        cand[n].id = i;
        cand[n].logit = v * inv_t;
        cand[n].p = 0;
        n++;
    }
    if (n == 0) return 0;
    qsort(cand, (size_t)n, sizeof *cand, cand_cmp);

    /* top-k: HF removes logits strictly below the k-th largest, so ties stay */
    if (sp->top_k > 0 && sp->top_k < n) {
        float kth = cand[sp->top_k - 1].logit;
        int m = sp->top_k;
        while (m < n && cand[m].logit >= kth) m++;
        n = m;
    }

    /* softmax over the kept set, in double so long tails do not vanish */
    double maxv = cand[0].logit, sum = 0;
    if (isinf(maxv)) {
        /* +inf logits: uniform over them, as softmax would give in the limit */
        int m = 0;
        while (m < n && isinf(cand[m].logit)) m++;
        for (int i = 0; i < m; i++) cand[i].p = 1.0f / (float)m;
        return m;
    }
    for (int i = 0; i < n; i++) sum += exp((double)cand[i].logit - maxv);

    /* top-p: keep a token while the mass before it is below top_p */
    if (sp->top_p < 1.0f) {
        double before = 0;
        int m = 0;
        while (m < n) {
            if (m > 0 && before >= (double)sp->top_p) break;
            before += exp((double)cand[m].logit - maxv) / sum;
            m++;
        }
        n = m;
        sum = 0;
        for (int i = 0; i < n; i++) sum += exp((double)cand[i].logit - maxv);
    }
    for (int i = 0; i < n; i++) cand[i].p = (float)(exp((double)cand[i].logit - maxv) / sum);
    return n;
}

int32_t idf_sample_pick(const idf_cand *cand, int n, idf_rng *rng) {
    if (n <= 0) return -1;
    double total = 0;
    for (int i = 0; i < n; i++) total += cand[i].p;
    double u = idf_rng_uniform(rng) * total, c = 0;
    for (int i = 0; i < n; i++) {
        c += cand[i].p;
        if (u < c) return cand[i].id;
    }
    /* rounding left u at the very end: the last token with any mass */
    for (int i = n - 1; i > 0; i--)
        if (cand[i].p > 0) return cand[i].id;
    return cand[0].id;
}

int32_t idf_sample_token(const float *logits, int n_vocab, const idf_sampling *sp, idf_cand *cand, idf_rng *rng) {
    if (sp->temperature <= 0) return idf_argmax(logits, n_vocab);
    int n = idf_sample_candidates(logits, n_vocab, sp, cand);
    return idf_sample_pick(cand, n, rng);
}
