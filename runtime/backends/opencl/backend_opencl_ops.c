/*
 * backend_opencl_ops.c - the OpenCL backend's ops (backend.h vtable) for one
 * session: its command queue, kernels and scratch on a shared idf_ocl_device.
 *
 * Memory. Every array an op touches is bound as a (cl_mem, byte offset) pair,
 * found in this order:
 *   1. a registered range (backend.h register_host: forward.c registers the
 *      session's scratch, KV cache and image slots once). Each is one buffer for
 *      the session: CL_MEM_USE_HOST_PTR where the tuning allows host pointers
 *      (zero-copy on unified memory), else a device buffer. Ownership moves by
 *      ranges: host_access maps a range for the host (a blocking map, or a read
 *      for device buffers), and the next op using the buffer unmaps every
 *      mapped range of it (or writes it back). Ops on registered memory only
 *      enqueue: results stay on the device until the host asks for them, so a
 *      decode step runs without a create, map or finish per op;
 *   2. a model vector (norm weights, biases, gates: idf_ocl_const_find) or a
 *      weight (idf_weight.backend_data), read-only device buffers made at load;
 *   3. anything else (op tests, benchmarks, the caller's logits) is wrapped for
 *      the call as before: USE_HOST_PTR or COPY_HOST_PTR, outputs published by
 *      a blocking map/unmap or read, and the op ends with clFinish, so ops on
 *      unregistered memory are synchronous.
 * Weights without model buffers (op tests, benchmarks) are wrapped per call,
 * chunked at tile boundaries when over the device's max alloc.
 *
 * Arithmetic: fp32, with IDF_CT (prelude.cl) for short inner products, which
 * is half only on builds the device chose at load (tuning fp16 = 1 and
 * cl_khr_fp16, self-tested).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "backend_opencl.h"
#include "quant.h"

enum {
    K_MM_Q4,
    K_MM_Q4_NB1,
    K_MM_Q8,
    K_MM_Q8_NB1,
    K_MM_F,
    K_MM_F_NB1,
    K_GEMM,
    K_GET_ROWS,
    K_RMSNORM,
    K_LAYERNORM,
    K_ROPE,
    K_ATTN_F32,
    K_ATTN_F16,
    K_ATTN_Q8,
    K_ATTN_MERGE,
    K_GELU,
    K_QUICK_GELU,
    K_RELU,
    K_SILU_MUL,
    K_ADD,
    K_SCALE,
    K_GATED_ADD,
    K_COUNT
};

static const char *const kernel_names[K_COUNT] = {
    "matmul_q4", "matmul_q4_nb1", "matmul_q8",  "matmul_q8_nb1", "matmul_f",      "matmul_f_nb1", "gemm_tiled",
    "get_rows",  "rmsnorm",       "layernorm",  "rope",          "attention_f32", "attention_f16",
    "attention_q8", "attention_merge", "gelu",
    "quick_gelu", "relu",         "silu_mul",   "add",           "scale",         "gated_add"};

#define MAX_PIECES 8 /* mapped ranges per registered buffer; more: the buffer is mapped whole */

typedef struct ocl_piece {
    size_t off, len;
    void *mp; /* clEnqueueMapBuffer's pointer (USE_HOST_PTR), else NULL */
} ocl_piece;

/* A registered host range (register_host). Mapped pieces belong to the host. */
typedef struct ocl_region {
    uint8_t *base;
    size_t bytes;
    cl_mem mem;
    bool host_ptr; /* USE_HOST_PTR: pieces are maps; else a device buffer: pieces are host copies */
    unsigned n_pc;
    ocl_piece pc[MAX_PIECES];
} ocl_region;

typedef struct ocl_ctx {
    idf_alloc alloc;
    idf_ocl_device *dev;
    bool owns_dev; /* standalone backends (tests, benchmarks) */
    const idf_cl_api *cl;
    cl_command_queue q;
    cl_kernel k[K_COUNT];
    size_t kmax_wg[K_COUNT]; /* CL_KERNEL_WORK_GROUP_SIZE, at most the device's (probe) max_wg */
    uint64_t klocal[K_COUNT]; /* local memory left for __local arguments: the device's less CL_KERNEL_LOCAL_MEM_SIZE */
    cl_mem dummy;            /* bound where an optional array (bias, mask) is absent */
    cl_mem book;             /* the Q4 codebook, a kernel argument (quant.h says why) */
    cl_mem scores;           /* attention scratch */
    size_t scores_bytes;
    cl_mem rope_inv; /* inv_freq for (rope_theta, rope_hd) */
    float rope_theta;
    int rope_hd;
    ocl_region *reg;
    size_t n_reg, cap_reg;
    idf_ocl_op_stats stats[IDF_OP_COUNT];
    char err[480]; /* the current op's first failure in words (last_error); cleared when an op starts */
} ocl_ctx;

/* ---------------------------------------------------------------- helpers */

#define MAX_ELEMS ((int64_t)1 << 31) /* kernels index with uint; sizes are checked against this */

/* Record the current op's first failure: which call, its error code and name
 * (what last_error reports, and forward.c appends to the op's error). */
static cl_int note(ocl_ctx *c, cl_int e, const char *call, size_t bytes) {
    if (e != CL_SUCCESS && !c->err[0])
        snprintf(c->err, sizeof c->err, "%s%s%.0f%s returned %s (%d)", call, bytes ? " of " : "", (double)bytes,
                 bytes ? " bytes" : "", idf_cl_err_name(e), (int)e);
    return e;
}

static void op_begin(ocl_ctx *c) {
    c->err[0] = '\0';
}

static const char *ocl_last_error(void *vctx) {
    return ((const ocl_ctx *)vctx)->err;
}

/* A buffer over host memory: read-only input or read-write output. */
static cl_mem host_buf(ocl_ctx *c, const void *p, size_t bytes, bool out) {
    const bool zc = c->dev->tune.use_host_ptr;
    cl_mem_flags fl = (out ? CL_MEM_READ_WRITE : CL_MEM_READ_ONLY) | (zc ? CL_MEM_USE_HOST_PTR : CL_MEM_COPY_HOST_PTR);
    cl_int e = CL_SUCCESS;
    cl_mem m = c->cl->clCreateBuffer(c->dev->ctx, fl, bytes ? bytes : 4, (void *)(uintptr_t)p, &e);
    note(c, e == CL_SUCCESS && !m ? CL_MEM_OBJECT_ALLOCATION_FAILURE : e,
         zc ? "clCreateBuffer(USE_HOST_PTR)" : "clCreateBuffer(COPY_HOST_PTR)", bytes);
    return e == CL_SUCCESS ? m : NULL;
}

/* Make an output's new contents visible at its host pointer. */
static cl_int finish_out(ocl_ctx *c, cl_mem m, void *p, size_t bytes) {
    if (c->dev->tune.use_host_ptr) {
        cl_int e = CL_SUCCESS;
        void *mp = c->cl->clEnqueueMapBuffer(c->q, m, CL_TRUE, CL_MAP_READ, 0, bytes, 0, NULL, NULL, &e);
        if (e != CL_SUCCESS)
            return note(c, e, "clEnqueueMapBuffer (an output)", bytes);
        e = note(c, c->cl->clEnqueueUnmapMemObject(c->q, m, mp, 0, NULL, NULL), "clEnqueueUnmapMemObject", 0);
        return e == CL_SUCCESS ? note(c, c->cl->clFinish(c->q), "clFinish", 0) : e;
    }
    return note(c, c->cl->clEnqueueReadBuffer(c->q, m, CL_TRUE, 0, bytes, p, 0, NULL, NULL),
                "clEnqueueReadBuffer (an output)", bytes);
}

static void rel(ocl_ctx *c, cl_mem m) {
    if (m)
        c->cl->clReleaseMemObject(m);
}

/* ------------------------------------------------- registered host ranges */

