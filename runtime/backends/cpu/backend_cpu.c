/*
 * backend_cpu.c - the fast CPU backend (backend.h), complete: every op.
 *
 * Matmuls against Q4/Q8 tiled (ROWTILE, GROUPTILE) weights quantize the activations once per
 * call to int8 in groups of 32 (cpu/cpu_kernels.h idf_qact) and run integer
 * dot products in a per-ISA tile kernel (cpu/q4_*.c), picked at creation from
 * platform/cpu_features.h: AVX-512 VNNI, AVX2, NEON dotprod, NEON, or scalar.
 * The environment variable IDEFICS_CPU_ISA (scalar|avx2|avx512|neon|
 * neon-dotprod) caps the choice, and idf_backend_cpu_create_isa() asks for one
 * level, so tests run every path a machine can execute.
 *
 * Work sharing: the weight's tiles are split into tasks of a few tiles each
 * on the backend's persistent idf_pool; within a task, each tile is run
 * against the activation rows in blocks of the kernel's q4_max_nx/q8_max_nx
 * (register blocking: 4-8 rows), so a tile read from memory once serves a
 * chunk of activation rows from L1; the rows are taken in chunks that fit L2
 * (QACT_CHUNK_BYTES) and the task's tiles pass over each chunk in turn. fp32/fp16 weights use the
 * same split with rows converted to fp32 in per-thread scratch.
 * Scratch (quantized activations, per-thread rows) grows to the largest call
 * and is reused; it lives in the backend context.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu_kernels.h"
#include "cpu_features.h"
#include "quant.h"

typedef struct cpu_ctx {
    idf_alloc alloc;
    idf_pool *pool;
    int n_threads;
    idf_cpu_kernels kern;
    idf_cpu_kernels scalar; /* for tile sizes the SIMD kernel does not take */
    /* quantized activations */
    int8_t *aq;
    float *ad;
    int32_t *ac, *ac4, *ac1;
    size_t aq_cap, ad_cap; /* elements of aq; of ad (ac has 8 per ad, ac4 4, ac1 1) */
    /* per-thread fp32 scratch */
    float *scratch;
    size_t scratch_per;
    /* two-level activations (act2_row): residual rows and the doubled output */
    int act2;           /* ACT2_* */
    char act2_names[128]; /* ACT2_NAMED: comma-separated substrings of weight names */
    float *rx, *ry;
    size_t rx_cap, ry_cap;
    /* attention: decode's split-K partials and scaled queries */
    float *att;
    size_t att_cap;
} cpu_ctx;

/* Activation precision of Q4/Q8 matmuls (issue 11, point 6). One int8 level
 * (x ~= d q per group of 32) costs about as much KL divergence as Q8 weights
 * and adds 12% to Q4's on the demo model. Two levels quantize the rounding
 * residual too (x ~= d1 q1 + d2 q2, |x - ...| <= d1 / 254 / 2): the residual
 * rows go through the same integer kernels as extra activation rows, so a
 * memory-bound call (decode) costs the same and a compute-bound one twice
 * the integer work. IDEFICS_CPU_ACT=int8 | int8x2 | int8x2:NAME,NAME (only
 * weights whose name holds one of the substrings) overrides the default. */
enum { ACT2_OFF = 0, ACT2_ALL, ACT2_NAMED };
/* Measured (tools/kl-table, docs in the issue-11 note): on the demo model one
 * level adds 12.4% to the KL divergence of Q4 weights; two levels on every
 * matmul add 0%, on the decoder MLPs' down projections alone (whose input
 * silu(gate) * up is heavy-tailed, so the group scale is set by an outlier)
 * 6%, on every other text matmul nothing more; the rest is spread over the
 * vision tower. So the default keeps only the down projections in two levels:
 * a third of the MLP's integer work doubles in compute-bound calls. */
#define ACT2_DEFAULT ACT2_NAMED
#define ACT2_DEFAULT_NAMES "mlp.down_proj"

/* ------------------------------------------------------------- scratch */

static idefics_status ensure_scratch(cpu_ctx *c, size_t per) {
    if (per <= c->scratch_per)
        return IDEFICS_OK;
    size_t total;
    if (!idf_mul_size(per, (size_t)c->n_threads, &total))
        return IDEFICS_ERR_OUT_OF_MEMORY;
    float *p = idf_calloc(&c->alloc, total, sizeof(float));
    if (!p)
        return IDEFICS_ERR_OUT_OF_MEMORY;
    idf_free(&c->alloc, c->scratch);
    c->scratch = p;
    c->scratch_per = per;
    return IDEFICS_OK;
}

/* Groups per quantized activation row in scratch (idf_qact.ldg). */
static int64_t qact_ldg(int64_t k) {
    const int64_t ng = k / IDFX_QK;
    return ng % 2 ? ng : ng + 1;
}

static idefics_status ensure_qact(cpu_ctx *c, int64_t n, int64_t k) {
    size_t nq, nd, nc;
    if (!idf_mul_size((size_t)n, (size_t)qact_ldg(k) * IDFX_QK, &nq))
        return IDEFICS_ERR_OUT_OF_MEMORY;
    nd = nq / IDFX_QK;
    if (!idf_mul_size(nd, 8, &nc))
        return IDEFICS_ERR_OUT_OF_MEMORY;
    if (nq > c->aq_cap) {
        int8_t *q = idf_malloc(&c->alloc, nq);
        if (!q)
            return IDEFICS_ERR_OUT_OF_MEMORY;
        idf_free(&c->alloc, c->aq);
        c->aq = q;
        c->aq_cap = nq;
    }
    if (nd > c->ad_cap) {
        float *d = idf_malloc(&c->alloc, nd * sizeof(float));
        int32_t *cr = idf_malloc(&c->alloc, nc * sizeof(int32_t));
        int32_t *cr4 = idf_malloc(&c->alloc, nc / 2 * sizeof(int32_t));
        int32_t *cr1 = idf_malloc(&c->alloc, nd * sizeof(int32_t));
        if (!d || !cr || !cr4 || !cr1) {
            idf_free(&c->alloc, d);
            idf_free(&c->alloc, cr);
            idf_free(&c->alloc, cr4);
            idf_free(&c->alloc, cr1);
            return IDEFICS_ERR_OUT_OF_MEMORY;
        }
        idf_free(&c->alloc, c->ad);
        idf_free(&c->alloc, c->ac);
        idf_free(&c->alloc, c->ac4);
        idf_free(&c->alloc, c->ac1);
        c->ad = d;
        c->ac = cr;
        c->ac4 = cr4;
        c->ac1 = cr1;
        c->ad_cap = nd;
    }
    return IDEFICS_OK;
}

