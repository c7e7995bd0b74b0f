/*
 * backend_ref.c - the scalar fp32 reference backend (backend.h).
 *
 * Plain C loops, written to be obviously right rather than fast: every other
 * backend is tested against these. Weights of any stored type are turned into
 * fp32 one row at a time with the quant/ reference routines, and dot products
 * accumulate in double so the reference's own rounding stays far below any
 * tolerance a faster backend is held to. The two heavy ops (matmul, attention)
 * share their work among the threads of a persistent idf_pool.
 */
#include <math.h>
#include <string.h>

#include "backend.h"
#include "quant.h"

typedef struct ref_ctx {
    idf_alloc alloc;
    idf_pool *pool;
    int n_threads;
    float *scratch;     /* [n_threads, scratch_per] per-thread rows (dequantized weights, scores) */
    size_t scratch_per; /* floats per thread */
} ref_ctx;

/* Make every thread's scratch at least `per` floats. Called from the one
 * thread that drives the pool, before a parallel run. */
static idefics_status ensure_scratch(ref_ctx *c, size_t per) {
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

/* Row r of w as fp32. Returns a pointer into the weight itself for F32 (no
 * copy) or into buf (cols floats). */
static const float *weight_row(const idf_weight *w, int64_t r, float *buf) {
    if (idfx_layout_tiled(w->layout)) {
        idfx_dequant_row_layout_ref(w->type, w->layout, w->data, r, w->cols, w->tile_rows, buf);
        return buf;
    }
    if (w->type == IDFX_TYPE_F32)
        return (const float *)w->data + r * w->cols;
    const uint8_t *p = (const uint8_t *)w->data + (uint64_t)r * (uint64_t)w->cols * 2u;
    for (int64_t j = 0; j < w->cols; j++)
        buf[j] = idfx_fp16_to_fp32(idf_rd16(p + 2 * j));
    return buf;
}

/* Below this many multiply-adds, waking the workers costs more than the
 * work: run on the calling thread (a NULL pool runs serially, thread id 0). */
#define PARALLEL_MIN_MACS (1 << 16)

static idf_pool *pool_for(const ref_ctx *c, int64_t macs) {
    return macs < PARALLEL_MIN_MACS ? NULL : c->pool;
}

/* ---------------------------------------------------------------- matmul */

#define MM_ROWS_PER_TASK 16

typedef struct mm_job {
    ref_ctx *c;
    const idf_weight *w;
    const float *bias, *x;
    int64_t n, ldy;
    float *y;
} mm_job;

static void mm_task(void *ctx, int64_t task, int tid) {
    const mm_job *j = ctx;
    const int64_t k = j->w->cols;
    float *buf = j->c->scratch + (size_t)tid * j->c->scratch_per;
    const int64_t r0 = task * MM_ROWS_PER_TASK;
    const int64_t r1 = r0 + MM_ROWS_PER_TASK < j->w->rows ? r0 + MM_ROWS_PER_TASK : j->w->rows;
    for (int64_t r = r0; r < r1; r++) {
        /* One dequantization of the weight row serves all n input rows. */
        const float *wr = weight_row(j->w, r, buf);
        const double b = j->bias ? j->bias[r] : 0.0;
        for (int64_t i = 0; i < j->n; i++) {
            const float *xi = j->x + i * k;
            double acc = 0.0;
            for (int64_t t = 0; t < k; t++)
                acc += (double)xi[t] * wr[t];
            j->y[i * j->ldy + r] = (float)(acc + b);
        }
    }
}

static idefics_status ref_matmul(void *vctx, const idf_weight *w, const float *bias, const float *x, int64_t n,
                                 float *y, int64_t ldy) {
    ref_ctx *c = vctx;
    if (!idf_weight_ok(w) || !x || !y || n < 0 || ldy < w->rows)
        return IDEFICS_ERR_INVALID_ARG;
    if (n == 0)
        return IDEFICS_OK;
    IDF_FORWARD(ensure_scratch(c, (size_t)w->cols));
    mm_job j = {c, w, bias, x, n, ldy, y};
    idf_pool_run(pool_for(c, w->rows * n * w->cols), (w->rows + MM_ROWS_PER_TASK - 1) / MM_ROWS_PER_TASK, mm_task, &j);
    return IDEFICS_OK;
}

static idefics_status ref_get_rows(void *vctx, const idf_weight *w, const int32_t *ids, int64_t n, float *y) {
    (void)vctx;
    if (!idf_weight_ok(w) || (!ids && n > 0) || !y)
        return IDEFICS_ERR_INVALID_ARG;
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= w->rows)
            return IDEFICS_ERR_INVALID_ARG;
        float *dst = y + i * w->cols;
        const float *src = weight_row(w, ids[i], dst);
        if (src != dst)
            memcpy(dst, src, (size_t)w->cols * sizeof(float));
    }
    return IDEFICS_OK;
}