static ocl_region *region_of(ocl_ctx *c, const void *p, size_t bytes) {
    const uintptr_t a = (uintptr_t)p;
    for (size_t i = 0; i < c->n_reg; i++) {
        ocl_region *r = &c->reg[i];
        const uintptr_t b = (uintptr_t)r->base;
        if (a >= b && a - b <= r->bytes && bytes <= r->bytes - (a - b))
            return r;
    }
    return NULL;
}

/* Piece i of r back to the device (unmap, or write the host copy). */
static cl_int piece_release(ocl_ctx *c, ocl_region *r, unsigned i) {
    const ocl_piece *p = &r->pc[i];
    const cl_int e = r->host_ptr ? c->cl->clEnqueueUnmapMemObject(c->q, r->mem, p->mp, 0, NULL, NULL)
                                  : c->cl->clEnqueueWriteBuffer(c->q, r->mem, CL_FALSE, p->off, p->len,
                                                                r->base + p->off, 0, NULL, NULL);
    note(c, e, r->host_ptr ? "clEnqueueUnmapMemObject (session memory)" : "clEnqueueWriteBuffer (session memory)",
         r->host_ptr ? 0 : p->len);
    r->pc[i] = r->pc[--r->n_pc];
    return e;
}

/* Every mapped piece of r back to the device: before a kernel uses r. */
static cl_int region_to_device(ocl_ctx *c, ocl_region *r) {
    cl_int e = CL_SUCCESS;
    while (r->n_pc && e == CL_SUCCESS)
        e = piece_release(c, r, r->n_pc - 1);
    return e;
}

/* [off, off + len) of r to the host (blocking: earlier kernels have finished). */
static cl_int region_to_host(ocl_ctx *c, ocl_region *r, size_t off, size_t len) {
    for (unsigned i = 0; i < r->n_pc; i++)
        if (r->pc[i].off <= off && off + len <= r->pc[i].off + r->pc[i].len)
            return CL_SUCCESS; /* the host has it already */
    /* pieces overlapping the range merge with it (two maps of one byte for
     * writing are undefined); with no room left, the whole buffer */
    cl_int e = CL_SUCCESS;
    size_t lo = off, hi = off + len;
    for (unsigned i = 0; i < r->n_pc && e == CL_SUCCESS;) {
        const ocl_piece *p = &r->pc[i];
        if (p->off < hi && off < p->off + p->len) {
            lo = p->off < lo ? p->off : lo;
            hi = p->off + p->len > hi ? p->off + p->len : hi;
            e = piece_release(c, r, i);
        } else {
            i++;
        }
    }
    if (e == CL_SUCCESS && r->n_pc == MAX_PIECES) {
        e = region_to_device(c, r);
        lo = 0;
        hi = r->bytes;
    }
    if (e != CL_SUCCESS)
        return e;
    ocl_piece *p = &r->pc[r->n_pc];
    *p = (ocl_piece){lo, hi - lo, NULL};
    if (r->host_ptr)
        p->mp = c->cl->clEnqueueMapBuffer(c->q, r->mem, CL_TRUE, CL_MAP_READ | CL_MAP_WRITE, lo, hi - lo, 0, NULL,
                                          NULL, &e);
    else
        e = c->cl->clEnqueueReadBuffer(c->q, r->mem, CL_TRUE, lo, hi - lo, r->base + lo, 0, NULL, NULL);
    note(c, e, r->host_ptr ? "clEnqueueMapBuffer (session memory)" : "clEnqueueReadBuffer (session memory)", hi - lo);
    if (e == CL_SUCCESS)
        r->n_pc++;
    return e;
}

static idefics_status cl_fail(cl_int e) {
    return e == CL_MEM_OBJECT_ALLOCATION_FAILURE || e == CL_OUT_OF_HOST_MEMORY ? IDEFICS_ERR_OUT_OF_MEMORY
                                                                               : IDEFICS_ERR_BACKEND;
}

static idefics_status ocl_register_host(void *vctx, void *p, size_t bytes) {
    ocl_ctx *c = vctx;
    op_begin(c);
    if (!p || !bytes)
        return IDEFICS_OK;
    /* a range over the device's largest buffer stays unregistered (its ops are
     * wrapped per call, as before) */
    if (bytes > c->dev->probe.max_alloc || region_of(c, p, 1) || region_of(c, (uint8_t *)p + bytes - 1, 1))
        return IDEFICS_OK;
    if (c->n_reg == c->cap_reg) {
        const size_t cap = c->cap_reg ? 2 * c->cap_reg : 32;
        ocl_region *nr = idf_realloc(&c->alloc, c->reg, cap * sizeof *nr);
        if (!nr)
            return IDEFICS_ERR_OUT_OF_MEMORY;
        c->reg = nr;
        c->cap_reg = cap;
    }
    const bool hp = c->dev->tune.use_host_ptr;
    cl_int e = CL_SUCCESS;
    cl_mem m = c->cl->clCreateBuffer(c->dev->ctx, CL_MEM_READ_WRITE | (hp ? CL_MEM_USE_HOST_PTR : 0), bytes,
                                     hp ? p : NULL, &e);
    if (!m || e != CL_SUCCESS)
        return cl_fail(note(c, e != CL_SUCCESS ? e : CL_MEM_OBJECT_ALLOCATION_FAILURE,
                            hp ? "clCreateBuffer(USE_HOST_PTR, session memory)" : "clCreateBuffer(session memory)",
                            bytes));
    ocl_region *r = &c->reg[c->n_reg];
    *r = (ocl_region){.base = p, .bytes = bytes, .mem = m, .host_ptr = hp};
    /* the host owns it at first: mapped (a map of fresh memory costs nothing
     * on unified memory), or, for a device buffer, the host copy is current */
    if (hp) {
        if ((e = region_to_host(c, r, 0, bytes)) != CL_SUCCESS) {
            rel(c, m);
            return cl_fail(e);
        }
    } else {
        r->pc[r->n_pc++] = (ocl_piece){0, bytes, NULL};
    }
    c->n_reg++;
    return IDEFICS_OK;
}

static idefics_status ocl_host_access(void *vctx, const void *p, size_t bytes) {
    ocl_ctx *c = vctx;
    op_begin(c);
    cl_int e = CL_SUCCESS;
    if (!p) {
        for (size_t i = 0; i < c->n_reg && e == CL_SUCCESS; i++)
            e = region_to_host(c, &c->reg[i], 0, c->reg[i].bytes);
    } else if (bytes) {
        ocl_region *r = region_of(c, p, bytes);
        if (r) /* unregistered memory is the host's already: ops on it are synchronous */
            e = region_to_host(c, r, (size_t)((const uint8_t *)p - r->base), bytes);
    }
    return e == CL_SUCCESS ? IDEFICS_OK : cl_fail(e);
}

/* --------------------------------------------------- binding op arguments */

#define MAX_TMP 8

/* The buffers one op call made (unregistered host memory) and must publish
 * and release when it ends. */
typedef struct opmem {
    unsigned n;
    cl_mem m[MAX_TMP];
    void *out[MAX_TMP]; /* host pointer of an output, else NULL */
    size_t bytes[MAX_TMP];
} opmem;

/* A kernel argument: (buffer, byte offset). */
typedef struct barg {
    cl_mem m;
    cl_ulong off;
} barg;