/* Below this many multiply-adds the pool's wake-up costs more than the work. */
#define PARALLEL_MIN_MACS (1 << 15)

static idf_pool *pool_for(const cpu_ctx *c, int64_t macs) {
    return macs < PARALLEL_MIN_MACS ? NULL : c->pool;
}

/* ------------------------------------------------------- quantized matmul */

#define QMM_MAX_TASKS 96

typedef struct qmm_job {
    cpu_ctx *c;
    const idf_weight *w;
    const float *bias, *x;
    int64_t n, ldy;
    float *y;
    idf_qact act;
    idf_cpu_tile_fn fn;
    idf_cpu_rows16_fn rows16; /* 16-row GEMM passes (NULL: tile by tile) */
    idf_cpu_tile_sum2_fn sum2; /* decode's two levels (rows 0 and 1) summed in one pass; y is the output */
    int nx_max;       /* activation rows per tile call */
    int64_t x_chunk;  /* activation rows per pass over a task's tiles */
    int64_t tiles_per_task, n_tiles; /* tiles_per_task 0: the guided split in tile_end */
    uint64_t tile_bytes;
    /* guided split for memory-bound calls (tile_end[task], ascending): big
     * tasks first, small ones last, so the threads finish together */
    int64_t tile_end[QMM_MAX_TASKS];
} qmm_job;

static void quant_task(void *ctx, int64_t i, int tid) {
    (void)tid;
    qmm_job *j = ctx;
    j->c->kern.quant(j->x + i * j->w->cols, i, 1, &j->act);
}

/* Tile t of the weight, viewed from its row rb (0, or 8.. for the 16-row
 * pass): the scale and quant pointers and per-group steps of its layout
 * (quant.h: ROWTILE runs all scales then all quants; GROUPTILE keeps each
 * group's scales and quants together). */
static idf_tile tile_at(const qmm_job *j, int64_t t, int rb) {
    const int R = (int)j->w->tile_rows;
    const int64_t qb = j->w->type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
    const uint8_t *tile = (const uint8_t *)j->w->data + (uint64_t)t * j->tile_bytes;
    idf_tile tl = {.R = R};
    if (j->w->layout == IDFX_LAYOUT_GROUPTILE) {
        tl.s = tile + rb * 2;
        tl.q = tile + R * 2 + rb * qb;
        tl.s_step = tl.q_step = R * (2 + qb);
    } else {
        tl.s = tile + rb * 2;
        tl.q = tile + j->act.ng * R * 2 + rb * qb;
        tl.s_step = R * 2;
        tl.q_step = R * qb;
    }
    return tl;
}

static void qmm_task(void *ctx, int64_t task, int tid) {
    (void)tid;
    const qmm_job *j = ctx;
    const int R = (int)j->w->tile_rows;
    int64_t t0, t1;
    if (j->tiles_per_task) {
        t0 = task * j->tiles_per_task;
        t1 = t0 + j->tiles_per_task < j->n_tiles ? t0 + j->tiles_per_task : j->n_tiles;
    } else {
        t0 = task ? j->tile_end[task - 1] : 0;
        t1 = j->tile_end[task];
    }
    if (j->sum2) { /* one decode row in two levels (activation rows 0 and 1), summed in the kernel */
        for (int64_t t = t0; t < t1; t++) {
            const idf_tile tl = tile_at(j, t, 0);
            const int64_t r0 = t * R;
            const int valid = (int)(j->w->rows - r0 < R ? j->w->rows - r0 : R);
            j->sum2(&tl, j->act.ng, &j->act, 0, 1, j->y + r0, valid, j->bias ? j->bias + r0 : NULL);
        }
        return;
    }
    /* Activation rows in chunks that stay in L2 while the task's tiles pass
     * over them; each tile (a few KB) stays in L1 across the chunk's blocks. */
    for (int64_t c0 = 0; c0 < j->n; c0 += j->x_chunk) {
        const int64_t c1 = c0 + j->x_chunk < j->n ? c0 + j->x_chunk : j->n;
        for (int64_t t = t0; t < t1; t++) {
            const idf_tile tl = tile_at(j, t, 0);
            const int64_t r0 = t * R;
            const int valid = (int)(j->w->rows - r0 < R ? j->w->rows - r0 : R);
            if (j->rows16 && R == 8 && t + 1 < t1 && j->w->rows - r0 >= 16) {
                /* two adjacent full 8-row tiles as one 16-row pass */
                const idf_tile nxt = tile_at(j, t + 1, 0);
                for (int64_t i = c0; i < c1; i += j->nx_max) {
                    const int nx = (int)(c1 - i < j->nx_max ? c1 - i : j->nx_max);
                    j->rows16(&tl, &nxt, j->act.ng, &j->act, i, nx, j->y + i * j->ldy + r0, j->ldy,
                              j->bias ? j->bias + r0 : NULL);
                }
                t++;
                continue;
            }
            if (j->rows16 && R % 16 == 0 && valid == R) {
                /* each 16 rows of a full tile: its rows rb.. and rb + 8.. */
                for (int rb = 0; rb < R; rb += 16) {
                    const idf_tile ha = tile_at(j, t, rb), hb = tile_at(j, t, rb + 8);
                    for (int64_t i = c0; i < c1; i += j->nx_max) {
                        const int nx = (int)(c1 - i < j->nx_max ? c1 - i : j->nx_max);
                        j->rows16(&ha, &hb, j->act.ng, &j->act, i, nx, j->y + i * j->ldy + r0 + rb, j->ldy,
                                  j->bias ? j->bias + r0 + rb : NULL);
                    }
                }
                continue;
            }
            for (int64_t i = c0; i < c1; i += j->nx_max) {
                const int nx = (int)(c1 - i < j->nx_max ? c1 - i : j->nx_max);
                j->fn(&tl, j->act.ng, &j->act, i, nx, j->y + i * j->ldy + r0, j->ldy, valid,
                      j->bias ? j->bias + r0 : NULL);
            }
        }
    }
}

/* Bytes of quantized activations (q, corr, d) a chunk of rows may occupy:
 * about a third of a Zen 5 core's L2 (1 MB), half of a phone core's, leaving
 * room for the task's weight tiles (measured on Zen 5: 256-384 KB best for
 * k = 5120 and 11008; no chunking ran the k = 11008 down projection 15% slower). */
