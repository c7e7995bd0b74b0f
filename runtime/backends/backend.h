/*
 * backend.h - the compute backend interface: one struct of function pointers
 * per backend plus its context pointer (house rule 13).
 *
 * The forward pass (forward.c) never computes anything itself; every op goes
 * through an idf_backend. The reference backend (backend_ref.c) is always
 * present and complete: it is the ground truth the op tests compare other
 * backends against, and the fallback for any op another backend's
 * supports_op() declines (per-op fallback, so a GPU backend may implement only
 * the matmuls and attention and still run the whole model).
 *
 * Data conventions shared by every op:
 *   - activations are fp32, row-major, in host memory (phones and boards share
 *     memory between CPU and GPU, so an OpenCL backend maps these zero-copy);
 *   - weights are idf_weight: the stored bytes of a [rows, cols] tensor in any
 *     idfx_type / idfx_layout, as the converter wrote them (no repacking);
 *   - "x[n, k]" means n rows of k floats, contiguous unless a stride is given;
 *   - in-place use (y == x) is allowed wherever an op says so.
 * Ops return IDEFICS_OK or a status (IDEFICS_ERR_BACKEND for a run-time device
 * failure, IDEFICS_ERR_OUT_OF_MEMORY, IDEFICS_ERR_UNSUPPORTED for a case
 * supports_op would have declined).
 */
#ifndef IDF_BACKEND_H
#define IDF_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

/* Bumped whenever a slot's signature or meaning changes. */
#define IDF_BACKEND_API_VERSION 3 /* 2: register_host, host_access; 3: last_error */

typedef enum idf_op {
    IDF_OP_MATMUL = 0, /* y[n, m] = x[n, k] W[m, k]^T (+ bias[m]) */
    IDF_OP_GET_ROWS,   /* y[i, :] = W[ids[i], :] as fp32 (embedding gather) */
    IDF_OP_RMSNORM,    /* y = x / sqrt(mean(x^2) + eps) * w */
    IDF_OP_LAYERNORM,  /* y = (x - mean) / sqrt(var + eps) * w + b */
    IDF_OP_ROPE,       /* rotate-half RoPE on every head */
    IDF_OP_ATTENTION,  /* softmax(q k^T * scale + mask) v per head */
    IDF_OP_GELU,       /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
    IDF_OP_QUICK_GELU, /* x * sigmoid(1.702 x) */
    IDF_OP_SILU_MUL,   /* g = silu(g) * u */
    IDF_OP_RELU,
    IDF_OP_ADD,       /* y += x */
    IDF_OP_SCALE,     /* x *= s */
    IDF_OP_GATED_ADD, /* h[i, c] += gate[c] * a[i, c] (tanh-gated residual) */
    IDF_OP_COUNT
} idf_op;

/* A stored weight matrix [rows, cols] (PyTorch [out_features, in_features]). */
typedef struct idf_weight {
    const char *name;   /* tensor name, for error messages */
    const void *data;   /* decoded bytes (idfx_tensor.data) */
    uint8_t type;       /* idfx_type */
    uint8_t layout;     /* idfx_layout */
    uint32_t tile_rows; /* ROWTILE: rows per tile; else 0 */
    int64_t rows, cols;
    void *backend_data; /* (optional) a backend's own handle for this weight; NULL on the CPU */
} idf_weight;

/* The weight is one the CPU backends can read: data and a positive shape;
 * F32/F16 row-major, or Q4/Q8 tiled (ROWTILE, GROUPTILE) with cols a multiple
 * of 32 and a power-of-two tile height in [1, IDFX_MAX_TILE_ROWS]. */
bool idf_weight_ok(const idf_weight *w);

/* What supports_op() is asked. Fields that do not apply to the op are 0. */
typedef struct idf_op_desc {
    idf_op op;
    int wtype, wlayout; /* MATMUL, GET_ROWS: the weight's idfx_type and idfx_layout */
    int kv_type;        /* ATTENTION: idefics_kv_type of k and v */
    int64_t n, m, k;    /* MATMUL: rows, outputs, inner; ATTENTION: n_q, n_kv, head_dim */
} idf_op_desc;