/* Bind [p, p + bytes) for a kernel; out: the kernel writes it. */
static cl_int bind(ocl_ctx *c, opmem *om, const void *p, size_t bytes, bool out, barg *b) {
    ocl_region *r = region_of(c, p, bytes);
    if (r) {
        b->m = r->mem;
        b->off = (cl_ulong)((const uint8_t *)p - r->base);
        return region_to_device(c, r);
    }
    size_t off = 0;
    cl_mem km = out ? NULL : idf_ocl_const_find(c->dev, p, bytes, &off);
    if (km) {
        *b = (barg){km, off};
        return CL_SUCCESS;
    }
    for (unsigned i = 0; i < om->n; i++) /* the same range twice in one op (in-place): one buffer */
        if (om->m[i] && (const void *)om->out[i] == p && om->bytes[i] == bytes) {
            *b = (barg){om->m[i], 0};
            return CL_SUCCESS;
        }
    if (om->n == MAX_TMP)
        return note(c, CL_OUT_OF_RESOURCES, "binding more than MAX_TMP host arrays in one op", 0);
    cl_mem m = host_buf(c, p, bytes, out);
    if (!m)
        return CL_MEM_OBJECT_ALLOCATION_FAILURE;
    om->m[om->n] = m;
    om->out[om->n] = out ? (void *)(uintptr_t)p : NULL;
    om->bytes[om->n] = bytes;
    om->n++;
    *b = (barg){m, 0};
    return CL_SUCCESS;
}

/* End of an op: publish wrapped outputs, wait if the op touched unregistered
 * host memory (the caller may free it once we return), release the wraps. */
static cl_int op_end(ocl_ctx *c, opmem *om, cl_int e) {
    for (unsigned i = 0; i < om->n && e == CL_SUCCESS; i++)
        if (om->out[i])
            e = finish_out(c, om->m[i], om->out[i], om->bytes[i]);
    if (om->n && e == CL_SUCCESS)
        e = note(c, c->cl->clFinish(c->q), "clFinish", 0);
    if (e != CL_SUCCESS && om->n)
        c->cl->clFinish(c->q); /* nothing may still read a wrapped host range */
    for (unsigned i = 0; i < om->n; i++)
        rel(c, om->m[i]);
    om->n = 0;
    return e;
}

typedef struct karg {
    size_t size;
    const void *ptr; /* NULL: __local of size bytes */
} karg;
#define KA(v) ((karg){sizeof(v), &(v)})
#define KL(bytes) ((karg){(bytes), NULL})
#define KB(b) KA((b).m), KA((b).off) /* a (buffer, byte offset) pair: two arguments */

/* "160x24" */
static void fmt_sizes(char *buf, size_t size, cl_uint dims, const size_t *v) {
    int o = 0;
    buf[0] = '\0';
    for (cl_uint d = 0; d < dims && o >= 0 && (size_t)o < size; d++)
        o += snprintf(buf + o, size - (size_t)o, "%s%zu", d ? "x" : "", v[d]);
}

/* The launch's failure in words: the call, the code, the kernel, its sizes
 * and the limits they were chosen from. */
static cl_int launch_fail(ocl_ctx *c, cl_int e, const char *call, int ki, cl_uint dims, const size_t *gsz,
                          const size_t *lsz) {
    if (c->err[0])
        return e;
    char g[64], l[64] = "NULL (driver's choice)";
    fmt_sizes(g, sizeof g, dims, gsz);
    if (lsz)
        fmt_sizes(l, sizeof l, dims, lsz);
    snprintf(c->err, sizeof c->err,
             "%s returned %s (%d) for kernel %s, global %s, local %s (device: max work-group %u, local memory %llu "
             "bytes; kernel: max work-group %zu)",
             call, idf_cl_err_name(e), (int)e, kernel_names[ki], g, l, c->dev->probe.max_wg,
             (unsigned long long)c->dev->probe.local_mem, c->kmax_wg[ki]);
    return e;
}

static cl_int launch(ocl_ctx *c, int ki, const karg *a, int na, cl_uint dims, const size_t *gsz, const size_t *lsz) {
    for (int i = 0; i < na; i++) {
        const cl_int e = c->cl->clSetKernelArg(c->k[ki], (cl_uint)i, a[i].size, a[i].ptr);
        if (e != CL_SUCCESS) {
            char call[64];
            snprintf(call, sizeof call, "clSetKernelArg(arg %d, %zu bytes%s)", i, a[i].size, a[i].ptr ? "" : " local");
            return launch_fail(c, e, call, ki, dims, gsz, lsz);
        }
    }
    for (cl_uint d = 0; d < dims; d++)
        if (gsz[d] == 0)
            return CL_SUCCESS;
    const cl_int e = c->cl->clEnqueueNDRangeKernel(c->q, c->k[ki], dims, NULL, gsz, lsz, 0, NULL, NULL);
    return e == CL_SUCCESS ? e : launch_fail(c, e, "clEnqueueNDRangeKernel", ki, dims, gsz, lsz);
}

static uint64_t weight_bytes(const idf_weight *w) {
    const uint64_t dims[2] = {(uint64_t)w->rows, (uint64_t)w->cols};
    uint64_t b = 0, unit;
    return idfx_tensor_nbytes(w->type, w->layout, w->tile_rows, 2, dims, &b, &unit) ? b : 0;
}

/* The kernels read ROWMAJOR and ROWTILE; sizes index with 32-bit ints. */
static bool weight_ok(const idf_weight *w) {
    return idf_weight_ok(w) && w->layout != IDFX_LAYOUT_GROUPTILE && w->rows < MAX_ELEMS && w->cols < MAX_ELEMS;
}

/* Rows per chunk of w on this device: the model's split (backend_data), else
 * what fits the max alloc (op tests, benchmarks: buffers made per call). */
static int64_t chunk_rows(const ocl_ctx *c, const idf_weight *w, uint64_t bytes) {
    if (w->backend_data)
        return ((const idf_ocl_weight *)w->backend_data)->rows_per;
    return bytes <= c->dev->probe.max_alloc ? w->rows : idf_ocl_rows_per_chunk(w, c->dev->probe.max_alloc);
}

/* Chunk ci of w (rows [r0, r1)): the model's buffer, or one made for this call (*tmp). */
static cl_mem weight_buf(ocl_ctx *c, const idf_weight *w, uint32_t ci, int64_t r0, int64_t r1, cl_mem *tmp) {
    *tmp = NULL;
    if (w->backend_data) {
        const idf_ocl_weight *ow = w->backend_data;
        return ci < ow->n ? ow->mem[ci] : NULL;
    }
    uint64_t off, len;
    if (w->layout == IDFX_LAYOUT_ROWTILE) {
        const uint64_t qb = w->type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
        const uint64_t tile = (uint64_t)w->cols / IDFX_QK * w->tile_rows * (IDFX_SCALE_BYTES + qb);
        off = (uint64_t)(r0 / w->tile_rows) * tile;
        len = (uint64_t)((r1 - r0 + w->tile_rows - 1) / w->tile_rows) * tile;
    } else {
        const uint64_t row = (uint64_t)w->cols * (w->type == IDFX_TYPE_F32 ? 4 : 2);
        off = (uint64_t)r0 * row;
        len = (uint64_t)(r1 - r0) * row;
    }
    if (len > c->dev->probe.max_alloc || len > SIZE_MAX) {
        note(c, CL_INVALID_BUFFER_SIZE, "a weight chunk over the device's max alloc", (size_t)len);
        return NULL;
    }
    *tmp = host_buf(c, (const uint8_t *)w->data + off, (size_t)len, false);
    return *tmp;
}

static void account(ocl_ctx *c, idf_op op, double t0, uint64_t rd, uint64_t wrd) {
    idf_ocl_op_stats *s = &c->stats[op];
    s->calls++;
    s->ms += idf_time_ms() - t0;
    s->bytes_rd += rd;
    s->w_bytes += wrd;
}

/* ------------------------------------------------------------ supports_op */


/* attention.cl's kernel for a KV type. */
static int attn_kernel(int kv_type) {
    return kv_type == IDEFICS_KV_F32 ? K_ATTN_F32 : kv_type == IDEFICS_KV_F16 ? K_ATTN_F16 : K_ATTN_Q8;
}