#define QACT_CHUNK_BYTES (384 * 1024)

/* Smallest task of the guided (decode) split: ~2-4 us of streaming. */
#define QMM_MIN_TASK_BYTES (64 * 1024)

/* Quantize rows [i0, i1) of x, and with two levels their residuals as rows n + i. */
typedef struct res_job {
    qmm_job *j;
    int64_t n;
    float *rx; /* [n, k] residual scratch */
    bool two;
} res_job;

static void res_task(void *ctx, int64_t i, int tid) {
    (void)tid;
    res_job *r = ctx;
    qmm_job *j = r->j;
    const int64_t k = j->w->cols;
    j->c->kern.quant(j->x + i * k, i, 1, &j->act);
    if (!r->two)
        return;
    const int8_t *q = j->act.q + i * j->act.ldg * IDFX_QK;
    const float *d = j->act.d + i * j->act.ldg;
    const float *x = j->x + i * k;
    float *e = r->rx + i * k;
    for (int64_t g = 0; g < k / IDFX_QK; g++)
        for (int t = 0; t < IDFX_QK; t++)
            e[g * IDFX_QK + t] = x[g * IDFX_QK + t] - d[g] * (float)q[g * IDFX_QK + t];
    j->c->kern.quant(e, r->n + i, 1, &j->act);
}

static bool act2_for(const cpu_ctx *c, const idf_weight *w) {
    if (c->act2 != ACT2_NAMED)
        return c->act2 == ACT2_ALL;
    if (!w->name)
        return false;
    for (const char *p = c->act2_names; *p;) {
        const char *e = strchr(p, ',');
        const size_t len = e ? (size_t)(e - p) : strlen(p);
        char part[64];
        if (len && len < sizeof part) {
            memcpy(part, p, len);
            part[len] = '\0';
            if (strstr(w->name, part))
                return true;
        }
        p += len + (e != NULL);
    }
    return false;
}

static idefics_status grow_f(cpu_ctx *c, float **p, size_t *cap, size_t n) {
    if (n <= *cap)
        return IDEFICS_OK;
    float *q = idf_malloc(&c->alloc, n * sizeof(float));
    if (!q)
        return IDEFICS_ERR_OUT_OF_MEMORY;
    idf_free(&c->alloc, *p);
    *p = q;
    *cap = n;
    return IDEFICS_OK;
}

static idefics_status matmul_q(cpu_ctx *c, const idf_weight *w, const float *bias, const float *x, int64_t n_in,
                               float *y_out, int64_t ldy_out) {
    const int64_t k = w->cols, R = w->tile_rows, m = w->rows;
    const bool two = act2_for(c, w);
    /* with two levels the kernels see 2n rows (x's levels, then the residuals'),
     * written to ry and summed into y below; or, for one row where the kernel
     * set has it, both levels go through one pass over the weights (sum2) */
    const int64_t n = two ? 2 * n_in : n_in;
    float *y = y_out;
    int64_t ldy = ldy_out;
    const float *bias_in = bias;
    const bool sum2 = two && n_in == 1 && w->type == IDFX_TYPE_Q4 && c->kern.q4_tile_sum2 &&
                      c->kern.q4_sum2_min_r > 0 && R % c->kern.q4_sum2_min_r == 0;
    if (two) {
        size_t nx;
        if (!idf_mul_size((size_t)n_in, (size_t)k, &nx))
            return IDEFICS_ERR_OUT_OF_MEMORY;
        IDF_FORWARD(grow_f(c, &c->rx, &c->rx_cap, nx));
    }
    if (two && !sum2) {
        size_t ny;
        if (!idf_mul_size((size_t)n, (size_t)m, &ny))
            return IDEFICS_ERR_OUT_OF_MEMORY;
        IDF_FORWARD(grow_f(c, &c->ry, &c->ry_cap, ny));
        y = c->ry;
        ldy = m;
        bias = NULL; /* added once, in the sum */
    }
    IDF_FORWARD(ensure_qact(c, n, k));
    qmm_job j = {.c = c, .w = w, .bias = bias, .x = x, .n = n, .ldy = ldy, .y = y};
    if (sum2)
        j.sum2 = c->kern.q4_tile_sum2;
    j.act = (idf_qact){.q = c->aq,
                       .d = c->ad,
                       .corr = c->ac,
                       .corr4 = c->ac4,
                       .corr1 = c->ac1,
                       .k = k,
                       .ng = k / IDFX_QK,
                       .ldg = qact_ldg(k)};
    const bool q4 = w->type == IDFX_TYPE_Q4;
    const int min_r = q4 ? c->kern.q4_min_r : c->kern.q8_min_r;
    const idf_cpu_kernels *kk = R % min_r == 0 ? &c->kern : &c->scalar;
    j.fn = q4 ? kk->q4_tile : kk->q8_tile;
    /* The 16-row pass is for GEMM; one or two rows stream the weights at the
     * memory bound through q4_tile's prefetching one-row kernel. */
    j.rows16 = q4 && n > 2 && kk == &c->kern ? kk->q4_rows16 : NULL;
    j.nx_max = q4 ? kk->q4_max_nx : kk->q8_max_nx;
    if (j.nx_max <= 0 || j.nx_max > IDF_CPU_NX_MAX)
        j.nx_max = IDF_CPU_NX;
    /* Bytes per row: k of int8, k + k / 2 + k / 8 of int32 corrections (corr,
     * corr4, corr1), k / 8 of fp32 scales. Chunks
     * of equal size (in whole register blocks), so none is a short remainder
     * that passes over every tile again for a few rows. */
    int64_t chunk = QACT_CHUNK_BYTES / (k * 2 + k / 2 + k / 4);
    chunk = chunk < j.nx_max ? j.nx_max : chunk;
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    j.x_chunk = (n + n_chunks - 1) / n_chunks;
    j.x_chunk = (j.x_chunk + j.nx_max - 1) / j.nx_max * j.nx_max;
    j.n_tiles = (w->rows + R - 1) / R;
    j.tile_bytes = (uint64_t)j.act.ng * (uint64_t)R * (IDFX_SCALE_BYTES + (q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES));
    const int64_t macs = n * w->rows * k;
    idf_pool *pool = pool_for(c, macs);
    /* Quantizing x costs one pass over n*k floats: worth the pool only for chunks. */
    if (two) {
        res_job rj = {&j, n_in, c->rx, true};
        idf_pool_run(n >= 4 ? pool : NULL, n_in, res_task, &rj);
    } else {
        idf_pool_run(n >= 4 ? pool : NULL, n, quant_task, &j);
    }
    int64_t n_tasks;
    if (pool && n <= 2) {
        /* Decode streams the weights once at the memory bound, where equal
         * tasks leave one thread idle for half a task at the end of each of
         * ~250 calls a token. Guided split instead: each task takes 1/(2T) of
         * what is left, down to QMM_MIN_TASK_BYTES (the prefetch needs a run
         * to get ahead), so the last tasks are small. */
        const int64_t min_tiles = (int64_t)(QMM_MIN_TASK_BYTES / j.tile_bytes) + 1;
        int64_t done = 0;
        n_tasks = 0;
        while (done < j.n_tiles) {
            int64_t sz = (j.n_tiles - done) / (2 * (int64_t)c->n_threads);
            sz = sz < min_tiles ? min_tiles : sz;
            if (n_tasks == QMM_MAX_TASKS - 1 || done + sz > j.n_tiles)
                sz = j.n_tiles - done;
            done += sz;
            j.tile_end[n_tasks++] = done;
        }
        j.tiles_per_task = 0;
    } else {
        /* About 8 tasks per thread balance the load without many tiny tasks. */
        const int64_t want_tasks = pool ? 8 * (int64_t)c->n_threads : 1;
        j.tiles_per_task = (j.n_tiles + want_tasks - 1) / want_tasks;
        if (j.rows16 && R == 8)
            j.tiles_per_task += j.tiles_per_task & 1; /* whole pairs for the 16-row pass */
        if (j.tiles_per_task < 1)
            j.tiles_per_task = 1;
        n_tasks = (j.n_tiles + j.tiles_per_task - 1) / j.tiles_per_task;
    }
    idf_pool_run(pool, n_tasks, qmm_task, &j);
    if (two && !sum2) /* y = level 1 + level 2 (+ bias) */
        for (int64_t i = 0; i < n_in; i++) {
            const float *a = c->ry + i * m, *e = c->ry + (n_in + i) * m;
            float *yo = y_out + i * ldy_out;
            for (int64_t r = 0; r < m; r++)
                yo[r] = a[r] + e[r] + (bias_in ? bias_in[r] : 0.0f);
        }
    return IDEFICS_OK;
}