/* One attention call: for every query row i and head h,
 *   out[i, h] = sum_j softmax_j(q[i, h] . k[j, h] * scale + mask[i, j]) v[j, h]
 * over the keys j row i may see: all n_kv, or with causal, j <= q_pos0 + i
 * (the query rows sit at positions q_pos0 .. q_pos0 + n_q - 1 of the cache). */
typedef struct idf_attn {
    int n_q, n_kv;
    int n_heads, head_dim; /* head h occupies floats [h*head_dim, (h+1)*head_dim) of a row */
    const float *q;        /* [n_q] rows, q_stride floats apart */
    int64_t q_stride;
    const void *k, *v; /* [n_kv] rows of kv_type elements, kv_stride elements apart */
    int64_t kv_stride;
    int kv_type; /* IDEFICS_KV_F32, _F16, or _Q8 (quant.h blocks; kv_stride a multiple of 32) */
    float scale; /* usually head_dim^-0.5 */
    bool causal;
    int q_pos0;        /* causal only */
    const float *mask; /* (optional) additive [n_q, n_kv]; NULL = none */
    float *out;        /* [n_q] rows, out_stride floats apart */
    int64_t out_stride;
} idf_attn;

/* IDEFICS_ERR_INVALID_ARG unless a is a well-formed call: pointers set, counts
 * and strides in range (row strides at least n_heads * head_dim), a known KV
 * type, Q8 rows starting on a block, q_pos0 >= 0 when causal. Every backend's
 * attention checks its argument with this (backend_util.c). */
idefics_status idf_attn_check(const idf_attn *a);

typedef struct idf_backend idf_backend;

struct idf_backend {
    uint32_t api_version; /* IDF_BACKEND_API_VERSION */
    const char *name;     /* "cpu-ref", ... */
    void *ctx;            /* the backend's own state (thread pool, device, scratch) */

    void (*free)(idf_backend *b);
    /* (optional) NULL means every op in every case. */
    bool (*supports_op)(void *ctx, const idf_op_desc *d);

    /* y may have a row stride ldy >= m (so two matmuls can fill one logits row). */
    idefics_status (*matmul)(void *ctx, const idf_weight *w, const float *bias, const float *x, int64_t n, float *y,
                             int64_t ldy);
    /* ids must be in [0, w->rows) (checked by the caller). */
    idefics_status (*get_rows)(void *ctx, const idf_weight *w, const int32_t *ids, int64_t n, float *y);
    /* n rows of dim; y == x allowed. */
    idefics_status (*rmsnorm)(void *ctx, const float *x, const float *w, float eps, int64_t n, int64_t dim, float *y);
    /* b may be NULL (no bias); y == x allowed. */
    idefics_status (*layernorm)(void *ctx, const float *x, const float *w, const float *b, float eps, int64_t n,
                                int64_t dim, float *y);
    /* In place on x[n] rows (stride floats apart) of n_heads heads; row i is at
     * position pos0 + i. head_dim even; pairs (d, d + head_dim/2) rotate. */
    idefics_status (*rope)(void *ctx, float *x, int64_t n, int64_t stride, int n_heads, int head_dim, int pos0,
                           float theta);
    idefics_status (*attention)(void *ctx, const idf_attn *a);
    /* Elementwise, in place, over n floats. */
    idefics_status (*gelu)(void *ctx, float *x, int64_t n);
    idefics_status (*quick_gelu)(void *ctx, float *x, int64_t n);
    idefics_status (*relu)(void *ctx, float *x, int64_t n);
    idefics_status (*silu_mul)(void *ctx, float *g, const float *u, int64_t n);
    idefics_status (*add)(void *ctx, float *y, const float *x, int64_t n);
    idefics_status (*scale)(void *ctx, float *x, float s, int64_t n);
    /* h[n, dim] += gate[dim] (broadcast over rows) * a[n, dim] */
    idefics_status (*gated_add)(void *ctx, float *h, const float *gate, const float *a, int64_t n, int64_t dim);

