/*
 * batcher.h - batched generation for `idefics serve`: one thread owns an
 * idefics_batch (include/idefics.h, issue 11) and steps it; requests join from
 * their own threads. Every member's tokens come from one pass over the weights
 * per step. Callbacks (on_token, on_done) run on the batcher's thread.
 */
#ifndef IDEFICS_SERVER_BATCHER_H
#define IDEFICS_SERVER_BATCHER_H

#include "idefics.h"

typedef struct srv_batcher srv_batcher;

/* max_sessions: members at once (the server's slots); n_threads: 0 = all cores. */
idefics_status srv_batcher_start(idefics_model *model, int max_sessions, int n_threads, srv_batcher **out,
                                 char *err, size_t err_size);
/* Queue session for the next step. on_done is always called once, on the
 * batcher's thread (also when joining fails, with that status). */
void srv_batcher_submit(srv_batcher *b, idefics_session *s, const idefics_generate_params *p,
                        idefics_token_fn on_token, idefics_batch_done_fn on_done, void *user_data);
/* Finish the members and pending joins (their on_done gets IDEFICS_ERR_CANCELLED
 * for joins never started), then free. NULL is fine. */
void srv_batcher_stop(srv_batcher *b);

#endif