/* ---------------------------------------------------------- fp32 matmul */

#define F_ROWS_PER_TASK 16

typedef struct fmm_job {
    cpu_ctx *c;
    const idf_weight *w;
    const float *bias, *x;
    int64_t n, ldy;
    float *y;
} fmm_job;

static void fmm_task(void *ctx, int64_t task, int tid) {
    const fmm_job *j = ctx;
    const int64_t k = j->w->cols;
    const int64_t r0 = task * F_ROWS_PER_TASK;
    const int nr = (int)(j->w->rows - r0 < F_ROWS_PER_TASK ? j->w->rows - r0 : F_ROWS_PER_TASK);
    const float *wr;
    if (j->w->type == IDFX_TYPE_F32) {
        wr = (const float *)j->w->data + r0 * k;
    } else {
        float *buf = j->c->scratch + (size_t)tid * j->c->scratch_per;
        for (int r = 0; r < nr; r++)
            j->c->kern.fp16_row((const uint8_t *)j->w->data + (uint64_t)(r0 + r) * (uint64_t)k * 2u, k, buf + r * k);
        wr = buf;
    }
    for (int64_t i = 0; i < j->n; i += IDF_CPU_NX) {
        const int nx = (int)(j->n - i < IDF_CPU_NX ? j->n - i : IDF_CPU_NX);
        j->c->kern.f32_block(wr, nr, j->x + i * k, nx, k, j->y + i * j->ldy + r0, j->ldy,
                             j->bias ? j->bias + r0 : NULL);
    }
}

static idefics_status cpu_matmul(void *vctx, const idf_weight *w, const float *bias, const float *x, int64_t n,
                                 float *y, int64_t ldy) {
    cpu_ctx *c = vctx;
    if (!idf_weight_ok(w) || !x || !y || n < 0 || ldy < w->rows)
        return IDEFICS_ERR_INVALID_ARG;
    if (n == 0)
        return IDEFICS_OK;
    if (w->layout != IDFX_LAYOUT_ROWMAJOR)
        return matmul_q(c, w, bias, x, n, y, ldy);
    size_t per;
    if (!idf_mul_size((size_t)F_ROWS_PER_TASK, (size_t)w->cols, &per))
        return IDEFICS_ERR_OUT_OF_MEMORY;
    if (w->type == IDFX_TYPE_F16)
        IDF_FORWARD(ensure_scratch(c, per));
    fmm_job j = {c, w, bias, x, n, ldy, y};
    idf_pool_run(pool_for(c, w->rows * n * w->cols), (w->rows + F_ROWS_PER_TASK - 1) / F_ROWS_PER_TASK, fmm_task,
                 &j);
    return IDEFICS_OK;
}

static idefics_status cpu_get_rows(void *vctx, const idf_weight *w, const int32_t *ids, int64_t n, float *y) {
    const cpu_ctx *c = vctx;
    if (!idf_weight_ok(w) || (!ids && n > 0) || !y)
        return IDEFICS_ERR_INVALID_ARG;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= w->rows)
            return IDEFICS_ERR_INVALID_ARG;
        float *dst = y + i * w->cols;
        if (w->layout != IDFX_LAYOUT_ROWMAJOR)
            idfx_dequant_row_layout_ref(w->type, w->layout, w->data, ids[i], w->cols, w->tile_rows, dst);
        else if (w->type == IDFX_TYPE_F32)
            memcpy(dst, (const float *)w->data + (int64_t)ids[i] * w->cols, (size_t)w->cols * sizeof(float));
        else
            c->kern.fp16_row((const uint8_t *)w->data + (uint64_t)ids[i] * (uint64_t)w->cols * 2u, w->cols, dst);
    }
    return IDEFICS_OK;
}

/* ----------------------------------------------------------------- norms */

