/*
 * quantize.c - parallel tensor encoding for the converter (quantize.h).
 *
 * Work is cut into blocks of whole row tiles and shared out on an idf_pool. A
 * block runs the scalar reference on its rows with dst advanced to its first
 * tile, which is exactly the byte range the reference would have written for
 * those rows in one serial call, so the output is the reference's, bit for bit.
 */
#include "quantize.h"

#include <string.h>

/* About this many weights per task: large enough that the pool's per-task cost
 * vanishes, small enough that two threads finish a 1280-wide tensor together. */
#define QUANT_TASK_WEIGHTS (64 * 1024)
/* Tasks per slab per thread; progress is reported between slabs. */
#define QUANT_SLAB_TASKS_PER_THREAD 8

typedef struct quant_ctx {
    int type;
    const float *w;
    int64_t rows, k;
    uint32_t tile_rows;
    int search;
    uint8_t *dst;
    uint64_t tile_bytes;
    int64_t tiles_per_task;
    int64_t n_tiles;
    int64_t first_task; /* task index offset of the current slab */
} quant_ctx;

static void quant_task(void *ctx, int64_t index, int thread_id) {
    (void)thread_id;
    const quant_ctx *c = ctx;
    int64_t t0 = (c->first_task + index) * c->tiles_per_task;
    int64_t t1 = t0 + c->tiles_per_task;
    if (t1 > c->n_tiles) t1 = c->n_tiles;
    int64_t r0 = t0 * (int64_t)c->tile_rows;
    int64_t r1 = t1 * (int64_t)c->tile_rows;
    if (r1 > c->rows) r1 = c->rows; /* the reference pads the last tile itself */
    const float *src = c->w + r0 * c->k;
    uint8_t *dst = c->dst + (uint64_t)t0 * c->tile_bytes;
    if (c->type == IDFX_TYPE_Q4)
        idfx_quantize_q4_ref(src, r1 - r0, c->k, c->tile_rows, c->search, dst);
    else
        idfx_quantize_q8_ref(src, r1 - r0, c->k, c->tile_rows, c->search, dst);
}

void idf_quantize_rowtile(idf_pool *pool, int type, const float *w, int64_t rows, int64_t k, uint32_t tile_rows,
                          int search, void *dst, idf_quant_progress_fn progress, void *progress_ud) {
    const uint32_t qb = type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
    quant_ctx c = {
        .type = type,
        .w = w,
        .rows = rows,
        .k = k,
        .tile_rows = tile_rows,
        .search = search,
        .dst = dst,
        .tile_bytes = (uint64_t)(k / IDFX_QK) * tile_rows * (IDFX_SCALE_BYTES + qb),
        .n_tiles = (rows + tile_rows - 1) / tile_rows,
    };
    int64_t tile_weights = (int64_t)tile_rows * k;
    c.tiles_per_task = QUANT_TASK_WEIGHTS / (tile_weights > 0 ? tile_weights : 1);
    if (c.tiles_per_task < 1) c.tiles_per_task = 1;
    int64_t n_tasks = (c.n_tiles + c.tiles_per_task - 1) / c.tiles_per_task;
    int64_t slab = (int64_t)idf_pool_size(pool) * QUANT_SLAB_TASKS_PER_THREAD;
    if (!progress) slab = n_tasks;
    for (int64_t first = 0; first < n_tasks; first += slab) {
        int64_t n = n_tasks - first < slab ? n_tasks - first : slab;
        c.first_task = first;
        idf_pool_run(pool, n, quant_task, &c);
        if (progress) {
            int64_t done = (first + n) * c.tiles_per_task * (int64_t)tile_rows;
            progress(progress_ud, done < rows ? done : rows, rows);
        }
    }
}

/* ---------------------------------------------------- element conversion */

#define CONV_TASK_ELEMS (1u << 20)

typedef struct conv_ctx {
    const void *src;
    void *dst;
    uint64_t n;
    idf_src_dtype dt;
} conv_ctx;

static void f16_task(void *ctx, int64_t index, int thread_id) {
    (void)thread_id;
    const conv_ctx *c = ctx;
    uint64_t i0 = (uint64_t)index * CONV_TASK_ELEMS, i1 = i0 + CONV_TASK_ELEMS;
    if (i1 > c->n) i1 = c->n;
    const float *s = c->src;
    uint8_t *d = c->dst;
    for (uint64_t i = i0; i < i1; i++) idf_wr16(d + 2 * i, idfx_fp32_to_fp16(s[i]));
}

void idf_convert_f32_to_f16(idf_pool *pool, const float *src, uint64_t n, uint8_t *dst) {
    conv_ctx c = {.src = src, .dst = dst, .n = n};
    idf_pool_run(pool, (int64_t)((n + CONV_TASK_ELEMS - 1) / CONV_TASK_ELEMS), f16_task, &c);
}

static void f32_task(void *ctx, int64_t index, int thread_id) {
    (void)thread_id;
    const conv_ctx *c = ctx;
    uint64_t i0 = (uint64_t)index * CONV_TASK_ELEMS, i1 = i0 + CONV_TASK_ELEMS;
    if (i1 > c->n) i1 = c->n;
    const uint8_t *s = c->src;
    float *d = c->dst;
    switch (c->dt) {
    case IDF_SRC_F32:
        for (uint64_t i = i0; i < i1; i++) {
            uint32_t bits = idf_rd32(s + 4 * i);
            memcpy(&d[i], &bits, 4);
        }
        break;
    case IDF_SRC_F16:
        for (uint64_t i = i0; i < i1; i++) d[i] = idfx_fp16_to_fp32(idf_rd16(s + 2 * i));
        break;
    case IDF_SRC_BF16:
        for (uint64_t i = i0; i < i1; i++) d[i] = idfx_bf16_to_fp32(idf_rd16(s + 2 * i));
        break;
    }
}

void idf_convert_to_f32(idf_pool *pool, idf_src_dtype dt, const uint8_t *src, uint64_t n, float *dst) {
    conv_ctx c = {.src = src, .dst = dst, .n = n, .dt = dt};
    idf_pool_run(pool, (int64_t)((n + CONV_TASK_ELEMS - 1) / CONV_TASK_ELEMS), f32_task, &c);
}
