/*
 * batch.c - continuous batching (include/idefics.h, "batched generation"):
 * an idefics_batch steps several sessions' generations together.
 *
 * Each session keeps its own state (forward.h: KV cache, images, position) and
 * its own backend, which by default prefills its prompt in a pass of its own.
 * The images of sessions joining in the same step are encoded together on
 * one joiner's state (encode_joiners), each into its own session's state. The batch owns one pass state (scratch for
 * max_sessions + prefill_chunk rows and a backend with its own threads) on
 * which every decode step runs: one row per member, every weight matmul once
 * for all rows (idf_state_eval_seqs), attention per member over its own cache.
 *
 * A step: (1) joiners are prepared (images, prompt prefix reuse) and, with
 * prefill_chunk 0, prefilled on their own state; (2) every member whose logits
 * are ready samples a token (its callback runs; a finished member is marked);
 * (3) one batched pass evaluates all new tokens, plus with prefill_chunk > 0
 * up to prefill_chunk prompt tokens of joiners; (4) finished members leave and
 * their on_done runs, last, so a callback may free its session.
 */
#include <stdio.h>
#include <string.h>

#include "batch.h"
#include "model.h"

#define BATCH_MAX_ROWS 64 /* forward.c IDF_EVAL_BATCH: rows of one pass */

typedef struct member {
    idefics_session *s;
    idf_gen *g;
    idefics_token_fn on_token;
    idefics_batch_done_fn on_done;
    void *ud;
    bool prepared; /* images encoded, cached prefix reused */
    bool finished;
    idefics_status st;
} member;

struct idefics_batch {
    idefics_model *model;
    idf_err err;
    idefics_batch_params p;
    idf_state *pass;
    member *m;   /* [max_sessions] */
    int n;
    idf_seq *seq; /* [max_sessions] */
    int *seq_of;  /* member index of each seq */
};

idefics_batch_params idefics_batch_default_params(void) {
    return (idefics_batch_params){.max_sessions = 8, .n_threads = 0, .prefill_chunk = 0};
}

idefics_status idefics_batch_create(idefics_model *model, const idefics_batch_params *params, idefics_batch **out,
                                    char *errbuf, size_t errbuf_size) {
    if (out) *out = NULL;
    idefics_batch_params p = params ? *params : idefics_batch_default_params();
    const char *bad = !model || !out                                         ? "model and out are required"
                      : p.max_sessions < 1 || p.max_sessions > BATCH_MAX_ROWS ? "max_sessions must be in 1..64"
                      : p.prefill_chunk < 0 || p.prefill_chunk > BATCH_MAX_ROWS - p.max_sessions
                          ? "prefill_chunk must be in 0..64 - max_sessions"
                      : p.n_threads < 0 ? "n_threads must be >= 0"
                                        : NULL;
    if (bad) {
        if (errbuf && errbuf_size) snprintf(errbuf, errbuf_size, "idefics_batch_create: %s", bad);
        return IDEFICS_ERR_INVALID_ARG;
    }
    const idf_alloc *al = &model->alloc;
    idefics_batch *b = idf_calloc(al, 1, sizeof *b);
    if (b) {
        b->m = idf_calloc(al, (size_t)p.max_sessions, sizeof *b->m);
        b->seq = idf_calloc(al, (size_t)p.max_sessions, sizeof *b->seq);
        b->seq_of = idf_calloc(al, (size_t)p.max_sessions, sizeof *b->seq_of);
    }
    if (!b || !b->m || !b->seq || !b->seq_of) {
        idefics_batch_free(b);
        if (errbuf && errbuf_size) snprintf(errbuf, errbuf_size, "idefics_batch_create: out of memory");
        return IDEFICS_ERR_OUT_OF_MEMORY;
    }
    b->model = model;
    b->p = p;
    idf_err e;
    idf_err_clear(&e);
    const idefics_status st = idf_state_create_pass(model, p.max_sessions + p.prefill_chunk, p.n_threads, &b->pass, &e);
    if (st) {
        idf_err_copy(&e, errbuf, errbuf_size);
        idefics_batch_free(b);
        return st;
    }
    *out = b;
    return IDEFICS_OK;
}

void idefics_batch_free(idefics_batch *b) {
    if (!b) return;
    const idf_alloc *al = &b->model->alloc;
    for (int i = 0; i < b->n; i++) {
        idf_gen_failed(b->m[i].s, IDEFICS_OK, NULL); /* nothing half-evaluated stays claimed */
        idf_gen_end(b->m[i].s, b->m[i].g, IDEFICS_ERR_CANCELLED);
    }
    idf_state_free(b->pass);
    idf_free(al, b->m);
    idf_free(al, b->seq);
    idf_free(al, b->seq_of);
    idf_free(al, b);
}