static idefics_status cpu_rmsnorm(void *vctx, const float *x, const float *w, float eps, int64_t n, int64_t dim,
                                  float *y) {
    (void)vctx;
    if (!x || !w || !y || dim <= 0)
        return IDEFICS_ERR_INVALID_ARG;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        /* 8 partial sums in double: vectorizable and as accurate as the reference's. */
        double ss[8] = {0};
        int64_t t = 0;
        for (; t + 8 <= dim; t += 8)
            for (int e = 0; e < 8; e++)
                ss[e] += (double)xi[t + e] * xi[t + e];
        for (; t < dim; t++)
            ss[0] += (double)xi[t] * xi[t];
        const double s = ((ss[0] + ss[1]) + (ss[2] + ss[3])) + ((ss[4] + ss[5]) + (ss[6] + ss[7]));
        const float inv = (float)(1.0 / sqrt(s / (double)dim + (double)eps));
        for (t = 0; t < dim; t++)
            yi[t] = w[t] * (xi[t] * inv);
    }
    return IDEFICS_OK;
}

static idefics_status cpu_layernorm(void *vctx, const float *x, const float *w, const float *b, float eps, int64_t n,
                                    int64_t dim, float *y) {
    (void)vctx;
    if (!x || !w || !y || dim <= 0)
        return IDEFICS_ERR_INVALID_ARG;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        double mean = 0.0, var = 0.0;
        for (int64_t t = 0; t < dim; t++)
            mean += xi[t];
        mean /= (double)dim;
        for (int64_t t = 0; t < dim; t++)
            var += ((double)xi[t] - mean) * ((double)xi[t] - mean);
        var /= (double)dim;
        const float inv = (float)(1.0 / sqrt(var + (double)eps)), fm = (float)mean;
        for (int64_t t = 0; t < dim; t++)
            yi[t] = (xi[t] - fm) * inv * w[t] + (b ? b[t] : 0.0f);
    }
    return IDEFICS_OK;
}

/* ------------------------------------------------------------- attention */

/* Two algorithms, both online-softmax (no score matrix over all keys):
 *
 * Decode (n_q <= ATT_DEC_MAXQ rows): split-K. The visible keys are cut into
 * blocks of kb; a task takes one block for every head and every query row and
 * streams its K rows, then its V rows, straight from the cache (attn_qk_row,
 * attn_pv_row convert F16/Q8 in registers), row after row in memory order, so
 * each byte of the cache is read once per call and both cores have work at
 * any depth. A task leaves, per (row, head), its block's max m_b, sum l_b of
 * exp(s - m_b) and sum of exp(s - m_b) v; the merge rescales them to the
 * global max: out = sum_b e^(m_b - M) acc_b / sum_b e^(m_b - M) l_b.
 *
 * Prefill (more rows): flash-attention tiles. A task takes one head and one
 * block of ATT_QB query rows (staged once, transposed and scaled) and walks
 * the keys it can see in blocks of ATT_KB: K and V blocks are converted to
 * fp32 rows (the fp32 cache is used in place), S^T = K Q^T and O += P V run
 * as register-tiled GEMMs (attn_gemm_qk, attn_gemm_pv) with keys along rows,
 * so nothing is transposed per block, and the online-softmax step runs along
 * the queries (attn_softmax_cols): each row keeps its running max and sum,
 * and O is rescaled when the max grows. Causal blocks stop at the block's
 * last visible key; tasks go head by head, heaviest first within a head. */
#define ATT_DEC_MAXQ 4
#define ATT_DEC_MINKB 32
#define ATT_DEC_MAXKB 512
#define ATT_QB 64
#define ATT_KB 64

typedef struct attn_job {
    const cpu_ctx *c;
    const idf_attn *a;
    const float *qs; /* decode: q * scale, [n_q][n_heads * head_dim] */
    float *part;     /* decode: per block [nr] max, [nr] sum, [nr * head_dim] acc; nr = n_q * n_heads */
    int kb, n_vis;   /* decode: keys per block; keys the last row sees */
    int n_qb, ldv;   /* prefill: query blocks; row stride of staged V and O (head_dim rounded up to attn_vl) */
} attn_job;

/* Keys query row i sees. */
static inline int rows_see(const idf_attn *a, int i) {
    return a->causal && a->q_pos0 + i + 1 < a->n_kv ? a->q_pos0 + i + 1 : a->n_kv;
}

/* Row t of a K or V cache. */
static inline const void *kv_row_ptr(const idf_attn *a, const void *base, int64_t t) {
    if (a->kv_type == IDEFICS_KV_F32)
        return (const float *)base + t * a->kv_stride;
    if (a->kv_type == IDEFICS_KV_F16)
        return (const uint16_t *)base + t * a->kv_stride;
    return (const uint8_t *)base + t * a->kv_stride / IDFX_KVQ8_BLOCK * IDFX_KVQ8_BYTES;
}

/* Elements [off, off + n) of a Q8 KV run (quant.h) as fp32. */
static void kvq8_range(const uint8_t *base, int64_t off, int n, float *out) {
    for (int e = 0; e < n;) {
        const int64_t idx = off + e;
        const uint8_t *b = base + (idx / IDFX_KVQ8_BLOCK) * IDFX_KVQ8_BYTES;
        const float d = idfx_fp16_to_fp32((uint16_t)(b[0] | (b[1] << 8)));
        const int j0 = (int)(idx % IDFX_KVQ8_BLOCK);
        const int cnt = IDFX_KVQ8_BLOCK - j0 < n - e ? IDFX_KVQ8_BLOCK - j0 : n - e;
        const int8_t *q = (const int8_t *)(b + 2 + j0);
        for (int j = 0; j < cnt; j++)
            out[e + j] = d * (float)q[j];
        e += cnt;
    }
}

/* Head h of row t of a K or V cache as fp32 (a pointer into the cache for F32). */
static const float *kv_head(const cpu_ctx *c, const idf_attn *a, const void *base, int64_t t, int h, float *buf) {
    const int64_t off = t * a->kv_stride + (int64_t)h * a->head_dim;
    if (a->kv_type == IDEFICS_KV_F32)
        return (const float *)base + off;
    if (a->kv_type == IDEFICS_KV_F16)
        c->kern.fp16_row((const uint16_t *)base + off, a->head_dim, buf);
    else
        kvq8_range(base, off, a->head_dim, buf);
    return buf;
}

/* Scores of one row over its n visible keys of a block of nt (mask added):
 * exp(s - mx) in place with zeros past n; returns the sum, 0 (and *mx = -inf)
 * when nothing is visible. */
