/*
 * forward.h - the model's forward pass, as the session layer sees it.
 *
 * An idf_state is one session's compute state: the self-attention KV cache,
 * scratch buffers sized from the config, and the encoded images (perceiver
 * latents plus each gated cross-attention block's K/V for them, computed once
 * per image and kept, never recomputed per token).
 *
 * Owned by the forward-pass code (model.c, forward.c, backend_*.c); used by
 * session.c. Not thread-safe: one thread per state.
 */
#ifndef IDF_FORWARD_H
#define IDF_FORWARD_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

typedef struct idf_state idf_state;

idefics_status idf_state_create(const idefics_model *model, int n_ctx, idefics_kv_type kv_type, int n_threads,
                                idf_state **out, idf_err *err);
void idf_state_free(idf_state *s);

/* Back to an empty context with no images (keeps the buffers). */
void idf_state_reset(idf_state *s);

/* Encode one preprocessed image, pixels [channels, image_size, image_size] fp32,
 * already normalised (runtime/image.h): vision tower -> perceiver -> cross-attn
 * K/V for every gated block. *slot receives the image's index (0, 1, ...),
 * which idf_state_eval's img[] refers to. */
idefics_status idf_state_add_image(idf_state *s, const float *pixels, int *slot, idf_err *err);

/* Images a state's vision scratch holds at once (low_memory states: 1). */
#define IDF_VISION_BATCH 4
/* Encode n images as above, up to IDF_VISION_BATCH at a time: their rows
 * stacked, so every weight matmul of the vision tower, the perceiver and the
 * cross-attention K/V projections runs once for the chunk (attention stays per
 * image). The result equals n calls of idf_state_add_image (same slots in
 * order, slots[i] receives image i's; slots may be NULL). On failure the
 * images of the chunks already finished stay added (idf_state_n_images tells
 * how many) and the failing chunk adds none. */
idefics_status idf_state_add_images(idf_state *s, const float *const *pixels, int n, int *slots, idf_err *err);
/* The same for images of several states of s's model, computed on s's
 * scratch and backend (a batch's joiners: batch.c): image i goes to state
 * dst[i] (s among them or not), into its next slot in list order, its cross
 * K/V stored in dst[i]'s KV type. dst NULL: all to s. Cancelled when the flag
 * of s or of any dst[i] of the chunk is set (then that chunk adds nothing to
 * any state). The dst states are used by this call only. */
idefics_status idf_state_encode_images(idf_state *s, idf_state *const *dst, const float *const *pixels, int n,
                                       int *slots, idf_err *err);
int idf_state_n_images(const idf_state *s);
/* The perceiver output of an image slot, [n_latents, vision_embed_dim] (for tests). */
const float *idf_state_image_latents(const idf_state *s, int slot);
/* Save / load the state (KV cache positions 0 .. n_past-1, image slots with
 * their latents and cross-attention K/V) as bytes, for session snapshots.
 * save: size must be idf_state_save_bytes(s). load: into a state of the same
 * model and kv_type (the caller checks), n_past <= n_ctx; on a memory failure
 * the state is unchanged; on a device failure it is emptied (n_past 0). */
size_t idf_state_save_bytes(const idf_state *s);
idefics_status idf_state_save(idf_state *s, void *dst, size_t size, idf_err *err);
idefics_status idf_state_load(idf_state *s, const void *src, size_t size, int n_past, int n_img, idf_err *err);
idefics_kv_type idf_state_kv_type(const idf_state *s);

/* Evaluate n tokens at positions n_past .. n_past + n - 1 and append them to the
 * KV cache. img[i] is the image slot token i may attend to (the most recent
 * image, processor semantics), or -1 for none (cross-attention output zeroed).
 * logits: n * n_vocab floats when all_logits, else n_vocab for the last token.
 * Fails with IDEFICS_ERR_CONTEXT_FULL (state unchanged) when n_past + n > n_ctx,
 * and IDEFICS_ERR_CANCELLED when *cancel becomes non-zero (checked per layer). */
idefics_status idf_state_eval(idf_state *s, const int32_t *ids, const int32_t *img, int n, float *logits,
                              bool all_logits, idf_err *err);
int idf_state_n_past(const idf_state *s);
/* The name of the backend this state computes with (e.g. "avx512vnni", "cpu-ref"). */
const char *idf_state_backend_name(const idf_state *s);
/* The state's own backend (benchmarks read a backend's counters through it). */
struct idf_backend *idf_state_backend(idf_state *s);
int idf_state_n_ctx(const idf_state *s);
/* Drop cached positions >= n_past (e.g. to undo a failed turn). */
void idf_state_truncate(idf_state *s, int n_past);
/* A flag polled during eval; set it from any thread to cancel. NULL = none. */
void idf_state_set_cancel_flag(idf_state *s, const atomic_int *flag);

/* ---- batched passes (issue 11)
 *
 * A pass state holds the scratch and the backend of a batched pass, for up to
 * `rows` token rows (<= 64), and no KV cache or images of its own. */
idefics_status idf_state_create_pass(const idefics_model *model, int rows, int n_threads, idf_state **out,
                                     idf_err *err);
/* Rows of a pass state (or the chunk size of an ordinary state). */
int idf_state_max_rows(const idf_state *s);

/* One sequence of a batched pass: n tokens evaluated at positions n_past .. of
 * its own state st (its KV cache and image slots), img[i] as in idf_state_eval
 * (NULL = none). logits: n_vocab floats for the last token, or NULL. */
typedef struct idf_seq {
    idf_state *st;
    const int32_t *ids, *img;
    int n;
    float *logits;
} idf_seq;

/* Evaluate several sequences in one pass on the pass state s: every weight
 * matmul runs once over all rows (sum of n <= idf_state_max_rows(s)),
 * attention per sequence over its own cache. Distinct states of s's model.
 * On success each st->n_past grows by its n; on failure no n_past changes
 * (the caches past n_past hold stale rows, overwritten later). A sequence's
 * state is used by this call only: its own backend is synchronised first. */
idefics_status idf_state_eval_seqs(idf_state *s, const idf_seq *seqs, int n_seqs, idf_err *err);

#endif /* IDF_FORWARD_H */
