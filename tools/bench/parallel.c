/*
 * parallel.c - idefics-bench --parallel (parallel.h). Each width B gets B
 * fresh sequence states (their own KV caches, as B sessions would have) and
 * one pass state; every step evaluates one token of each sequence in one
 * batched pass (idf_state_eval_seqs), so the weights are read once per step.
 * Width 1 is the same pass with one row: the single-sequence baseline of the
 * same run. Token ids are random: speed does not depend on them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "forward.h"
#include "model.h"
#include "parallel.h"
#include "platform.h"
#include "quant.h"

static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int bench_parallel(const idefics_model *m, int ctx, idefics_kv_type kv, int threads, int tg, int reps, const int *w,
                   int n, par_result *out, char *err, size_t err_size) {
    const idf_config *c = &m->cfg;
    const size_t V = c->n_vocab;
    const int steps = tg + 1 < ctx ? tg : ctx - 2;
    if (steps < 1) return snprintf(err, err_size, "--parallel: the context is too small"), 1;
    float *lg = malloc(64 * V * sizeof(float));
    int32_t *ids = malloc((size_t)(64 * (steps + 2)) * sizeof(int32_t));
    double *v = malloc((size_t)reps * sizeof(double));
    if (!lg || !ids || !v) {
        free(lg), free(ids), free(v);
        return snprintf(err, err_size, "--parallel: out of memory"), 1;
    }
    uint64_t r = 0x2545F4914F6CDD1Dull;
    for (int i = 0; i < 64 * (steps + 2); i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        ids[i] = (int32_t)((r >> 16) % c->vocab_size);
    }
    int rc = 0;
    idf_err e;
    idf_err_clear(&e);
    for (int k = 0; k < n && !rc; k++) {
        const int B = w[k];
        idf_state *st[64] = {0}, *pass = NULL;
        double cpu_sum = 0; /* this width's CPU ms per token, summed over reps */
        idf_seq seq[64];
        if (B < 1 || B > 64) {
            rc = snprintf(err, err_size, "--parallel: width %d is out of 1..64", B) > 0;
            break;
        }
        rc = idf_state_create_pass(m, B, threads, &pass, &e) != IDEFICS_OK;
        for (int i = 0; i < B && !rc; i++)
            rc = idf_state_create(m, ctx, kv, 1, &st[i], &e) != IDEFICS_OK;
        for (int rep = 0; rep < reps && !rc; rep++) {
            /* each sequence holds one token; then a warm-up step, then the timed steps */
            for (int i = 0; i < B && !rc; i++) {
                idf_state_reset(st[i]);
                seq[i] = (idf_seq){.st = st[i], .ids = &ids[i], .n = 1};
            }
            rc = rc || idf_state_eval_seqs(pass, seq, B, &e) != IDEFICS_OK;
            double t0 = 0, c0 = 0;
            for (int t = 0; t <= steps && !rc; t++) {
                if (t == 1) t0 = idf_time_ms(), c0 = cpu_ms();
                for (int i = 0; i < B; i++) {
                    seq[i].ids = &ids[(t + 1) * 64 + i];
                    seq[i].logits = lg + (size_t)i * V;
                }
                rc = idf_state_eval_seqs(pass, seq, B, &e) != IDEFICS_OK;
            }
            v[rep] = (double)B * steps / ((idf_time_ms() - t0) / 1e3);
            cpu_sum += (cpu_ms() - c0) / ((double)B * steps);
        }
        if (!rc) {
            qsort(v, (size_t)reps, sizeof *v, cmp_d);
            const double med = reps % 2 ? v[reps / 2] : 0.5 * (v[reps / 2 - 1] + v[reps / 2]);
            const double kv_el = kv == IDEFICS_KV_F32 ? 4 : kv == IDEFICS_KV_F16 ? 2 : (double)IDFX_KVQ8_BYTES / IDFX_KVQ8_BLOCK;
            out[k] = (par_result){
                .width = B,
                .agg_tok_s = med,
                .agg_lo = v[0],
                .agg_hi = v[reps - 1],
                .per_seq_tok_s = med / B,
                .step_ms = 1e3 * B / med,
                .peak_rss_mb = (double)idf_peak_rss_bytes() / 1048576.0,
                .anon_rss_mb = (double)idf_anon_rss_bytes() / 1048576.0,
                .cpu_ms_per_tok = cpu_sum / reps,
                .kv_mb = 2.0 * B * c->n_layers * (steps + 2) * (double)c->hidden * kv_el / 1048576.0,
            };
        } else {
            snprintf(err, err_size, "--parallel %d: %s", B, e.msg);
        }
        for (int i = 0; i < B; i++)
            idf_state_free(st[i]);
        idf_state_free(pass);
    }
    free(lg);
    free(ids);
    free(v);
    return rc;
}