static float block_softmax(const cpu_ctx *c, float *s, int n, int nt, const float *mask, float *mx) {
    float m = -INFINITY;
    if (mask)
        for (int t = 0; t < n; t++)
            s[t] += mask[t];
    for (int t = 0; t < n; t++)
        m = s[t] > m ? s[t] : m;
    *mx = m;
    if (n <= 0 || m == -INFINITY) {
        memset(s, 0, (size_t)nt * sizeof(float));
        return 0.f;
    }
    const float sum = c->kern.softmax_exp(s, n, m);
    for (int t = n; t < nt; t++)
        s[t] = 0.f;
    return sum;
}

static void attn_dec_task(void *ctx, int64_t b, int tid) {
    const attn_job *j = ctx;
    const idf_attn *a = j->a;
    const cpu_ctx *c = j->c;
    const int H = a->n_heads, hd = a->head_dim, nq = a->n_q, nr = nq * H;
    const int t0 = (int)b * j->kb, nt = j->n_vis - t0 < j->kb ? j->n_vis - t0 : j->kb;
    const int64_t row = (int64_t)H * hd;
    float *s = c->scratch + (size_t)tid * c->scratch_per; /* [nr][kb] */
    float *pm = j->part + (size_t)b * (size_t)nr * (size_t)(hd + 2), *pl = pm + nr, *acc = pl + nr;
    for (int t = 0; t < nt; t++)
        c->kern.attn_qk_row(kv_row_ptr(a, a->k, t0 + t), a->kv_type, H, hd, j->qs, row, nq, s + t, j->kb);
    for (int i = 0; i < nq; i++) {
        int see = rows_see(a, i) - t0;
        see = see < 0 ? 0 : see > nt ? nt : see;
        for (int h = 0; h < H; h++) {
            const int r = i * H + h;
            pl[r] = block_softmax(c, s + (size_t)r * j->kb, see, nt,
                                  a->mask ? a->mask + (int64_t)i * a->n_kv + t0 : NULL, &pm[r]);
        }
    }
    memset(acc, 0, (size_t)nr * (size_t)hd * sizeof(float));
    for (int t = 0; t < nt; t++)
        c->kern.attn_pv_row(kv_row_ptr(a, a->v, t0 + t), a->kv_type, H, hd, s + t, j->kb, nq, acc);
}

/* The blocks' partial results to the output (split-K merge). */
static void attn_dec_merge(const attn_job *j, int n_kb) {
    const idf_attn *a = j->a;
    const int H = a->n_heads, hd = a->head_dim, nr = a->n_q * H;
    const size_t per = (size_t)nr * (size_t)(hd + 2);
    for (int r = 0; r < nr; r++) {
        float *out = a->out + (int64_t)(r / H) * a->out_stride + (int64_t)(r % H) * hd;
        float M = -INFINITY;
        for (int b = 0; b < n_kb; b++) {
            const float m = j->part[b * per + (size_t)r];
            M = m > M ? m : M;
        }
        for (int e = 0; e < hd; e++)
            out[e] = 0.f;
        if (M == -INFINITY) /* nothing visible: a zero output, like the reference */
            continue;
        float L = 0.f;
        for (int b = 0; b < n_kb; b++) {
            const float *pm = j->part + b * per;
            if (pm[r] == -INFINITY)
                continue;
            const float w = expf(pm[r] - M);
            const float *acc = pm + 2 * nr + (size_t)r * hd;
            L += w * pm[nr + r];
            for (int e = 0; e < hd; e++)
                out[e] += w * acc[e];
        }
        const float inv = 1.0f / L;
        for (int e = 0; e < hd; e++)
            out[e] *= inv;
    }
}

/* Per-thread floats of a prefill task. */
static size_t attn_pre_scratch(int hd, int ldv) {
    return (size_t)hd * ATT_QB + (size_t)ATT_KB * ATT_QB + (size_t)ATT_KB * hd + (size_t)ATT_KB * ldv +
           (size_t)ATT_QB * ldv + 4 * (size_t)ATT_QB;
}

static void attn_pre_task(void *ctx, int64_t task, int tid) {
    const attn_job *j = ctx;
    const idf_attn *a = j->a;
    const cpu_ctx *c = j->c;
    const int hd = a->head_dim, ldv = j->ldv, vl = c->kern.attn_vl;
    /* Head-major, so the tasks running together share one head's K and V (a
     * head of 2048 fp16 keys is 1 MB: it stays in L2 across its query blocks
     * instead of streaming every head's cache once per block); within a head
     * the last (longest) query blocks first. */
    const int h = (int)(task / j->n_qb), qb = j->n_qb - 1 - (int)(task % j->n_qb);
    const int i0 = qb * ATT_QB, nq = a->n_q - i0 < ATT_QB ? a->n_q - i0 : ATT_QB;
    const int unit = vl < 4 ? 4 : vl, nqp = (nq + unit - 1) / unit * unit; /* <= ATT_QB (a multiple of 16) */
    float *Qt = c->scratch + (size_t)tid * c->scratch_per; /* [hd][ATT_QB]: q * scale, transposed */
    float *St = Qt + (size_t)hd * ATT_QB;                   /* [ATT_KB][ATT_QB]: scores, then probabilities */
    float *Ks = St + (size_t)ATT_KB * ATT_QB;               /* [ATT_KB][hd]: staged K (F16, Q8) */
    float *Vs = Ks + (size_t)ATT_KB * hd;                   /* [ATT_KB][ldv]: staged V */
    float *O = Vs + (size_t)ATT_KB * ldv;                   /* [ATT_QB][ldv] */
    float *m = O + (size_t)ATT_QB * ldv, *l = m + ATT_QB, *corr = l + ATT_QB, *base = corr + ATT_QB;
    for (int i = 0; i < nqp; i++) {
        const float *qi = a->q + (int64_t)(i0 + i) * a->q_stride + (int64_t)h * hd;
        for (int d = 0; d < hd; d++)
            Qt[d * ATT_QB + i] = i < nq ? qi[d] * a->scale : 0.f;
        m[i] = -INFINITY;
        l[i] = 0.f;
    }
    memset(O, 0, (size_t)nqp * (size_t)ldv * sizeof(float));
    const bool f32 = a->kv_type == IDEFICS_KV_F32, v_direct = f32 && ldv == hd;
    const int n_keys = rows_see(a, i0 + nq - 1), first_see = rows_see(a, i0);
    for (int k0 = 0; k0 < n_keys; k0 += ATT_KB) {
        const int nt = n_keys - k0 < ATT_KB ? n_keys - k0 : ATT_KB;
        /* K: the fp32 cache itself, or its rows converted */
        const float *K = f32 ? (const float *)a->k + (int64_t)k0 * a->kv_stride + (int64_t)h * hd : Ks;
        if (!f32)
            for (int t = 0; t < nt; t++)
                kv_head(c, a, a->k, k0 + t, h, Ks + (size_t)t * hd);
        c->kern.attn_gemm_qk(K, f32 ? a->kv_stride : hd, nt, Qt, ATT_QB, nqp, hd, St, ATT_QB);
        if (a->mask)
            for (int t = 0; t < nt; t++)
                for (int i = 0; i < nq; i++)
                    St[t * ATT_QB + i] += a->mask[(int64_t)(i0 + i) * a->n_kv + k0 + t];
        if (k0 + nt > first_see) /* a causal edge crosses this block: hide each row's future keys */
            for (int i = 0; i < nq; i++)
                for (int t = rows_see(a, i0 + i) - k0; t < nt; t++)
                    if (t >= 0)
                        St[t * ATT_QB + i] = -INFINITY;
        c->kern.attn_softmax_cols(St, ATT_QB, nt, nqp, m, l, corr, base);
        for (int i = 0; i < nq; i++)
            if (corr[i] != 1.f)
                for (int e = 0; e < ldv; e++)
                    O[(size_t)i * ldv + e] *= corr[i];
        const float *V = v_direct ? (const float *)a->v + (int64_t)k0 * a->kv_stride + (int64_t)h * hd : Vs;
        if (!v_direct)
            for (int t = 0; t < nt; t++) {
                float *vr = Vs + (size_t)t * ldv;
                const float *src = kv_head(c, a, a->v, k0 + t, h, vr);
                if (src != vr)
                    memcpy(vr, src, (size_t)hd * sizeof(float));
                for (int e = hd; e < ldv; e++)
                    vr[e] = 0.f;
            }
        c->kern.attn_gemm_pv(St, ATT_QB, (nq + 3) & ~3, V, v_direct ? a->kv_stride : ldv, nt, ldv, O, ldv);
    }
    for (int i = 0; i < nq; i++) {
        float *out = a->out + (int64_t)(i0 + i) * a->out_stride + (int64_t)h * hd;
        const float inv = l[i] > 0.f ? 1.0f / l[i] : 0.f;
        for (int d = 0; d < hd; d++)
            out[d] = O[(size_t)i * ldv + d] * inv;
    }
}