/* ----------------------------------------------------------------- norms */

static idefics_status ref_rmsnorm(void *vctx, const float *x, const float *w, float eps, int64_t n, int64_t dim,
                                  float *y) {
    (void)vctx;
    if (!x || !w || !y || dim <= 0)
        return IDEFICS_ERR_INVALID_ARG;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * dim;
        float *yi = y + i * dim;
        double ss = 0.0;
        for (int64_t t = 0; t < dim; t++)
            ss += (double)xi[t] * xi[t];
        const float inv = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
        for (int64_t t = 0; t < dim; t++)
            yi[t] = w[t] * (xi[t] * inv);
    }
    return IDEFICS_OK;
}

static idefics_status ref_layernorm(void *vctx, const float *x, const float *w, const float *b, float eps, int64_t n,
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
        var /= (double)dim; /* biased variance, as torch.nn.LayerNorm */
        const double inv = 1.0 / sqrt(var + (double)eps);
        for (int64_t t = 0; t < dim; t++) {
            const float v = (float)(((double)xi[t] - mean) * inv);
            yi[t] = v * w[t] + (b ? b[t] : 0.0f);
        }
    }
    return IDEFICS_OK;
}

/* ------------------------------------------------------------------ rope */

/* Context-free: the fast CPU backend shares it (backend.h). */
idefics_status idf_ref_rope(void *vctx, float *x, int64_t n, int64_t stride, int n_heads, int head_dim, int pos0,
                            float theta) {
    (void)vctx;
    if (!x || head_dim <= 0 || head_dim % 2 || n_heads <= 0 || stride < (int64_t)n_heads * head_dim || pos0 < 0)
        return IDEFICS_ERR_INVALID_ARG;
    const int half = head_dim / 2;
    for (int64_t i = 0; i < n; i++) {
        const float pos = (float)(pos0 + i);
        for (int d = 0; d < half; d++) {
            /* fp32 throughout, in the order HF builds its tables:
             * inv_freq = 1 / theta^(2d/dim), angle = pos * inv_freq. */
            const float inv_freq = 1.0f / powf(theta, (float)(2 * d) / (float)head_dim);
            const float ang = pos * inv_freq;
            const float cs = cosf(ang), sn = sinf(ang);
            for (int h = 0; h < n_heads; h++) {
                float *xh = x + i * stride + (int64_t)h * head_dim;
                const float a = xh[d], b = xh[d + half];
                xh[d] = a * cs - b * sn;
                xh[d + half] = b * cs + a * sn;
            }
        }
    }
    return IDEFICS_OK;
}

/* ------------------------------------------------------------- attention */

static inline float kv_at(const void *base, int kv_type, int64_t idx) {
    if (kv_type == IDEFICS_KV_F32)
        return ((const float *)base)[idx];
    if (kv_type == IDEFICS_KV_Q8)
        return idfx_kvq8_at_ref(base, idx);
    return idfx_fp16_to_fp32(((const uint16_t *)base)[idx]);
}

typedef struct attn_job {
    ref_ctx *c;
    const idf_attn *a;
} attn_job;

static void attn_task(void *ctx, int64_t task, int tid) {
    const attn_job *j = ctx;
    const idf_attn *a = j->a;
    const int i = (int)(task / a->n_heads), h = (int)(task % a->n_heads);
    float *sc = j->c->scratch + (size_t)tid * j->c->scratch_per;
    const float *q = a->q + i * a->q_stride + (int64_t)h * a->head_dim;
    float *out = a->out + i * a->out_stride + (int64_t)h * a->head_dim;
    int n_see = a->n_kv;
    if (a->causal && a->q_pos0 + i + 1 < n_see)
        n_see = a->q_pos0 + i + 1;

    float mx = -INFINITY;
    for (int t = 0; t < n_see; t++) {
        const int64_t kb = t * a->kv_stride + (int64_t)h * a->head_dim;
        double dot = 0.0;
        for (int d = 0; d < a->head_dim; d++)
            dot += (double)q[d] * kv_at(a->k, a->kv_type, kb + d);
        float s = (float)dot * a->scale;
        if (a->mask)
            s += a->mask[(int64_t)i * a->n_kv + t];
        sc[t] = s;
        if (s > mx)
            mx = s;
    }
    /* Every key masked with -inf: no distribution exists; the row reads zero. */
    if (n_see == 0 || mx == -INFINITY) {
        for (int d = 0; d < a->head_dim; d++)
            out[d] = 0.0f;
        return;
    }
    double sum = 0.0;
    for (int t = 0; t < n_see; t++) {
        sc[t] = expf(sc[t] - mx);
        sum += sc[t];
    }
    for (int d = 0; d < a->head_dim; d++) {
        double acc = 0.0;
        for (int t = 0; t < n_see; t++)
            acc += (double)sc[t] * kv_at(a->v, a->kv_type, t * a->kv_stride + (int64_t)h * a->head_dim + d);
        out[d] = (float)(acc / sum);
    }
}

