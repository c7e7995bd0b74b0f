/*
 * sched.h - idefics-bench --sched: continuous batching through the public
 * idefics_batch API, comparing prefill scheduling (issue 11).
 */
#ifndef IDF_BENCH_SCHED_H
#define IDF_BENCH_SCHED_H

#include "idefics.h"

typedef struct sched_result {
    int chunk;            /* prefill_chunk (0 = a prefill step of its own) */
    double wall_s;        /* all requests */
    double gen_tok_s;     /* generated tokens / wall */
    double ttft_mean_ms;  /* add -> first token */
    double ttft_max_ms;
    double gap_max_ms;    /* the longest wait between two tokens of one session */
    double gap_mean_ms;
} sched_result;

/* n_req requests of about prompt_tokens text tokens, each generating gen
 * tokens, through a batch of `width` sessions: a finished one is replaced at
 * once. One result per chunk value. 0 or an error message in err. */
int bench_sched(idefics_model *m, int threads, int ctx, int width, int n_req, int prompt_tokens, int gen,
                const int *chunks, int n_chunks, sched_result *out, char *err, size_t err_size);

#endif