static idefics_status cpu_attention(void *vctx, const idf_attn *a) {
    cpu_ctx *c = vctx;
    IDF_FORWARD(idf_attn_check(a));
    const int64_t row = (int64_t)a->n_heads * a->head_dim;
    if (a->n_q == 0)
        return IDEFICS_OK;
    attn_job j = {.c = c, .a = a};
    if (a->n_q <= ATT_DEC_MAXQ) {
        j.n_vis = rows_see(a, a->n_q - 1);
        const int target = 4 * c->n_threads;
        int kb = (j.n_vis + target - 1) / target;
        kb = (kb + 15) & ~15;
        j.kb = kb < ATT_DEC_MINKB ? ATT_DEC_MINKB : kb > ATT_DEC_MAXKB ? ATT_DEC_MAXKB : kb;
        const int n_kb = (j.n_vis + j.kb - 1) / j.kb;
        const size_t nr = (size_t)a->n_q * (size_t)a->n_heads;
        /* partials, then the scaled queries */
        const size_t need = (size_t)n_kb * nr * ((size_t)a->head_dim + 2) + (size_t)a->n_q * (size_t)row;
        if (need > c->att_cap) {
            float *p = idf_malloc(&c->alloc, need * sizeof(float));
            if (!p)
                return IDEFICS_ERR_OUT_OF_MEMORY;
            idf_free(&c->alloc, c->att);
            c->att = p;
            c->att_cap = need;
        }
        IDF_FORWARD(ensure_scratch(c, nr * (size_t)j.kb));
        j.part = c->att;
        float *qs = c->att + (size_t)n_kb * nr * ((size_t)a->head_dim + 2);
        for (int i = 0; i < a->n_q; i++)
            for (int64_t e = 0; e < row; e++)
                qs[i * row + e] = a->q[i * a->q_stride + e] * a->scale;
        j.qs = qs;
        idf_pool_run(n_kb > 1 ? pool_for(c, (int64_t)a->n_q * j.n_vis * row) : NULL, n_kb, attn_dec_task, &j);
        attn_dec_merge(&j, n_kb);
        return IDEFICS_OK;
    }
    const int vl = c->kern.attn_vl;
    j.n_qb = (a->n_q + ATT_QB - 1) / ATT_QB;
    j.ldv = (a->head_dim + vl - 1) / vl * vl;
    IDF_FORWARD(ensure_scratch(c, attn_pre_scratch(a->head_dim, j.ldv)));
    idf_pool_run(pool_for(c, (int64_t)a->n_q * a->n_kv * row), (int64_t)a->n_heads * j.n_qb, attn_pre_task, &j);
    return IDEFICS_OK;
}

/* ----------------------------------------------------------- elementwise */

/* Activations: elementwise, in chunks on the pool when large (the vision
 * tower's MLP: 257 x 5120 per layer). */
#define ACT_CHUNK 16384

typedef struct act_job {
    const cpu_ctx *c;
    float *x;
    const float *u;
    int64_t n;
    int kind; /* 0 gelu, 1 quick_gelu, 2 silu_mul */
} act_job;

static void act_task(void *ctx, int64_t task, int tid) {
    (void)tid;
    const act_job *j = ctx;
    const int64_t i0 = task * ACT_CHUNK;
    const int64_t m = j->n - i0 < ACT_CHUNK ? j->n - i0 : ACT_CHUNK;
    if (j->kind == 0)
        j->c->kern.gelu(j->x + i0, m);
    else if (j->kind == 1)
        j->c->kern.quick_gelu(j->x + i0, m);
    else
        j->c->kern.silu_mul(j->x + i0, j->u + i0, m);
}

static idefics_status run_act(const cpu_ctx *c, float *x, const float *u, int64_t n, int kind) {
    if (n <= 0)
        return IDEFICS_OK;
    if (!x || (kind == 2 && !u))
        return IDEFICS_ERR_INVALID_ARG;
    act_job j = {c, x, u, n, kind};
    /* ~20 flops per element: the pool pays off past a few chunks */
    idf_pool_run(n >= 4 * ACT_CHUNK ? c->pool : NULL, (n + ACT_CHUNK - 1) / ACT_CHUNK, act_task, &j);
    return IDEFICS_OK;
}