/* attention.cl's size rule: the tuning's wg_attn, halved until it fits both
 * kernels' work-group limits and the query head plus two wg-float reduction
 * arrays fit the local memory left to the kernel; each work-item owns at most
 * ATT_MAXD (4) output dimensions, so head_dim <= 4 wg. 0 = no size fits (the
 * op is declined and runs on the CPU). */
static size_t attn_wg(const ocl_ctx *c, int ki, int64_t head_dim) {
    size_t wg = c->dev->tune.wg_attn;
    while (wg > 1 && (wg > c->kmax_wg[ki] || wg > c->kmax_wg[K_ATTN_MERGE] ||
                      (uint64_t)(head_dim + 2 * (int64_t)wg) * 4 > c->klocal[ki]))
        wg /= 2;
    if (wg > c->kmax_wg[ki] || wg > c->kmax_wg[K_ATTN_MERGE] || (uint64_t)head_dim > 4 * (uint64_t)wg ||
        (uint64_t)(head_dim + 2 * (int64_t)wg) * 4 > c->klocal[ki])
        return 0;
    return wg;
}

static bool ocl_supports(void *vctx, const idf_op_desc *d) {
    ocl_ctx *c = vctx;
    switch (d->op) {
    case IDF_OP_MATMUL:
    case IDF_OP_GET_ROWS: {
        if (d->wlayout == IDFX_LAYOUT_ROWTILE) {
            if ((d->wtype != IDFX_TYPE_Q4 && d->wtype != IDFX_TYPE_Q8) || d->k % IDFX_QK)
                return false;
        } else if (d->wlayout != IDFX_LAYOUT_ROWMAJOR || (d->wtype != IDFX_TYPE_F32 && d->wtype != IDFX_TYPE_F16)) {
            return false;
        }
        /* A weight over the device's largest buffer is split along rows (at
         * tile boundaries); one chunk unit must fit: the largest tile (64
         * rows), or one row. */
        const uint64_t unit = d->wlayout == IDFX_LAYOUT_ROWTILE
                                  ? (uint64_t)IDFX_MAX_TILE_ROWS * (uint64_t)(d->k / IDFX_QK) *
                                        (IDFX_SCALE_BYTES + (d->wtype == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES))
                                  : (uint64_t)d->k * (d->wtype == IDFX_TYPE_F32 ? 4 : 2);
        if (unit > c->dev->probe.max_alloc)
            return false;
        return (uint64_t)d->n * (uint64_t)d->k * 4 <= c->dev->probe.max_alloc;
    }
    case IDF_OP_ATTENTION: /* attention.cl's size rule (attn_wg) */
        return (d->kv_type == IDEFICS_KV_F32 || d->kv_type == IDEFICS_KV_F16 || d->kv_type == IDEFICS_KV_Q8) &&
               d->k > 0 && attn_wg(c, attn_kernel(d->kv_type), d->k) > 0;
    default:
        return d->op < IDF_OP_COUNT;
    }
}

/* ----------------------------------------------------------------- matmul */

/* Rows [r0, r1) of w (one chunk, its buffer wm) into y's columns r0.. */
static cl_int matmul_chunk(ocl_ctx *c, const idf_weight *w, cl_mem wm, int64_t r0, int64_t r1, const float *bias,
                           barg xb, int64_t n, float *y, int64_t ldy, uint64_t *w_read) {
    opmem om = {0};
    const uint64_t ye = (uint64_t)(n - 1) * (uint64_t)ldy + (uint64_t)(r1 - r0);
    barg yb, bb = {c->dummy, 0};
    cl_int e = bind(c, &om, y + r0, (size_t)ye * 4, true, &yb);
    if (e == CL_SUCCESS && bias)
        e = bind(c, &om, bias + r0, (size_t)(r1 - r0) * 4, false, &bb);
    const cl_uint rows = (cl_uint)(r1 - r0), k = (cl_uint)w->cols, nn = (cl_uint)n, ld = (cl_uint)ldy,
                  hb = bias ? 1u : 0u;
    const idf_ocl_tuning *t = &c->dev->tune;
    const unsigned nb = n == 1 ? 1 : t->mm_nb;
    uint64_t len; /* this chunk's bytes */
    if (w->layout == IDFX_LAYOUT_ROWTILE) {
        const uint64_t qb = w->type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
        len = (uint64_t)((r1 - r0 + w->tile_rows - 1) / w->tile_rows) * ((uint64_t)w->cols / IDFX_QK) *
              w->tile_rows * (IDFX_SCALE_BYTES + qb);
    } else {
        len = (uint64_t)(r1 - r0) * (uint64_t)w->cols * (w->type == IDFX_TYPE_F32 ? 4 : 2);
    }
    /* many input rows: the tiled GEMM (each weight byte read once per gm_tn rows) */
    const size_t glx = t->gm_tm / t->gm_wm, gly = t->gm_tn / t->gm_wn;
    if (e == CL_SUCCESS && n >= (int64_t)t->gm_min_n && glx * gly <= c->kmax_wg[K_GEMM]) {
        const cl_uint type = w->type, R = w->tile_rows ? w->tile_rows : 1;
        const size_t g[2] = {((size_t)rows + t->gm_tm - 1) / t->gm_tm * glx, ((size_t)n + t->gm_tn - 1) / t->gm_tn * gly},
                     l[2] = {glx, gly};
        karg a[15] = {KA(wm), KA(type), KA(R),  KA(rows), KB(xb),    KA(nn), KA(k),
                      KB(bb), KA(hb),   KB(yb), KA(ld),   KA(c->book)};
        e = launch(c, K_GEMM, a, 15, 2, g, l);
        *w_read += len * (g[1] / gly);
    } else if (e == CL_SUCCESS && w->layout == IDFX_LAYOUT_ROWTILE) {
        /* matmul_q4/q8.cl's size rule: RG rows (R, or a power of two dividing
         * it) times lanes work-items within the kernel's work-group limit, and
         * their partial sums within its local memory; lanes shrink first */
        const bool q4 = w->type == IDFX_TYPE_Q4;
        const int ki = q4 ? (nb == 1 ? K_MM_Q4_NB1 : K_MM_Q4) : (nb == 1 ? K_MM_Q8_NB1 : K_MM_Q8);
        const cl_uint R = w->tile_rows, ng = k / IDFX_QK;
        cl_uint RG = R;
        size_t lanes = t->mm_lanes;
        const uint64_t cbytes = q4 ? 16 * sizeof(float) : 0;
#define MM_FITS() (RG * lanes <= c->kmax_wg[ki] && (uint64_t)RG * lanes * nb * sizeof(float) + cbytes <= c->klocal[ki])
        while (lanes > 1 && !MM_FITS())
            lanes /= 2;
        while (RG > 1 && !MM_FITS())
            RG /= 2;
        if (!MM_FITS()) {
            const size_t g1[2] = {((size_t)rows + R - 1) / R * R, ((size_t)n + nb - 1) / nb}, l1[2] = {1, 1};
            e = launch_fail(c, CL_INVALID_WORK_GROUP_SIZE, "no launch: not even one work-item's partial sums fit", ki,
                            2, g1, l1);
        } else {
            const size_t ntiles = ((size_t)rows + R - 1) / R;
            const size_t g[2] = {ntiles * R * lanes, ((size_t)n + nb - 1) / nb}, l[2] = {RG * lanes, 1};
            karg a[18] = {KA(wm), KA(R),  KA(RG), KA(ng), KA(rows), KB(xb), KA(nn), KA(k), KB(bb), KA(hb), KB(yb),
                          KA(ld), KL(RG * lanes * nb * sizeof(float)), KA(c->book), KL(16 * sizeof(float))};
            e = launch(c, ki, a, q4 ? 18 : 16, 2, g, l);
            *w_read += len * g[1];
        }
#undef MM_FITS
    } else if (e == CL_SUCCESS) {
        const int ki = nb == 1 ? K_MM_F_NB1 : K_MM_F;
        /* matmul_f.cl's size rule: rows first, then lanes, until the group and
         * its partial sums fit the kernel's limits */
        size_t lanes = t->f_lanes, rw = t->f_rows;
#define MF_FITS() (lanes * rw <= c->kmax_wg[ki] && (uint64_t)lanes * rw * nb * sizeof(float) <= c->klocal[ki])
        while (!MF_FITS() && rw > 1)
            rw /= 2;
        while (!MF_FITS() && lanes > 1)
            lanes /= 2;
#undef MF_FITS
        const cl_uint f16 = w->type == IDFX_TYPE_F16;
        const size_t g[3] = {lanes, ((size_t)rows + rw - 1) / rw * rw, ((size_t)n + nb - 1) / nb}, l[3] = {lanes, rw, 1};
        karg a[14] = {KA(wm), KA(f16), KA(rows), KB(xb), KA(nn), KA(k), KB(bb), KA(hb), KB(yb), KA(ld),
                      KL(lanes * rw * nb * sizeof(float))};
        e = launch(c, ki, a, 14, 3, g, l);
        *w_read += len * g[2];
    }
    return op_end(c, &om, e);
}

