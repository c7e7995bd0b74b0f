/*
 * batch.h - what the batch scheduler (batch.c) needs from a session: a
 * generation split into steps (begin, prepare, prefill, sample, evaluated,
 * end). Implemented at the end of session.c, which owns the session's fields;
 * idefics_generate is the same loop run on one session with its own state.
 * Private: not installed.
 */
#ifndef IDF_BATCH_H
#define IDF_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "forward.h"

typedef struct idf_gen idf_gen; /* one session's generation in progress */

/* The checks idefics_generate makes before evaluating; on success *out is the
 * generation (cancel flag cleared, timings zeroed). */
idefics_status idf_gen_begin(idefics_session *s, const idefics_generate_params *p, idefics_token_fn on_token,
                             void *user_data, idf_gen **out);
/* Encode the session's new images (its own state) and drop the cached tail
 * the conversation no longer agrees with. */
idefics_status idf_gen_prepare(idefics_session *s, idf_gen *g);
/* The session's images not encoded yet: their count, *px their pixels (valid
 * until the session changes). */
int idf_gen_pending_images(idefics_session *s, const float *const **px);
/* Some of them were encoded into the session's state by a batched encode
 * (idf_state_encode_images) that took ms: the session catches up. */
void idf_gen_images_encoded(idefics_session *s, double ms);
/* Evaluate all pending prompt tokens on the session's own state. */
idefics_status idf_gen_prefill(idefics_session *s, idf_gen *g);
/* Tokens still to evaluate (prompt tail, or the last sampled token). */
int idf_gen_pending(const idefics_session *s, const int32_t **ids, const int32_t **img);
/* The logits of the last token are there: a token may be sampled. */
bool idf_gen_ready(const idefics_session *s);
/* Sample one token, append it, stream it. *done: the generation is over,
 * with the status returned (as idefics_generate would return it). */
idefics_status idf_gen_sample(idefics_session *s, idf_gen *g, bool *done);
/* n pending tokens were evaluated by a batched pass; logits_valid: the pass
 * wrote the last one's logits into idf_gen_logits_buf(s). */
void idf_gen_evaluated(idefics_session *s, int n, bool logits_valid);
/* A batched pass that held this session failed, or it leaves early: its
 * evaluated prefix stays. msg (with st) becomes the session's error text. */
void idf_gen_failed(idefics_session *s, idefics_status st, const char *msg);
float *idf_gen_logits_buf(idefics_session *s);
idf_state *idf_session_state(idefics_session *s);
const idefics_model *idf_session_model(const idefics_session *s);
bool idf_session_cancelled(const idefics_session *s);
/* Finish: timings, (finish reason), free g. */
void idf_gen_end(idefics_session *s, idf_gen *g, idefics_status st);

#endif /* IDF_BATCH_H */