const char *idefics_batch_last_error(const idefics_batch *b) { return b ? b->err.msg : ""; }
int idefics_batch_n_sessions(const idefics_batch *b) { return b ? b->n : 0; }

static int find(const idefics_batch *b, const idefics_session *s) {
    for (int i = 0; b && s && i < b->n; i++)
        if (b->m[i].s == s) return i;
    return -1;
}

bool idefics_batch_contains(const idefics_batch *b, const idefics_session *s) { return find(b, s) >= 0; }

idefics_status idefics_batch_add(idefics_batch *b, idefics_session *s, const idefics_generate_params *params,
                                 idefics_token_fn on_token, idefics_batch_done_fn on_done, void *user_data) {
    if (!b) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&b->err);
    if (!s) return idf_errf(&b->err, IDEFICS_ERR_INVALID_ARG, "batch_add: session is NULL");
    if (idf_session_model(s) != b->model)
        return idf_errf(&b->err, IDEFICS_ERR_INVALID_ARG, "batch_add: the session belongs to another model");
    if (find(b, s) >= 0) return idf_errf(&b->err, IDEFICS_ERR_INVALID_ARG, "batch_add: the session is a member already");
    if (b->n == b->p.max_sessions)
        return idf_errf(&b->err, IDEFICS_ERR_INVALID_ARG, "batch_add: the batch is full (%d sessions)", b->n);
    idf_gen *g = NULL;
    const idefics_status st = idf_gen_begin(s, params, on_token, user_data, &g);
    if (st) return idf_errf(&b->err, st, "batch_add: %s", idefics_session_last_error(s));
    b->m[b->n++] = (member){.s = s, .g = g, .on_token = on_token, .on_done = on_done, .ud = user_data};
    return IDEFICS_OK;
}

static void drop(idefics_batch *b, int i) {
    memmove(&b->m[i], &b->m[i + 1], (size_t)(b->n - i - 1) * sizeof *b->m);
    b->n--;
}

idefics_status idefics_batch_remove(idefics_batch *b, idefics_session *s) {
    if (!b) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&b->err);
    const int i = find(b, s);
    if (i < 0) return idf_errf(&b->err, IDEFICS_ERR_INVALID_ARG, "batch_remove: the session is not a member");
    idf_gen_failed(s, IDEFICS_OK, NULL);
    idf_gen_end(s, b->m[i].g, IDEFICS_ERR_CANCELLED);
    drop(b, i);
    return IDEFICS_OK;
}

static void finish(member *mb, idefics_status st) {
    if (mb->finished) return;
    mb->finished = true;
    mb->st = st;
    idf_gen_end(mb->s, mb->g, st);
    mb->g = NULL;
}

/* Joiners of this step with images pending have them encoded together: one
 * idf_state_encode_images on the first such joiner's state (its scratch,
 * backend and threads; no scratch of the batch's own), each image's latents
 * and cross-attention K/V stored into its own session's state in that
 * state's KV type. It is only a faster way to the same slots: on any failure
 * (a joiner cancelled meanwhile, memory, the device) the chunks finished stay
 * and each joiner's idf_gen_prepare below encodes what is left on its own
 * state and reports its own error, as without batching. Each session's
 * image_encode_ms gets the whole shared encode, the time its images took. */
static void encode_joiners(idefics_batch *b) {
    int n_img = 0, n_join = 0;
    for (int i = 0; i < b->n; i++) {
        member *mb = &b->m[i];
        const float *const *px;
        if (mb->prepared || mb->finished || idf_session_cancelled(mb->s)) continue;
        const int k = idf_gen_pending_images(mb->s, &px);
        n_join += k > 0;
        n_img += k;
    }
    if (n_join < 2) return; /* one joiner's own prepare stacks its images already */
    const idf_alloc *al = &b->model->alloc;
    const float **px = idf_calloc(al, (size_t)n_img, sizeof *px);
    idf_state **dst = idf_calloc(al, (size_t)n_img, sizeof *dst);
    idf_state *enc = NULL;
    bool had[BATCH_MAX_ROWS] = {false}; /* member i has images in the list */
    int n = 0;
    for (int i = 0; px && dst && i < b->n; i++) {
        member *mb = &b->m[i];
        const float *const *p;
        if (mb->prepared || mb->finished || idf_session_cancelled(mb->s)) continue;
        const int k = idf_gen_pending_images(mb->s, &p);
        had[i] = k > 0;
        for (int j = 0; j < k; j++) {
            px[n] = p[j];
            dst[n++] = idf_session_state(mb->s);
        }
        if (k && !enc) enc = idf_session_state(mb->s);
    }
    if (px && dst && enc) {
        idf_err e;
        idf_err_clear(&e);
        const double t0 = idf_time_ms();
        const idefics_status st = idf_state_encode_images(enc, dst, px, n, NULL, &e);
        const double ms = idf_time_ms() - t0;
        if (st)
            idf_logf(&b->model->log, IDEFICS_LOG_DEBUG, "batch: joint image encode stopped (%s); joiners go on alone",
                     e.msg);
        else
            idf_logf(&b->model->log, IDEFICS_LOG_DEBUG, "batch: %d images of %d joiners encoded together, %.1f ms", n,
                     n_join, ms);
        for (int i = 0; i < b->n; i++)
            if (had[i]) idf_gen_images_encoded(b->m[i].s, ms);
    }
    idf_free(al, px);
    idf_free(al, dst);
}

