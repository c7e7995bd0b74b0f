/*
 * sampling.h - choosing the next token from logits, with the semantics of
 * transformers' generate(): repetition penalty and bad words first (logits
 * processors), then temperature -> top-k -> top-p (warpers, in that order),
 * then a draw from the renormalised distribution; greedy is a plain argmax.
 *
 * The random source is our own seeded generator (xoshiro256** seeded through
 * splitmix64), so a seed gives the same tokens on every platform and build.
 * No allocation: the caller passes scratch sized n_vocab.
 */
#ifndef IDF_SAMPLING_H
#define IDF_SAMPLING_H

#include <stdbool.h>
#include <stdint.h>

typedef struct idf_rng {
    uint64_t s[4];
} idf_rng;

void idf_rng_seed(idf_rng *r, uint64_t seed);
uint64_t idf_rng_next(idf_rng *r);
double idf_rng_uniform(idf_rng *r); /* [0, 1), 53 random bits */

typedef struct idf_sampling {
    float temperature;        /* <= 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* >= 1: off */
    float repetition_penalty; /* 1: off */
} idf_sampling;

typedef struct idf_cand {
    int32_t id;
    float logit; /* after temperature */
    float p;     /* probability after the filters (sums to 1 over the kept set) */
} idf_cand;

/* HF RepetitionPenaltyLogitsProcessor: every distinct id of ids[0..n) in
 * [0, n_vocab) has its logit divided by penalty if positive, multiplied if
 * negative (once per id, however often it occurs). seen: n_vocab bytes scratch. */
void idf_penalize_repetition(float *logits, int n_vocab, const int32_t *ids, int n, float penalty, uint8_t *seen);

/* Single-token bad words: those logits become -inf. Ids outside the vocabulary are ignored. */
void idf_ban_tokens(float *logits, int n_vocab, const int32_t *ban, int n_ban);

/* Index of the largest logit, the first on ties (torch.argmax); NaN and -inf
 * are never chosen. -1 when no logit is finite or +inf. */
int32_t idf_argmax(const float *logits, int n_vocab);

/* The candidate set after temperature, top-k (ties with the k-th logit kept)
 * and top-p (the smallest prefix by descending probability whose mass reaches
 * top_p; at least one token), sorted by descending logit (id ascending on
 * ties), with renormalised probabilities. cand: n_vocab entries of scratch.
 * Returns the count (0 when no logit is finite). */
int idf_sample_candidates(const float *logits, int n_vocab, const idf_sampling *sp, idf_cand *cand);

/* Draw one candidate by probability. */
int32_t idf_sample_pick(const idf_cand *cand, int n, idf_rng *rng);

/* Greedy (argmax) when sp->temperature <= 0, else candidates + pick. Does not
 * apply the penalty or bans: the caller does, on the raw logits. -1 when no
 * token can be chosen. */
int32_t idf_sample_token(const float *logits, int n_vocab, const idf_sampling *sp, idf_cand *cand, idf_rng *rng);

#endif /* IDF_SAMPLING_H */