static idefics_status ocl_matmul(void *vctx, const idf_weight *w, const float *bias, const float *x, int64_t n,
                                 float *y, int64_t ldy) {
    ocl_ctx *c = vctx;
    if (!weight_ok(w) || !x || !y || n < 0 || ldy < w->rows || n >= MAX_ELEMS || ldy >= MAX_ELEMS)
        return IDEFICS_ERR_INVALID_ARG;
    if (n == 0)
        return IDEFICS_OK;
    op_begin(c);
    const double t0 = idf_time_ms();
    const uint64_t wb = weight_bytes(w), xe = (uint64_t)n * (uint64_t)w->cols,
                   ye = (uint64_t)(n - 1) * (uint64_t)ldy + (uint64_t)w->rows;
    const int64_t per = wb ? chunk_rows(c, w, wb) : 0;
    if (per <= 0 || xe >= (uint64_t)MAX_ELEMS || ye >= (uint64_t)MAX_ELEMS)
        return IDEFICS_ERR_UNSUPPORTED;
    opmem om = {0};
    barg xb;
    cl_int e = bind(c, &om, x, (size_t)xe * 4, false, &xb);
    uint64_t w_read = 0;
    if (e == CL_SUCCESS && c->dev->clblast_sgemm && w->type == IDFX_TYPE_F32 && per >= w->rows &&
        n >= (int64_t)c->dev->tune.clblast_min_n) {
        /* CLBlast SGEMM, row-major: y[n, m] = 1 * x[n, k] W[m, k]^T + 1 * y, with y
         * first set to the bias (or 0) on the host: C is read even when beta = 0
         * in some builds, and y may hold anything */
        if (e == CL_SUCCESS && region_of(c, y, (size_t)ye * 4))
            e = ocl_host_access(c, y, (size_t)ye * 4) ? CL_OUT_OF_RESOURCES : CL_SUCCESS;
        for (int64_t i = 0; e == CL_SUCCESS && i < n; i++)
            for (int64_t r = 0; r < w->rows; r++)
                y[i * ldy + r] = bias ? bias[r] : 0.0f;
        barg yb = {NULL, 0};
        cl_mem tmpw, wm = weight_buf(c, w, 0, 0, w->rows, &tmpw);
        if (e == CL_SUCCESS)
            e = bind(c, &om, y, (size_t)ye * 4, true, &yb);
        const int st = e == CL_SUCCESS && wm
                           ? c->dev->clblast_sgemm(101 /* row-major */, 111 /* A: no transpose */, 112 /* B: transpose */,
                                                   (size_t)n, (size_t)w->rows, (size_t)w->cols, 1.0f, xb.m,
                                                   (size_t)xb.off / 4, (size_t)w->cols, wm, 0, (size_t)w->cols, 1.0f,
                                                   yb.m, (size_t)yb.off / 4, (size_t)ldy, &c->q, NULL)
                           : -1;
        e = op_end(c, &om, st == 0 ? CL_SUCCESS : CL_OUT_OF_RESOURCES);
        if (tmpw) { /* the call is finished when op_end returns (a wrapped weight is unregistered memory) */
            c->cl->clFinish(c->q);
            rel(c, tmpw);
        }
        if (e != CL_SUCCESS)
            return cl_fail(e);
        c->stats[IDF_OP_MATMUL].lib_calls++;
        account(c, IDF_OP_MATMUL, t0, wb + xe * 4, wb);
        return IDEFICS_OK;
    }
    /* a weight over the max alloc runs chunk by chunk (rows at tile boundaries) */
    uint32_t ci = 0;
    for (int64_t r0 = 0; r0 < w->rows && e == CL_SUCCESS; r0 += per, ci++) {
        const int64_t r1 = r0 + per < w->rows ? r0 + per : w->rows;
        cl_mem tmpw, wm = weight_buf(c, w, ci, r0, r1, &tmpw);
        e = wm ? matmul_chunk(c, w, wm, r0, r1, bias, xb, n, y, ldy, &w_read) : CL_MEM_OBJECT_ALLOCATION_FAILURE;
        if (tmpw) { /* a weight wrapped for this call: its kernel must finish before the caller may free it */
            c->cl->clFinish(c->q);
            rel(c, tmpw);
        }
    }
    e = op_end(c, &om, e);
    if (e != CL_SUCCESS)
        return cl_fail(e);
    account(c, IDF_OP_MATMUL, t0, w_read + xe * 4 + (bias ? (uint64_t)w->rows * 4 : 0), w_read);
    return IDEFICS_OK;
}

/* n ids (all inside the chunk wm holds, relative to its first row) -> y. */
static cl_int get_rows_run(ocl_ctx *c, const idf_weight *w, cl_mem wm, const int32_t *ids, int64_t n, float *y) {
    const size_t ybytes = (size_t)n * (size_t)w->cols * 4;
    opmem om = {0};
    barg ib, yb;
    cl_int e = bind(c, &om, y, ybytes, true, &yb);
    if (e == CL_SUCCESS)
        e = bind(c, &om, ids, (size_t)n * 4, false, &ib);
    if (e == CL_SUCCESS) {
        const cl_uint type = w->type, R = w->tile_rows ? w->tile_rows : 1, k = (cl_uint)w->cols;
        const size_t g[2] = {k, (size_t)n};
        karg a[9] = {KA(wm), KA(type), KA(R), KA(k), KB(ib), KB(yb), KA(c->book)};
        e = launch(c, K_GET_ROWS, a, 9, 2, g, NULL);
    }
    return op_end(c, &om, e);
}
static idefics_status ocl_get_rows(void *vctx, const idf_weight *w, const int32_t *ids, int64_t n, float *y) {
    ocl_ctx *c = vctx;
    if (!weight_ok(w) || (!ids && n > 0) || !y || n < 0 || n >= MAX_ELEMS)
        return IDEFICS_ERR_INVALID_ARG;
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= w->rows)
            return IDEFICS_ERR_INVALID_ARG;
    if (n == 0)
        return IDEFICS_OK;
    if ((uint64_t)n * (uint64_t)w->cols >= (uint64_t)MAX_ELEMS)
        return IDEFICS_ERR_UNSUPPORTED;
    op_begin(c);
    const double t0 = idf_time_ms();
    const uint64_t wb = weight_bytes(w);
    const int64_t per = wb ? chunk_rows(c, w, wb) : 0;
    if (per <= 0)
        return IDEFICS_ERR_UNSUPPORTED;
    cl_int e = CL_SUCCESS;
    if (per >= w->rows) {
        cl_mem tmpw, wm = weight_buf(c, w, 0, 0, w->rows, &tmpw);
        e = wm ? get_rows_run(c, w, wm, ids, n, y) : CL_MEM_OBJECT_ALLOCATION_FAILURE;
        if (tmpw) {
            c->cl->clFinish(c->q);
            rel(c, tmpw);
        }
    } else { /* a table split over the max alloc: each id from its own chunk */
        for (int64_t i = 0; i < n && e == CL_SUCCESS; i++) {
            const uint32_t ci = (uint32_t)(ids[i] / per);
            const int64_t r0 = (int64_t)ci * per, r1 = r0 + per < w->rows ? r0 + per : w->rows;
            const int32_t local = (int32_t)(ids[i] - r0);
            cl_mem tmpw, wm = weight_buf(c, w, ci, r0, r1, &tmpw);
            e = wm ? get_rows_run(c, w, wm, &local, 1, y + i * w->cols) : CL_MEM_OBJECT_ALLOCATION_FAILURE;
            if (tmpw) {
                c->cl->clFinish(c->q);
                rel(c, tmpw);
            }
        }
    }
    if (e != CL_SUCCESS)
        return cl_fail(e);
    const uint64_t row_bytes = wb / (uint64_t)w->rows; /* about one row's share, tiles included */
    account(c, IDF_OP_GET_ROWS, t0, row_bytes * (uint64_t)n + (uint64_t)n * 4, row_bytes * (uint64_t)n);
    return IDEFICS_OK;
}