static idefics_status ref_attention(void *vctx, const idf_attn *a) {
    ref_ctx *c = vctx;
    IDF_FORWARD(idf_attn_check(a));
    const int64_t row = (int64_t)a->n_heads * a->head_dim;
    if (a->n_q == 0)
        return IDEFICS_OK;
    IDF_FORWARD(ensure_scratch(c, (size_t)(a->n_kv > 0 ? a->n_kv : 1)));
    attn_job j = {c, a};
    idf_pool_run(pool_for(c, (int64_t)a->n_q * a->n_kv * row), (int64_t)a->n_q * a->n_heads, attn_task, &j);
    return IDEFICS_OK;
}

/* ----------------------------------------------------------- elementwise */

static idefics_status ref_gelu(void *vctx, float *x, int64_t n) {
    (void)vctx;
    for (int64_t i = 0; i < n; i++)
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
    return IDEFICS_OK;
}

static idefics_status ref_quick_gelu(void *vctx, float *x, int64_t n) {
    (void)vctx;
    for (int64_t i = 0; i < n; i++)
        x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
    return IDEFICS_OK;
}

/* The elementwise ops below ignore their context, so the fast CPU backend
 * shares them (backend.h): memory-bound loops the compiler vectorises. */
idefics_status idf_ref_relu(void *vctx, float *x, int64_t n) {
    (void)vctx;
    for (int64_t i = 0; i < n; i++)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
    return IDEFICS_OK;
}

static idefics_status ref_silu_mul(void *vctx, float *g, const float *u, int64_t n) {
    (void)vctx;
    for (int64_t i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    return IDEFICS_OK;
}

idefics_status idf_ref_add(void *vctx, float *y, const float *x, int64_t n) {
    (void)vctx;
    for (int64_t i = 0; i < n; i++)
        y[i] += x[i];
    return IDEFICS_OK;
}

idefics_status idf_ref_scale(void *vctx, float *x, float s, int64_t n) {
    (void)vctx;
    for (int64_t i = 0; i < n; i++)
        x[i] *= s;
    return IDEFICS_OK;
}

idefics_status idf_ref_gated_add(void *vctx, float *h, const float *gate, const float *a, int64_t n, int64_t dim) {
    (void)vctx;
    for (int64_t i = 0; i < n; i++)
        for (int64_t t = 0; t < dim; t++)
            h[i * dim + t] += gate[t] * a[i * dim + t];
    return IDEFICS_OK;
}

/* ------------------------------------------------------------ lifecycle */

static void ref_free(idf_backend *b) {
    if (!b)
        return;
    ref_ctx *c = b->ctx;
    idf_alloc al = c->alloc;
    idf_pool_free(c->pool);
    idf_free(&al, c->scratch);
    idf_free(&al, c);
    idf_free(&al, b);
}

idefics_status idf_backend_ref_create(int n_threads, const idf_alloc *alloc, idf_backend **out, idf_err *err) {
    *out = NULL;
    const idf_alloc al = alloc ? *alloc : (idf_alloc){0};
    ref_ctx *c = idf_calloc(&al, 1, sizeof *c);
    idf_backend *b = idf_calloc(&al, 1, sizeof *b);
    if (!c || !b) {
        idf_free(&al, c);
        idf_free(&al, b);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "cpu-ref backend: out of memory");
    }
    c->alloc = al;
    /* The pool keeps a pointer to the allocator: give it the one inside ctx, which lives as long as the pool. */
    c->pool = idf_pool_create(n_threads, idf_malloc_cb, idf_free_cb, &c->alloc);
    if (!c->pool) {
        idf_free(&al, c);
        idf_free(&al, b);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "cpu-ref backend: cannot create a pool of %d threads",
                        n_threads);
    }
    c->n_threads = idf_pool_size(c->pool);
    *b = (idf_backend){
        .api_version = IDF_BACKEND_API_VERSION,
        .name = "cpu-ref",
        .ctx = c,
        .free = ref_free,
        .supports_op = NULL, /* complete by definition */
        .matmul = ref_matmul,
        .get_rows = ref_get_rows,
        .rmsnorm = ref_rmsnorm,
        .layernorm = ref_layernorm,
        .rope = idf_ref_rope,
        .attention = ref_attention,
        .gelu = ref_gelu,
        .quick_gelu = ref_quick_gelu,
        .relu = idf_ref_relu,
        .silu_mul = ref_silu_mul,
        .add = idf_ref_add,
        .scale = idf_ref_scale,
        .gated_add = idf_ref_gated_add,
    };
    *out = b;
    return IDEFICS_OK;
}