static idefics_status cpu_gelu(void *vctx, float *x, int64_t n) {
    return run_act(vctx, x, NULL, n, 0);
}

static idefics_status cpu_quick_gelu(void *vctx, float *x, int64_t n) {
    return run_act(vctx, x, NULL, n, 1);
}

static idefics_status cpu_silu_mul(void *vctx, float *g, const float *u, int64_t n) {
    return run_act(vctx, g, u, n, 2);
}

/* ------------------------------------------------------------ lifecycle */

static void cpu_free(idf_backend *b) {
    if (!b)
        return;
    cpu_ctx *c = b->ctx;
    idf_alloc al = c->alloc;
    idf_pool_free(c->pool);
    idf_free(&al, c->scratch);
    idf_free(&al, c->att);
    idf_free(&al, c->aq);
    idf_free(&al, c->ad);
    idf_free(&al, c->ac);
    idf_free(&al, c->ac4);
    idf_free(&al, c->ac1);
    idf_free(&al, c->rx);
    idf_free(&al, c->ry);
    idf_free(&al, c);
    idf_free(&al, b);
}

static const char *const isa_names[IDF_CPU_ISA_COUNT] = {"scalar", "avx2", "avx512", "neon", "neon-dotprod"};

const char *idf_cpu_isa_name(idf_cpu_isa isa) {
    return isa >= 0 && isa < IDF_CPU_ISA_COUNT ? isa_names[isa] : "?";
}

bool idf_cpu_isa_available(idf_cpu_isa isa) {
    idf_cpu_features f;
    idf_cpu_detect(&f);
    switch (isa) {
    case IDF_CPU_ISA_SCALAR:
        return true;
#if defined(__x86_64__)
    case IDF_CPU_ISA_AVX2:
        return f.avx2 && f.fma && f.f16c;
    case IDF_CPU_ISA_AVX512:
        return f.avx2 && f.fma && f.f16c && f.avx512f && f.avx512bw && f.avx512vl && f.avx512_vnni;
#endif
#if defined(__aarch64__)
    case IDF_CPU_ISA_NEON:
        return f.neon;
    case IDF_CPU_ISA_NEON_DOTPROD:
        return f.neon && f.dotprod;
#endif
    default:
        return false;
    }
}

/* The best level this CPU runs, capped by IDEFICS_CPU_ISA when set. */
static idf_cpu_isa best_isa(void) {
    const char *cap = getenv("IDEFICS_CPU_ISA");
    idf_cpu_isa best = IDF_CPU_ISA_SCALAR;
    for (int i = 0; i < IDF_CPU_ISA_COUNT; i++) {
        if (idf_cpu_isa_available((idf_cpu_isa)i))
            best = (idf_cpu_isa)i;
        if (cap && !strcmp(cap, isa_names[i]))
            break;
    }
    return best;
}

static void load_kernels(idf_cpu_isa isa, idf_cpu_kernels *k) {
    switch (isa) {
#if defined(__x86_64__)
    case IDF_CPU_ISA_AVX2:
        idf_cpu_kernels_avx2(k);
        return;
    case IDF_CPU_ISA_AVX512:
        idf_cpu_kernels_avx512(k);
        return;
#endif
#if defined(__aarch64__)
    case IDF_CPU_ISA_NEON:
        idf_cpu_kernels_neon(k);
        return;
    case IDF_CPU_ISA_NEON_DOTPROD:
        idf_cpu_kernels_neon_dotprod(k);
        return;
#endif
    default:
        idf_cpu_kernels_scalar(k);
        return;
    }
}

idefics_status idf_backend_cpu_create_isa(idf_cpu_isa isa, int n_threads, const idf_alloc *alloc, idf_backend **out,
                                          idf_err *err) {
    *out = NULL;
    if (!idf_cpu_isa_available(isa))
        return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "cpu backend: this CPU cannot run the %s kernels",
                        idf_cpu_isa_name(isa));
    const idf_alloc al = alloc ? *alloc : (idf_alloc){0};
    cpu_ctx *c = idf_calloc(&al, 1, sizeof *c);
    idf_backend *b = idf_calloc(&al, 1, sizeof *b);
    if (!c || !b) {
        idf_free(&al, c);
        idf_free(&al, b);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "cpu backend: out of memory");
    }
    c->alloc = al;
    c->pool = idf_pool_create(n_threads, idf_malloc_cb, idf_free_cb, &c->alloc);
    if (!c->pool) {
        idf_free(&al, c);
        idf_free(&al, b);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "cpu backend: cannot create a pool of %d threads", n_threads);
    }
    c->n_threads = idf_pool_size(c->pool);
    c->act2 = ACT2_DEFAULT;
    snprintf(c->act2_names, sizeof c->act2_names, "%s", ACT2_DEFAULT_NAMES);
    const char *act = getenv("IDEFICS_CPU_ACT");
    if (act && !strcmp(act, "int8"))
        c->act2 = ACT2_OFF;
    else if (act && !strcmp(act, "int8x2"))
        c->act2 = ACT2_ALL;
    else if (act && !strncmp(act, "int8x2:", 7)) {
        c->act2 = ACT2_NAMED;
        snprintf(c->act2_names, sizeof c->act2_names, "%s", act + 7);
    }
    load_kernels(isa, &c->kern);
    idf_cpu_kernels_scalar(&c->scalar);
    *b = (idf_backend){
        .api_version = IDF_BACKEND_API_VERSION,
        .name = c->kern.name,
        .ctx = c,
        .free = cpu_free,
        .supports_op = NULL, /* complete */
        .matmul = cpu_matmul,
        .get_rows = cpu_get_rows,
        .rmsnorm = cpu_rmsnorm,
        .layernorm = cpu_layernorm,
        .rope = idf_ref_rope,
        .attention = cpu_attention,
        .gelu = cpu_gelu,
        .quick_gelu = cpu_quick_gelu,
        .relu = idf_ref_relu,
        .silu_mul = cpu_silu_mul,
        .add = idf_ref_add,
        .scale = idf_ref_scale,
        .gated_add = idf_ref_gated_add,
    };
    *out = b;
    return IDEFICS_OK;
}

idefics_status idf_backend_cpu_create(int n_threads, const idf_alloc *alloc, idf_backend **out, idf_err *err) {
    return idf_backend_cpu_create_isa(best_isa(), n_threads, alloc, out, err);
}