/* ------------------------------------------------------------------ norms */

static idefics_status norm(ocl_ctx *c, bool layer, const float *x, const float *w, const float *b, float eps,
                           int64_t n, int64_t dim, float *y) {
    if (!x || !w || !y || dim <= 0 || n < 0 || (uint64_t)n * (uint64_t)dim >= (uint64_t)MAX_ELEMS)
        return IDEFICS_ERR_INVALID_ARG;
    if (n == 0)
        return IDEFICS_OK;
    op_begin(c);
    const double t0 = idf_time_ms();
    const size_t bytes = (size_t)(n * dim) * 4;
    opmem om = {0};
    barg yb, xb, wb, bb = {c->dummy, 0};
    cl_int e = bind(c, &om, y, bytes, true, &yb); /* the output first: x == y then shares its buffer */
    if (e == CL_SUCCESS)
        e = bind(c, &om, x, bytes, false, &xb);
    if (e == CL_SUCCESS)
        e = bind(c, &om, w, (size_t)dim * 4, false, &wb);
    if (e == CL_SUCCESS && b)
        e = bind(c, &om, b, (size_t)dim * 4, false, &bb);
    if (e == CL_SUCCESS) {
        size_t wg = c->dev->tune.wg_norm; /* norm.cl's size rule */
        const int ki = layer ? K_LAYERNORM : K_RMSNORM;
        while (wg > 1 && (wg > c->kmax_wg[ki] || wg * sizeof(float) > c->klocal[ki]))
            wg /= 2;
        const size_t g = (size_t)n * wg;
        const cl_uint d = (cl_uint)dim, hb = b ? 1u : 0u;
        if (layer) {
            karg a[12] = {KB(xb), KB(wb), KB(bb), KA(hb), KA(eps), KA(d), KB(yb), KL(wg * sizeof(float))};
            e = launch(c, ki, a, 12, 1, &g, &wg);
        } else {
            karg a[9] = {KB(xb), KB(wb), KA(eps), KA(d), KB(yb), KL(wg * sizeof(float))};
            e = launch(c, ki, a, 9, 1, &g, &wg);
        }
    }
    if ((e = op_end(c, &om, e)) != CL_SUCCESS)
        return cl_fail(e);
    account(c, layer ? IDF_OP_LAYERNORM : IDF_OP_RMSNORM, t0, (uint64_t)bytes * (layer ? 3 : 2) + (uint64_t)dim * 4,
            0);
    return IDEFICS_OK;
}

static idefics_status ocl_rmsnorm(void *vctx, const float *x, const float *w, float eps, int64_t n, int64_t dim,
                                  float *y) {
    return norm(vctx, false, x, w, NULL, eps, n, dim, y);
}

static idefics_status ocl_layernorm(void *vctx, const float *x, const float *w, const float *b, float eps, int64_t n,
                                    int64_t dim, float *y) {
    return norm(vctx, true, x, w, b, eps, n, dim, y);
}

/* ------------------------------------------------------------------- rope */

/* The inv_freq table for (theta, head_dim), kept on the device: built on the
 * host with powf, exactly as the reference and transformers form it
 * (kernels/rope.cl says why). */
static cl_int rope_table(ocl_ctx *c, float theta, int head_dim) {
    if (c->rope_inv && c->rope_theta == theta && c->rope_hd == head_dim)
        return CL_SUCCESS;
    const int half = head_dim / 2;
    float *inv = idf_malloc(&c->alloc, (size_t)half * sizeof(float));
    if (!inv)
        return CL_OUT_OF_HOST_MEMORY;
    for (int d = 0; d < half; d++)
        inv[d] = 1.0f / powf(theta, (float)(2 * d) / (float)head_dim);
    rel(c, c->rope_inv);
    cl_int e = CL_SUCCESS;
    c->rope_inv = c->cl->clCreateBuffer(c->dev->ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, (size_t)half * 4, inv, &e);
    idf_free(&c->alloc, inv);
    if (!c->rope_inv || e != CL_SUCCESS) {
        c->rope_inv = NULL;
        return note(c, e != CL_SUCCESS ? e : CL_MEM_OBJECT_ALLOCATION_FAILURE, "clCreateBuffer (rope table)",
                    (size_t)half * 4);
    }
    c->rope_theta = theta;
    c->rope_hd = head_dim;
    return CL_SUCCESS;
}

static idefics_status ocl_rope(void *vctx, float *x, int64_t n, int64_t stride, int n_heads, int head_dim, int pos0,
                               float theta) {
    ocl_ctx *c = vctx;
    if (!x || head_dim <= 0 || head_dim % 2 || n_heads <= 0 || stride < (int64_t)n_heads * head_dim || pos0 < 0 ||
        n < 0)
        return IDEFICS_ERR_INVALID_ARG;
    if (n == 0)
        return IDEFICS_OK;
    const uint64_t el = (uint64_t)(n - 1) * (uint64_t)stride + (uint64_t)n_heads * (uint64_t)head_dim;
    if (el >= (uint64_t)MAX_ELEMS)
        return IDEFICS_ERR_UNSUPPORTED;
    op_begin(c);
    const double t0 = idf_time_ms();
    opmem om = {0};
    barg xb;
    cl_int e = rope_table(c, theta, head_dim);
    if (e == CL_SUCCESS)
        e = bind(c, &om, x, (size_t)el * 4, true, &xb);
    if (e == CL_SUCCESS) {
        const cl_uint st = (cl_uint)stride, hd = (cl_uint)head_dim;
        const cl_int p0 = pos0;
        const size_t g[3] = {(size_t)(head_dim / 2), (size_t)n_heads, (size_t)n};
        karg a[6] = {KB(xb), KA(c->rope_inv), KA(st), KA(hd), KA(p0)};
        e = launch(c, K_ROPE, a, 6, 3, g, NULL);
    }
    if ((e = op_end(c, &om, e)) != CL_SUCCESS)
        return cl_fail(e);
    account(c, IDF_OP_ROPE, t0, (uint64_t)n * n_heads * head_dim * 4, 0);
    return IDEFICS_OK;
}

/* -------------------------------------------------------------- attention */

/* Keys per work-group of attention_* (the split across the sequence, as on
 * the CPU): a decode row at depth 1700 gives 32 heads x 7 groups. */
#define OCL_ATT_KB 256

