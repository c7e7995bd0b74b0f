/*
 * sched.c - idefics-bench --sched (sched.h): a queue of requests through one
 * idefics_batch (public API only). `width` sessions run at once; when one
 * finishes, the next request joins before the next step, as a server would
 * do it. Requests generate gen .. gen/2 tokens (staggered), so joins happen
 * while the others decode. Compared: prefill_chunk 0 (a joiner's prompt is prefilled in a pass
 * of its own at the start of a step: the others wait for it) against chunked
 * prefill (the prompt rides along the decode steps, at most `chunk` tokens
 * each: the others keep decoding, the joiner's first token comes later).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform.h"
#include "sched.h"

typedef struct req {
    idefics_session *s;
    double t_add, t_first, t_last, gap_max, gap_sum;
    int n_tok;
    bool done;
} req;

static bool on_tok(void *ud, int32_t tok, const char *piece) {
    (void)tok, (void)piece;
    req *r = ud;
    const double t = idf_time_ms();
    if (r->n_tok == 0) {
        r->t_first = t;
    } else {
        const double g = t - r->t_last;
        r->gap_sum += g;
        if (g > r->gap_max) r->gap_max = g;
    }
    r->t_last = t;
    r->n_tok++;
    return true;
}

static void on_done(void *ud, idefics_session *s, idefics_status st) {
    (void)s, (void)st;
    ((req *)ud)->done = true;
}

int bench_sched(idefics_model *m, int threads, int ctx, int width, int n_req, int prompt_tokens, int gen,
                const int *chunks, int n_chunks, sched_result *out, char *err, size_t err_size) {
    /* a text prompt of about prompt_tokens tokens: distinct words, so no request shares a prefix */
    char *text = malloc((size_t)prompt_tokens * 16 + 64);
    req *rq = calloc((size_t)n_req, sizeof *rq);
    if (!text || !rq) {
        free(text), free(rq);
        return snprintf(err, err_size, "--sched: out of memory"), 1;
    }
    int rc = 0;
    for (int ci = 0; ci < n_chunks && !rc; ci++) {
        idefics_batch_params bp = idefics_batch_default_params();
        bp.max_sessions = width;
        bp.n_threads = threads;
        bp.prefill_chunk = chunks[ci];
        idefics_batch *b = NULL;
        if (idefics_batch_create(m, &bp, &b, err, err_size) != IDEFICS_OK) {
            rc = 1;
            break;
        }
        idefics_session_params sp = idefics_session_default_params();
        sp.n_ctx = ctx;
        sp.n_threads = threads;
        for (int i = 0; i < n_req && !rc; i++) {
            memset(&rq[i], 0, sizeof rq[i]);
            rc = idefics_session_create(m, &sp, &rq[i].s, err, err_size) != IDEFICS_OK;
            size_t len = 0;
            for (int w = 0; w < prompt_tokens / 2 && !rc; w++)
                len += (size_t)sprintf(text + len, "%s%c%d", w ? " " : "", 'a' + (i + w) % 26, (i * 7919 + w) % 1000);
            if (!rc && idefics_add_user_turn(rq[i].s, text) != IDEFICS_OK)
                rc = snprintf(err, err_size, "--sched: %s", idefics_session_last_error(rq[i].s)) > 0;
        }
        idefics_generate_params gp = idefics_generate_default_params();
        gp.max_new_tokens = gen;
        gp.stop_at_eos = false;
        /* staggered lengths (gen .. gen/2), so sessions finish at different steps and a
         * joiner's prefill lands while the others are decoding, as on a server */
        idefics_generate_params gps[64];
        for (int i = 0; i < n_req && i < 64; i++) {
            gps[i] = gp;
            gps[i].max_new_tokens = gen - (i % width) * gen / (2 * width);
        }
        int next = 0, finished = 0;
        const double t0 = idf_time_ms();
        while (!rc && finished < n_req) {
            while (next < n_req && idefics_batch_n_sessions(b) < width) {
                rq[next].t_add = idf_time_ms();
                if (idefics_batch_add(b, rq[next].s, &gps[next < 64 ? next : 63], on_tok, on_done, &rq[next]) !=
                    IDEFICS_OK) {
                    rc = snprintf(err, err_size, "--sched: %s", idefics_batch_last_error(b)) > 0;
                    break;
                }
                next++;
            }
            if (!rc) idefics_batch_step(b);
            finished = 0;
            for (int i = 0; i < next; i++) finished += rq[i].done;
        }
        const double wall = (idf_time_ms() - t0) / 1e3;
        if (!rc) {
            sched_result *o = &out[ci];
            *o = (sched_result){.chunk = chunks[ci], .wall_s = wall};
            long toks = 0, gaps = 0;
            double gsum = 0;
            for (int i = 0; i < n_req; i++) {
                toks += rq[i].n_tok;
                const double tt = rq[i].t_first - rq[i].t_add;
                o->ttft_mean_ms += tt / n_req;
                if (tt > o->ttft_max_ms) o->ttft_max_ms = tt;
                if (rq[i].gap_max > o->gap_max_ms) o->gap_max_ms = rq[i].gap_max;
                gsum += rq[i].gap_sum;
                gaps += rq[i].n_tok > 1 ? rq[i].n_tok - 1 : 0;
            }
            o->gen_tok_s = (double)toks / wall;
            o->gap_mean_ms = gaps ? gsum / (double)gaps : 0;
        }
        idefics_batch_free(b);
        for (int i = 0; i < n_req; i++) {
            idefics_session_free(rq[i].s);
            rq[i].s = NULL;
        }
    }
    free(text);
    free(rq);
    return rc;
}