idefics_status idefics_batch_step(idefics_batch *b) {
    if (!b) return IDEFICS_ERR_INVALID_ARG;
    idf_err_clear(&b->err);
    if (b->n == 0) return IDEFICS_OK;

    /* 1: joiners (their images first, encoded together) */
    encode_joiners(b);
    for (int i = 0; i < b->n; i++) {
        member *mb = &b->m[i];
        /* a cancel before the first token (joining, or prompt chunks under way) */
        if (!idf_gen_ready(mb->s) && idf_session_cancelled(mb->s)) {
            idf_gen_failed(mb->s, IDEFICS_ERR_CANCELLED, "generate: cancelled before the first token");
            finish(mb, IDEFICS_ERR_CANCELLED);
            continue;
        }
        if (mb->prepared) continue;
        idefics_status st = idf_gen_prepare(mb->s, mb->g);
        if (st == IDEFICS_OK && b->p.prefill_chunk == 0) st = idf_gen_prefill(mb->s, mb->g);
        if (st) finish(mb, st);
        else mb->prepared = true;
    }
    /* 2: one token for every member with logits */
    for (int i = 0; i < b->n; i++) {
        member *mb = &b->m[i];
        if (mb->finished || !idf_gen_ready(mb->s)) continue;
        bool done = false;
        const idefics_status st = idf_gen_sample(mb->s, mb->g, &done);
        if (done || st) finish(mb, st);
    }
    /* 3: one pass: every decoding member's new token first, then prompt
     * chunks of joiners (prefill_chunk > 0) in order of joining */
    int n_seq = 0, rows = 0, prefill_left = b->p.prefill_chunk;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < b->n; i++) {
            member *mb = &b->m[i];
            if (mb->finished) continue;
            const int32_t *ids, *img;
            const int pending = idf_gen_pending(mb->s, &ids, &img);
            int n = pending;
            /* pass 0: one sampled token (or a one-token prompt tail) */
            if (n <= 0 || (pass == 0) != (n == 1)) continue;
            if (pass == 1) {
                if (n > prefill_left) n = prefill_left;
                if (n <= 0) continue;
                prefill_left -= n;
            }
            b->seq[n_seq] = (idf_seq){.st = idf_session_state(mb->s), .ids = ids, .img = img, .n = n,
                                      .logits = n == pending ? idf_gen_logits_buf(mb->s) : NULL};
            b->seq_of[n_seq++] = i;
            rows += n;
        }
    (void)rows; /* <= max_sessions + prefill_chunk, the pass state's rows */
    if (n_seq) {
        const idefics_status st = idf_state_eval_seqs(b->pass, b->seq, n_seq, &b->err);
        for (int j = 0; j < n_seq; j++) {
            member *mb = &b->m[b->seq_of[j]];
            if (st) {
                idf_gen_failed(mb->s, st, b->err.msg);
                finish(mb, st);
            } else {
                idf_gen_evaluated(mb->s, b->seq[j].n, b->seq[j].logits != NULL);
            }
        }
    }
    /* 4: the finished leave; on_done last (it may free its session) */
    member done[BATCH_MAX_ROWS];
    int n_done = 0;
    for (int i = 0; i < b->n;) {
        if (b->m[i].finished) {
            done[n_done++] = b->m[i];
            drop(b, i);
        } else {
            i++;
        }
    }
    for (int i = 0; i < n_done; i++)
        if (done[i].on_done) done[i].on_done(done[i].ud, done[i].s, done[i].st);
    return IDEFICS_OK;
}

idefics_status idefics_batch_run(idefics_batch *b) {
    if (!b) return IDEFICS_ERR_INVALID_ARG;
    while (b->n > 0) IDF_FORWARD(idefics_batch_step(b));
    return IDEFICS_OK;
}