static idefics_status ocl_attention(void *vctx, const idf_attn *a) {
    ocl_ctx *c = vctx;
    IDF_FORWARD(idf_attn_check(a));
    const int64_t row = (int64_t)a->n_heads * a->head_dim;
    if (a->n_q == 0)
        return IDEFICS_OK;
    op_begin(c);
    /* keys the last (widest) row sees: the split covers these */
    const int64_t n_vis = a->causal && (int64_t)a->q_pos0 + a->n_q < a->n_kv ? (int64_t)a->q_pos0 + a->n_q : a->n_kv;
    const uint64_t nb = n_vis > 0 ? (uint64_t)(n_vis + OCL_ATT_KB - 1) / OCL_ATT_KB : 1;
    const uint64_t qe = (uint64_t)(a->n_q - 1) * (uint64_t)a->q_stride + (uint64_t)row,
                   oe = (uint64_t)(a->n_q - 1) * (uint64_t)a->out_stride + (uint64_t)row,
                   kve = a->n_kv ? (uint64_t)(a->n_kv - 1) * (uint64_t)a->kv_stride + (uint64_t)row : 0,
                   pe = (uint64_t)a->n_q * (uint64_t)a->n_heads * nb * (uint64_t)(a->head_dim + 2);
    /* bytes of the kve elements of a K or V run */
    const uint64_t kvbytes = a->kv_type == IDEFICS_KV_F32   ? kve * 4
                             : a->kv_type == IDEFICS_KV_F16 ? kve * 2
                                                            : (kve + IDFX_KVQ8_BLOCK - 1) / IDFX_KVQ8_BLOCK * IDFX_KVQ8_BYTES;
    if (qe >= (uint64_t)MAX_ELEMS || oe >= (uint64_t)MAX_ELEMS || kve >= (uint64_t)MAX_ELEMS ||
        pe >= (uint64_t)MAX_ELEMS || (uint64_t)a->n_q * a->n_kv >= (uint64_t)MAX_ELEMS)
        return IDEFICS_ERR_UNSUPPORTED;
    const int ki = attn_kernel(a->kv_type);
    const size_t wg = attn_wg(c, ki, a->head_dim);
    if (!wg)
        return IDEFICS_ERR_UNSUPPORTED;
    const double t0 = idf_time_ms();
    if (pe * 4 > c->scores_bytes) {
        /* the old scratch may still be in use by an enqueued kernel: released
         * (deferred by the driver) and replaced */
        rel(c, c->scores);
        cl_int e = CL_SUCCESS;
        c->scores = c->cl->clCreateBuffer(c->dev->ctx, CL_MEM_READ_WRITE, (size_t)pe * 4, NULL, &e);
        c->scores_bytes = c->scores ? (size_t)pe * 4 : 0;
        if (!c->scores)
            return cl_fail(note(c, e != CL_SUCCESS ? e : CL_MEM_OBJECT_ALLOCATION_FAILURE,
                                "clCreateBuffer (attention partials)", (size_t)pe * 4));
    }
    opmem om = {0};
    barg qb, ob, kb = {c->dummy, 0}, vb = {c->dummy, 0}, mb = {c->dummy, 0};
    cl_int e = bind(c, &om, a->out, (size_t)oe * 4, true, &ob);
    if (e == CL_SUCCESS)
        e = bind(c, &om, a->q, (size_t)qe * 4, false, &qb);
    if (e == CL_SUCCESS && kve)
        e = bind(c, &om, a->k, (size_t)kvbytes, false, &kb);
    if (e == CL_SUCCESS && kve)
        e = bind(c, &om, a->v, (size_t)kvbytes, false, &vb);
    if (e == CL_SUCCESS && a->mask)
        e = bind(c, &om, a->mask, (size_t)a->n_q * (size_t)a->n_kv * 4, false, &mb);
    if (e == CL_SUCCESS) {
        const cl_uint qs = (cl_uint)a->q_stride, kvs = (cl_uint)a->kv_stride, nkv = (cl_uint)a->n_kv,
                      hd = (cl_uint)a->head_dim, causal = a->causal, hm = a->mask != NULL, os = (cl_uint)a->out_stride,
                      kbl = OCL_ATT_KB, nbl = (cl_uint)nb;
        const cl_int p0 = a->q_pos0;
        const float scale = a->scale;
        const size_t g[3] = {(size_t)a->n_heads * wg, (size_t)a->n_q, (size_t)nb}, l[3] = {wg, 1, 1};
        karg args[21] = {KB(qb),    KA(qs),    KB(kb),     KB(vb),  KA(kvs), KA(nkv),
                         KA(hd),    KA(scale), KA(causal), KA(p0),  KB(mb),  KA(hm),
                         KA(c->scores), KA(kbl), KL(hd * sizeof(float)), KL(wg * sizeof(float)),
                         KL(wg * sizeof(float))};
        e = launch(c, ki, args, 21, 3, g, l);
        if (e == CL_SUCCESS) {
            karg margs[6] = {KA(c->scores), KA(nbl), KA(hd), KB(ob), KA(os)};
            e = launch(c, K_ATTN_MERGE, margs, 6, 2, g, l);
        }
    }
    if ((e = op_end(c, &om, e)) != CL_SUCCESS)
        return cl_fail(e);
    account(c, IDF_OP_ATTENTION, t0, (uint64_t)a->n_q * (uint64_t)row * 4 + 2 * kvbytes, 0);
    return IDEFICS_OK;
}

/* ------------------------------------------------------------ elementwise */

/* One launch over n elements: x (in/out), optional second input u and, for
 * gated_add, a third. */
static idefics_status elem(ocl_ctx *c, idf_op op, int ki, float *x, const float *u, const float *a3, const void *scal,
                           int64_t n, int64_t dim) {
    if (!x || n < 0 || n >= MAX_ELEMS)
        return IDEFICS_ERR_INVALID_ARG;
    if (n == 0)
        return IDEFICS_OK;
    op_begin(c);
    const double t0 = idf_time_ms();
    const size_t bytes = (size_t)n * 4;
    opmem om = {0};
    barg xb, ub, ab;
    cl_int e = bind(c, &om, x, bytes, true, &xb);
    if (e == CL_SUCCESS && u)
        e = bind(c, &om, u, op == IDF_OP_GATED_ADD ? (size_t)dim * 4 : bytes, false, &ub);
    if (e == CL_SUCCESS && a3)
        e = bind(c, &om, a3, bytes, false, &ab);
    if (e == CL_SUCCESS) {
        size_t wg = c->dev->tune.wg_elem; /* act.cl's size rule */
        while (wg > 1 && wg > c->kmax_wg[ki])
            wg /= 2;
        const size_t g = ((size_t)n + wg - 1) / wg * wg;
        const cl_uint nn = (cl_uint)n, d = (cl_uint)dim;
        karg a[8];
        int na = 0;
        a[na++] = KA(xb.m);
        a[na++] = KA(xb.off);
        if (op == IDF_OP_SCALE)
            a[na++] = (karg){sizeof(float), scal};
        if (u) {
            a[na++] = KA(ub.m);
            a[na++] = KA(ub.off);
        }
        if (a3) {
            a[na++] = KA(ab.m);
            a[na++] = KA(ab.off);
            a[na++] = KA(d);
        }
        a[na++] = KA(nn);
        e = launch(c, ki, a, na, 1, &g, &wg);
    }
    if ((e = op_end(c, &om, e)) != CL_SUCCESS)
        return cl_fail(e);
    account(c, op, t0, (uint64_t)bytes * (1 + (u != NULL) + (a3 != NULL)), 0);
    return IDEFICS_OK;
}

