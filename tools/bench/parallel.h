/*
 * parallel.h - idefics-bench --parallel: aggregate decode speed of B sequences
 * stepped together by the batched pass (issue 11). Uses runtime internals.
 */
#ifndef IDF_BENCH_PARALLEL_H
#define IDF_BENCH_PARALLEL_H

#include "idefics.h"

#define BENCH_MAX_PAR 8

typedef struct par_result {
    int width;
    double agg_tok_s;   /* B * steps / seconds (median over reps) */
    double agg_lo, agg_hi;
    double per_seq_tok_s; /* agg / B: what each stream sees */
    double step_ms;
    double peak_rss_mb; /* process peak after this width (widths run in increasing order) */
    double anon_rss_mb; /* anonymous RSS with this width's states alive */
    double kv_mb;       /* KV cache bytes this width's decode wrote (B sequences, all layers) */
    double cpu_ms_per_tok; /* process CPU time per generated token: on a shared, overloaded machine
                              the cost that wall time hides behind other processes' load */
} par_result;

/* Run every width of w[0..n) (each <= 64): B states of ctx tokens, each
 * prefilled with one token, then tg batched steps, reps times. 0 or an error
 * message written to err. */
int bench_parallel(const idefics_model *m, int ctx, idefics_kv_type kv, int threads, int tg, int reps, const int *w,
                   int n, par_result *out, char *err, size_t err_size);

#endif
