/*
 * images.h - idefics-bench --images: time to encode N images batched
 * (idf_state_add_images: one stacked pass per IDF_VISION_BATCH images) vs
 * one by one (N idf_state_add_image calls), on the same state (issue 11).
 * Uses runtime internals.
 */
#ifndef IDF_BENCH_IMAGES_H
#define IDF_BENCH_IMAGES_H

#include "forward.h"
#include "model.h"

#define BENCH_MAX_IMAGES 8

/* Prints one line per N of ns[0..n_ns) (each in 1..BENCH_MAX_IMAGES): the
 * median of reps runs each way (alternating, so both see the same machine),
 * the speedup, and whether the batched latents are bitwise those of one by
 * one. 0, or 1 after printing the error. */
int bench_images(const idefics_model *m, idf_state *st, const int *ns, int n_ns, int reps);

#endif