    /* Device-resident host memory (both optional, for device backends; NULL on
     * the CPU). register_host: [p, p + bytes) is memory the caller will pass to
     * ops again and again (activation scratch, KV cache, image slots) and keeps
     * allocated until the backend is freed. The backend may then keep a device
     * view of it, and ops whose arguments lie in registered memory may return
     * before their results reach host memory. The caller must call
     * host_access on a range before the host reads or writes it itself (memcpy,
     * a CPU op, returning it to the user); p == NULL means all registered
     * memory. Ops on unregistered memory stay synchronous, as above. */
    idefics_status (*register_host)(void *ctx, void *p, size_t bytes);
    idefics_status (*host_access)(void *ctx, const void *p, size_t bytes);

    /* (optional) Why the backend's last failed op failed, in words a bug
     * report can use (for OpenCL: the call, its error code and name, the
     * kernel and its global and local sizes), or "" when it has nothing to
     * add. Valid until the next op; NULL slot = nothing to add. */
    const char *(*last_error)(void *ctx);
};

/* The scalar fp32 reference backend (backend_ref.c). n_threads <= 0 = all cores. */
idefics_status idf_backend_ref_create(int n_threads, const idf_alloc *alloc, idf_backend **out, idf_err *err);

/* The fast CPU backend (backend_cpu.c): SIMD kernels chosen at run time. The
 * ISA levels, for tests and benchmarks that run one path on purpose. */
typedef enum idf_cpu_isa {
    IDF_CPU_ISA_SCALAR = 0,
    IDF_CPU_ISA_AVX2,         /* x86-64: AVX2 + FMA + F16C */
    IDF_CPU_ISA_AVX512,       /* x86-64: AVX-512 F/BW/VL + VNNI */
    IDF_CPU_ISA_NEON,         /* AArch64 baseline */
    IDF_CPU_ISA_NEON_DOTPROD, /* AArch64 with sdot (asimddp) */
    IDF_CPU_ISA_COUNT
} idf_cpu_isa;
/* The best level this CPU runs (capped by the environment variable
 * IDEFICS_CPU_ISA=scalar|avx2|avx512|neon|neon-dotprod). */
idefics_status idf_backend_cpu_create(int n_threads, const idf_alloc *alloc, idf_backend **out, idf_err *err);
/* One level; IDEFICS_ERR_NO_DEVICE when this CPU (or this build) cannot run it. */
idefics_status idf_backend_cpu_create_isa(idf_cpu_isa isa, int n_threads, const idf_alloc *alloc, idf_backend **out,
                                          idf_err *err);
bool idf_cpu_isa_available(idf_cpu_isa isa);
const char *idf_cpu_isa_name(idf_cpu_isa isa);


/* Context-free elementwise ops of the reference backend, shared by backends
 * whose own version would be the same loop (backend_ref.c). */
idefics_status idf_ref_relu(void *ctx, float *x, int64_t n);
idefics_status idf_ref_add(void *ctx, float *y, const float *x, int64_t n);
idefics_status idf_ref_scale(void *ctx, float *x, float s, int64_t n);
idefics_status idf_ref_gated_add(void *ctx, float *h, const float *gate, const float *a, int64_t n, int64_t dim);
idefics_status idf_ref_rope(void *ctx, float *x, int64_t n, int64_t stride, int n_heads, int head_dim, int pos0,
                            float theta);

/* Convenience for callers: does b handle d (supports_op absent = yes)? */
static inline bool idf_backend_supports(const idf_backend *b, const idf_op_desc *d) {
    return b && (!b->supports_op || b->supports_op(b->ctx, d));
}

#endif /* IDF_BACKEND_H */