static idefics_status ocl_gelu(void *v, float *x, int64_t n) {
    return elem(v, IDF_OP_GELU, K_GELU, x, NULL, NULL, NULL, n, 0);
}
static idefics_status ocl_quick_gelu(void *v, float *x, int64_t n) {
    return elem(v, IDF_OP_QUICK_GELU, K_QUICK_GELU, x, NULL, NULL, NULL, n, 0);
}
static idefics_status ocl_relu(void *v, float *x, int64_t n) {
    return elem(v, IDF_OP_RELU, K_RELU, x, NULL, NULL, NULL, n, 0);
}
static idefics_status ocl_silu_mul(void *v, float *g, const float *u, int64_t n) {
    return u ? elem(v, IDF_OP_SILU_MUL, K_SILU_MUL, g, u, NULL, NULL, n, 0) : IDEFICS_ERR_INVALID_ARG;
}
static idefics_status ocl_add(void *v, float *y, const float *x, int64_t n) {
    return x ? elem(v, IDF_OP_ADD, K_ADD, y, x, NULL, NULL, n, 0) : IDEFICS_ERR_INVALID_ARG;
}
static idefics_status ocl_scale(void *v, float *x, float s, int64_t n) {
    return elem(v, IDF_OP_SCALE, K_SCALE, x, NULL, NULL, &s, n, 0);
}
static idefics_status ocl_gated_add(void *v, float *h, const float *gate, const float *a, int64_t n, int64_t dim) {
    if (!gate || !a || dim <= 0 || n < 0 || (uint64_t)n * (uint64_t)dim >= (uint64_t)MAX_ELEMS)
        return IDEFICS_ERR_INVALID_ARG;
    return elem(v, IDF_OP_GATED_ADD, K_GATED_ADD, h, gate, a, NULL, n * dim, dim);
}

/* -------------------------------------------------------------- lifecycle */

const idf_ocl_op_stats *idf_ocl_backend_stats(const idf_backend *b) {
    return b && b->ctx ? ((const ocl_ctx *)b->ctx)->stats : NULL;
}

void idf_ocl_backend_stats_reset(idf_backend *b) {
    if (b && b->ctx)
        memset(((ocl_ctx *)b->ctx)->stats, 0, sizeof ((ocl_ctx *)b->ctx)->stats);
}

static void ocl_free(idf_backend *b) {
    if (!b)
        return;
    ocl_ctx *c = b->ctx;
    const idf_alloc al = c->alloc;
    if (c->cl) {
        if (c->q)
            c->cl->clFinish(c->q);
        for (int i = 0; i < K_COUNT; i++)
            if (c->k[i])
                c->cl->clReleaseKernel(c->k[i]);
        for (size_t i = 0; i < c->n_reg; i++) {
            if (c->q) /* mapped pieces are unmapped before release; nothing is written back */
                while (c->reg[i].n_pc) {
                    ocl_region *r = &c->reg[i];
                    if (r->host_ptr)
                        c->cl->clEnqueueUnmapMemObject(c->q, r->mem, r->pc[r->n_pc - 1].mp, 0, NULL, NULL);
                    r->n_pc--;
                }
        }
        if (c->q)
            c->cl->clFinish(c->q);
        for (size_t i = 0; i < c->n_reg; i++)
            rel(c, c->reg[i].mem);
        rel(c, c->dummy);
        rel(c, c->book);
        rel(c, c->scores);
        rel(c, c->rope_inv);
        if (c->q)
            c->cl->clReleaseCommandQueue(c->q);
    }
    idf_free(&al, c->reg);
    if (c->owns_dev)
        idf_ocl_device_free(c->dev);
    idf_free(&al, c);
    idf_free(&al, b);
}

idefics_status idf_backend_opencl_create(idf_ocl_device *dev, const idf_alloc *alloc, idf_backend **out,
                                         idf_err *err) {
    *out = NULL;
    const idf_alloc al = alloc ? *alloc : (idf_alloc){0};
    ocl_ctx *c = idf_calloc(&al, 1, sizeof *c);
    idf_backend *b = idf_calloc(&al, 1, sizeof *b);
    if (!c || !b) {
        idf_free(&al, c);
        idf_free(&al, b);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "opencl backend: out of memory");
    }
    c->alloc = al;
    c->dev = dev;
    c->cl = &dev->cl;
    *b = (idf_backend){
        .api_version = IDF_BACKEND_API_VERSION,
        .name = "opencl",
        .ctx = c,
        .free = ocl_free,
        .supports_op = ocl_supports,
        .matmul = ocl_matmul,
        .get_rows = ocl_get_rows,
        .rmsnorm = ocl_rmsnorm,
        .layernorm = ocl_layernorm,
        .rope = ocl_rope,
        .attention = ocl_attention,
        .gelu = ocl_gelu,
        .quick_gelu = ocl_quick_gelu,
        .relu = ocl_relu,
        .silu_mul = ocl_silu_mul,
        .add = ocl_add,
        .scale = ocl_scale,
        .gated_add = ocl_gated_add,
        .register_host = ocl_register_host,
        .host_access = ocl_host_access,
        .last_error = ocl_last_error,
    };
    cl_int e = CL_SUCCESS;
    /* clCreateCommandQueue first: every 1.x/2.x/3.x driver has it, while the 2.0
     * constructor exported by an ICD loader may front a 1.2 driver. */
    if (c->cl->clCreateCommandQueue) {
        c->q = c->cl->clCreateCommandQueue(dev->ctx, dev->device, 0, &e);
    } else {
        const cl_queue_properties props[] = {0};
        c->q = c->cl->clCreateCommandQueueWithProperties(dev->ctx, dev->device, props, &e);
    }
    if (!c->q || e != CL_SUCCESS) {
        ocl_free(b);
        return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "cannot create an OpenCL queue on %s (%s %d)", dev->probe.device,
                        idf_cl_err_name(e), (int)e);
    }
    for (int i = 0; i < K_COUNT; i++) {
        c->k[i] = c->cl->clCreateKernel(dev->prog, kernel_names[i], &e);
        if (!c->k[i] || e != CL_SUCCESS) {
            ocl_free(b);
            return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "OpenCL kernel %s is missing from the program (%s %d)",
                            kernel_names[i], idf_cl_err_name(e), (int)e);
        }
        /* the kernel's own limits, never above the device's (which a test
         * clamp may have lowered: IDEFICS_OPENCL_CLAMP) */
        size_t mx = 0;
        if (c->cl->clGetKernelWorkGroupInfo(c->k[i], dev->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof mx, &mx, NULL) !=
                CL_SUCCESS ||
            mx == 0 || mx > dev->probe.max_wg)
            mx = dev->probe.max_wg;
        c->kmax_wg[i] = mx;
        cl_ulong kl = 0;
        if (c->cl->clGetKernelWorkGroupInfo(c->k[i], dev->device, CL_KERNEL_LOCAL_MEM_SIZE, sizeof kl, &kl, NULL) !=
            CL_SUCCESS)
            kl = 0;
        c->klocal[i] = kl < dev->probe.local_mem ? dev->probe.local_mem - kl : 0;
    }
    c->dummy = c->cl->clCreateBuffer(dev->ctx, CL_MEM_READ_WRITE, 64, NULL, &e);
    if (c->dummy)
        c->book = c->cl->clCreateBuffer(dev->ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, sizeof IDFX_Q4_CODEBOOK,
                                        (void *)(uintptr_t)IDFX_Q4_CODEBOOK, &e);
    if (!c->dummy || !c->book) {
        ocl_free(b);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "cannot create a small OpenCL buffer (%s %d)", idf_cl_err_name(e), (int)e);
    }
    *out = b;
    return IDEFICS_OK;
}

idefics_status idf_backend_opencl_create_standalone(int n_threads, const idf_alloc *alloc, idf_backend **out,
                                                    idf_err *err) {
    (void)n_threads;
    *out = NULL;
    idf_ocl_device *dev = NULL;
    IDF_FORWARD(idf_ocl_device_open(NULL, false, alloc, NULL, &dev, err));
    const idefics_status st = idf_backend_opencl_create(dev, alloc, out, err);
    if (st) {
        idf_ocl_device_free(dev);
        return st;
    }
    ((ocl_ctx *)(*out)->ctx)->owns_dev = true;
    return IDEFICS_OK;
}
