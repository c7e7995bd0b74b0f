/*
 * test_ops.c - every backend op, from one table of cases (house rule 16).
 *
 * Each case names an op, the stored types involved, shapes (odd ones and ones
 * that are not multiples of a quant tile on purpose) and, where the default
 * tolerance is overridden, a reason. Inputs are random from a per-case seed.
 * The reference backend is checked against naive formulas written here, in
 * double precision, independently of runtime/ (the ROWTILE decoder below is
 * written from the layout comment in quant/quant.h, not from quant_ref.c);
 * any later backend is checked against the reference backend's output.
 * Error is NMSE = sum (got - want)^2 / sum want^2; a non-finite value where the
 * expected one is finite (or of the other sign of infinity) fails outright.
 * Every output buffer sits between guard regions filled with a sentinel, and
 * elements an op must not write (row gaps of strided outputs) hold the sentinel
 * too; all of them are checked after every op. An op a backend declines
 * through supports_op counts as skipped, not failed.
 *
 * Runs: `test_ops` (every backend), `test_ops N` (case N only). With
 * IDEFICS_TEST_OPENCL_ONLY=1 only cpu-ref and OpenCL run and a missing OpenCL
 * device skips (77): tests/meson.build's Rusticl and clamped-limits runs pick
 * the device with IDEFICS_DEVICE and the limits with IDEFICS_OPENCL_CLAMP. A
 * failed op prints the backend's last_error (OpenCL: call, code, kernel, sizes).
 *
 * Example case (a row of the table below):
 *   {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 3, .m = 17, .k = 96,
 *    .flags = F_BIAS},
 * = y[3, 17] = x[3, 96] W^T + b with W stored as Q4 ROWTILE, 8 rows per tile, so
 * the last tile is partly padding.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#ifdef IDF_HAVE_OPENCL
#include "backend_opencl.h"
#endif
#include "quant.h"

/* ------------------------------------------------------------ the table */

enum {
    F_BIAS = 1,     /* matmul: with bias; layernorm: with bias */
    F_CAUSAL = 2,   /* attention */
    F_MASK = 4,     /* attention: additive mask, some entries -inf */
    F_STRIDE = 8,   /* strided rows (ldy > m, row stride > heads * head_dim) */
    F_INPLACE = 16, /* norms: y == x */
    F_GROUP = 32,   /* matmul, get_rows: Q4/Q8 weight in the GROUPTILE layout */
};

#define DEFAULT_NMSE 1e-10 /* the reference computes in fp32 with double sums: far below this */

typedef struct op_case {
    idf_op op;
    int wtype;   /* MATMUL, GET_ROWS: idfx_type of the weight */
    int tile;    /* ROWTILE rows per tile */
    int kv_type; /* ATTENTION: idefics_kv_type */
    int n, m, k; /* MATMUL: y[n,m] = x[n,k] W[m,k]^T; GET_ROWS: n ids of W[m,k];
                    norms, elementwise: n rows of k; ATTENTION: n_q, n_kv (m), head_dim (k) */
    int heads;   /* ATTENTION, ROPE */
    int pos0;    /* ATTENTION (causal), ROPE */
    int flags;
    double max_nmse; /* 0 = DEFAULT_NMSE */
    const char *why; /* reason for an override */
} op_case;

static const op_case cases[] = {
    /* matmul over every stored type */
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_F32, .n = 1, .m = 1, .k = 1},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_F32, .n = 2, .m = 70, .k = 5, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_F32, .n = 5, .m = 33, .k = 129, .flags = F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_F16, .n = 7, .m = 13, .k = 29, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_F16, .n = 1, .m = 100, .k = 588},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 3, .m = 17, .k = 96, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 1, .n = 1, .m = 5, .k = 32},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 64, .n = 65, .m = 130, .k = 64, .flags = F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 16, .n = 5, .m = 33, .k = 64},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 4, .n = 2, .m = 3, .k = 160, .flags = F_BIAS | F_STRIDE},
    /* shapes for the SIMD tile kernels: every tile size class (a kernel block of
     * 2/4/8 rows, or the scalar fallback), activation rows past a block of 4,
     * and calls big enough to be shared on the thread pool */
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 1, .m = 300, .k = 512},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 16, .n = 7, .m = 40, .k = 128, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 2, .n = 2, .m = 7, .k = 64},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 4, .n = 5, .m = 13, .k = 96, .flags = F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 32, .n = 9, .m = 70, .k = 1024},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 8, .n = 6, .m = 24, .k = 256, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 2, .n = 3, .m = 5, .k = 64},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 64, .n = 1, .m = 130, .k = 512},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_F16, .n = 9, .m = 37, .k = 600, .flags = F_BIAS},
    /* prefill shapes (n >= 16): the OpenCL tiled GEMM (gemm_tiled.cl), with
     * partial row and column blocks, k not a multiple of 32 for F32/F16, and
     * strided outputs */
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_F32, .n = 37, .m = 45, .k = 77, .flags = F_BIAS | F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_F16, .n = 33, .m = 70, .k = 129},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 19, .m = 37, .k = 96, .flags = F_BIAS | F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 1, .n = 64, .m = 64, .k = 64},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 16, .n = 40, .m = 33, .k = 160, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 64, .n = 17, .m = 130, .k = 32, .flags = F_STRIDE},
    /* GEMM blocking (backend_cpu.c): register blocks of up to 8 activation rows
     * (AVX-512 Q4) with every remainder 1..7, the 4- and 8-row weight bands,
     * power-of-two k (padded activation row stride), and n past one L2 chunk
     * of activation rows (QACT_CHUNK_BYTES: 146 rows at k = 1024) */
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 8, .m = 24, .k = 256},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 15, .m = 19, .k = 128, .flags = F_BIAS | F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 4, .n = 13, .m = 11, .k = 96},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 16, .n = 23, .m = 33, .k = 4096},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 203, .m = 21, .k = 1024, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 8, .n = 203, .m = 9, .k = 1024, .flags = F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 4, .n = 9, .m = 8, .k = 2048},
    /* decode (n <= 2): the one-row kernels with prefetch (two 8-row passes per
     * 16-row tile, a partial last tile, bias, strided output) and the guided
     * task split, from one task to many (4100 rows: 513 tiles of 288 bytes) */
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 16, .n = 1, .m = 37, .k = 256, .flags = F_BIAS | F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 1, .m = 4100, .k = 64, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 2, .m = 1000, .k = 160},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 8, .n = 1, .m = 77, .k = 320, .flags = F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 16, .n = 2, .m = 2051, .k = 64, .flags = F_STRIDE},
    /* GROUPTILE (each group's scales next to its quants): decode, the GEMM
     * paths (16-row pairs and halves, partial tiles), every tile class */
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 1, .m = 300, .k = 512, .flags = F_GROUP | F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 16, .n = 1, .m = 37, .k = 256, .flags = F_GROUP | F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 19, .m = 37, .k = 96, .flags = F_GROUP | F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 32, .n = 9, .m = 70, .k = 1024, .flags = F_GROUP},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 1, .n = 3, .m = 5, .k = 64, .flags = F_GROUP},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q4, .tile = 4, .n = 2, .m = 13, .k = 96, .flags = F_GROUP | F_STRIDE},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 8, .n = 1, .m = 77, .k = 320, .flags = F_GROUP | F_BIAS},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 16, .n = 40, .m = 33, .k = 160, .flags = F_GROUP},
    {.op = IDF_OP_MATMUL, .wtype = IDFX_TYPE_Q8, .tile = 2, .n = 3, .m = 5, .k = 64, .flags = F_GROUP},
    {.op = IDF_OP_GET_ROWS, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 6, .m = 19, .k = 64, .flags = F_GROUP},
    {.op = IDF_OP_GET_ROWS, .wtype = IDFX_TYPE_Q8, .tile = 16, .n = 4, .m = 21, .k = 96, .flags = F_GROUP},
    /* embedding gather */
    {.op = IDF_OP_GET_ROWS, .wtype = IDFX_TYPE_F32, .n = 4, .m = 11, .k = 7},
    {.op = IDF_OP_GET_ROWS, .wtype = IDFX_TYPE_F16, .n = 3, .m = 5, .k = 33},
    {.op = IDF_OP_GET_ROWS, .wtype = IDFX_TYPE_Q4, .tile = 8, .n = 6, .m = 19, .k = 64},
    {.op = IDF_OP_GET_ROWS, .wtype = IDFX_TYPE_Q8, .tile = 32, .n = 2, .m = 40, .k = 32},
    /* norms */
    {.op = IDF_OP_RMSNORM, .n = 1, .k = 1},
    {.op = IDF_OP_RMSNORM, .n = 3, .k = 129},
    {.op = IDF_OP_RMSNORM, .n = 6, .k = 8, .flags = F_INPLACE},
    {.op = IDF_OP_LAYERNORM, .n = 4, .k = 37, .flags = F_BIAS},
    {.op = IDF_OP_LAYERNORM, .n = 2, .k = 96},
    {.op = IDF_OP_LAYERNORM, .n = 5, .k = 1280, .flags = F_BIAS | F_INPLACE},
    /* rope */
    {.op = IDF_OP_ROPE, .n = 5, .heads = 3, .k = 8, .pos0 = 7},
    {.op = IDF_OP_ROPE, .n = 2, .heads = 1, .k = 2, .pos0 = 0},
    {.op = IDF_OP_ROPE, .n = 3, .heads = 2, .k = 128, .pos0 = 2045, .flags = F_STRIDE},
    /* attention */
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 4, .m = 9, .k = 5, .heads = 2},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 1, .m = 1, .k = 8, .heads = 1},
    {.op = IDF_OP_ATTENTION,
     .kv_type = IDEFICS_KV_F32,
     .n = 3,
     .m = 10,
     .k = 16,
     .heads = 3,
     .pos0 = 7,
     .flags = F_CAUSAL},
    {.op = IDF_OP_ATTENTION,
     .kv_type = IDEFICS_KV_F16,
     .n = 6,
     .m = 6,
     .k = 12,
     .heads = 2,
     .pos0 = 0,
     .flags = F_CAUSAL | F_STRIDE},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F16, .n = 9, .m = 70, .k = 80, .heads = 2}, /* big enough to run on
                                                                                                  the pool */
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 4, .m = 13, .k = 6, .heads = 2, .flags = F_MASK},
    /* the CPU backend's query blocks (8 rows): blocks past the first, causal
     * blocks whose rows see different key counts, a vision-sized head */
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 19, .m = 19, .k = 80, .heads = 3},
    {.op = IDF_OP_ATTENTION,
     .kv_type = IDEFICS_KV_F16,
     .n = 17,
     .m = 30,
     .k = 128,
     .heads = 2,
     .pos0 = 13,
     .flags = F_CAUSAL | F_STRIDE},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 11, .m = 7, .k = 33, .heads = 1, .flags = F_MASK},
    /* Q8 KV cache (quant.h blocks of 32 along the row): heads of 32, heads of
     * 16 sharing a block, a strided cache, one decode row on a long cache */
    {.op = IDF_OP_ATTENTION,
     .kv_type = IDEFICS_KV_Q8,
     .n = 3,
     .m = 10,
     .k = 32,
     .heads = 2,
     .pos0 = 7,
     .flags = F_CAUSAL},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_Q8, .n = 9, .m = 40, .k = 16, .heads = 4, .flags = F_STRIDE},
    {.op = IDF_OP_ATTENTION,
     .kv_type = IDEFICS_KV_Q8,
     .n = 1,
     .m = 70,
     .k = 128,
     .heads = 2,
     .pos0 = 69,
     .flags = F_CAUSAL},
    /* the CPU backend's two attention algorithms (backend_cpu.c). Decode
     * (n_q <= 4): split-K over blocks of 32-512 keys with a merge, straight on
     * F16/Q8 rows; long odd caches (many blocks, a partial last one), head
     * sizes off the vector width, Q8 heads inside a block, a mask, rows of one
     * call seeing different key counts. Prefill: 64 x 64 flash tiles; several
     * query and key blocks, partial ones, causal with an offset, the vision
     * tower's 257 tokens with heads of 80, the perceiver's 64 latents. */
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F16, .n = 1, .m = 1701, .k = 128, .heads = 3, .pos0 = 1700,
     .flags = F_CAUSAL},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 1, .m = 333, .k = 64, .heads = 3},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_Q8, .n = 1, .m = 515, .k = 128, .heads = 2, .pos0 = 514,
     .flags = F_CAUSAL | F_STRIDE},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_Q8, .n = 2, .m = 97, .k = 16, .heads = 4, .pos0 = 95,
     .flags = F_CAUSAL},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F16, .n = 3, .m = 200, .k = 32, .heads = 2, .flags = F_MASK},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F16, .n = 4, .m = 100, .k = 40, .heads = 2, .pos0 = 96,
     .flags = F_CAUSAL | F_STRIDE},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 1, .m = 64, .k = 128, .heads = 4},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F16, .n = 130, .m = 130, .k = 128, .heads = 2, .pos0 = 0,
     .flags = F_CAUSAL},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 257, .m = 257, .k = 80, .heads = 2},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_Q8, .n = 70, .m = 150, .k = 32, .heads = 2, .pos0 = 80,
     .flags = F_CAUSAL | F_STRIDE},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 65, .m = 100, .k = 24, .heads = 2, .flags = F_MASK},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F32, .n = 64, .m = 321, .k = 96, .heads = 2},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_Q8, .n = 33, .m = 70, .k = 16, .heads = 4, .pos0 = 37,
     .flags = F_CAUSAL},
    /* the OpenCL split across the sequence (256 keys per work-group): several
     * blocks, and causal rows that see none of the later blocks */
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_F16, .n = 5, .m = 600, .k = 64, .heads = 2, .pos0 = 595,
     .flags = F_CAUSAL},
    {.op = IDF_OP_ATTENTION, .kv_type = IDEFICS_KV_Q8, .n = 300, .m = 300, .k = 32, .heads = 1, .pos0 = 0,
     .flags = F_CAUSAL},
    /* elementwise */
    {.op = IDF_OP_GELU, .n = 1, .k = 1000},
    {.op = IDF_OP_QUICK_GELU, .n = 1, .k = 37},
    {.op = IDF_OP_RELU, .n = 1, .k = 33},
    {.op = IDF_OP_SILU_MUL, .n = 1, .k = 515},
    /* the CPU backend's vectorized activations, large enough to be split on
     * the pool (chunks of 16384), with a ragged last chunk */
    {.op = IDF_OP_GELU, .n = 5, .k = 13107},
    {.op = IDF_OP_QUICK_GELU, .n = 3, .k = 22001},
    {.op = IDF_OP_SILU_MUL, .n = 7, .k = 11008},
    {.op = IDF_OP_ADD, .n = 1, .k = 9},
    {.op = IDF_OP_SCALE, .n = 1, .k = 17},
    {.op = IDF_OP_GATED_ADD, .n = 3, .k = 21},
};

/* ------------------------------------------------------------- helpers */

static uint64_t rng_state;
static double frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}
static void fill(float *p, size_t n, double amp) {
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(amp * frand());
}

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

/* A float buffer with GUARD sentinel floats on each side. */
#define GUARD 16
static const uint32_t SENTINEL = 0x7fc0feedu; /* a quiet NaN no op produces */

typedef struct gbuf {
    float *mem, *p;
    size_t n;
} gbuf;

static gbuf gbuf_new(size_t n) {
    gbuf g = {xmalloc((n + 2 * GUARD) * sizeof(float)), NULL, n};
    for (size_t i = 0; i < n + 2 * GUARD; i++)
        memcpy(&g.mem[i], &SENTINEL, 4);
    g.p = g.mem + GUARD;
    return g;
}
static bool is_sentinel(const float *f) {
    return memcmp(f, &SENTINEL, 4) == 0;
}
static bool guards_ok(const gbuf *g) {
    for (size_t i = 0; i < GUARD; i++)
        if (!is_sentinel(&g->mem[i]) || !is_sentinel(&g->mem[GUARD + g->n + i]))
            return false;
    return true;
}

static float f16_round(float x) {
    return idfx_fp16_to_fp32(idfx_fp32_to_fp16(x));
}

/* Q8 KV blocks (quant.h): per 32 elements an fp16 scale fp16(max|x| / 127) and
 * int8 round-half-even(x / scale); x is replaced by the value the cache holds. */
static void kq8_encode(float *x, size_t n, uint8_t *out) {
    for (size_t b = 0; b < n / 32; b++) {
        float *xb = x + b * 32;
        uint8_t *ob = out + b * 34;
        double amax = 0.0;
        for (int j = 0; j < 32; j++)
            amax = fabs(xb[j]) > amax ? fabs(xb[j]) : amax;
        const uint16_t dh = idfx_fp32_to_fp16((float)amax / 127.f);
        const float d = idfx_fp16_to_fp32(dh);
        ob[0] = (uint8_t)dh;
        ob[1] = (uint8_t)(dh >> 8);
        for (int j = 0; j < 32; j++) {
            double qv = d > 0 ? nearbyint(xb[j] * (1.0f / d)) : 0.0;
            qv = qv > 127 ? 127 : qv < -127 ? -127 : qv;
            ob[2 + j] = (uint8_t)(int8_t)qv;
            xb[j] = d * (float)qv;
        }
    }
}

/* Decode element (r, j) of a ROWTILE Q4/Q8 tensor, from the layout comment in
 * quant.h: tile t = r / R holds ng*R fp16 scales then ng*R groups of QB bytes. */
static double rowtile_at(int type, const uint8_t *data, int64_t k, int R, int64_t r, int64_t j) {
    const int64_t ng = k / 32, qb = type == IDFX_TYPE_Q4 ? 16 : 32, rr = r % R, g = j / 32, e = j % 32;
    const uint8_t *tile = data + (r / R) * ng * R * (2 + qb);
    const uint8_t *sp = tile + (g * R + rr) * 2;
    const double d = idfx_fp16_to_fp32((uint16_t)(sp[0] | (sp[1] << 8)));
    const uint8_t *q = tile + ng * R * 2 + (g * R + rr) * qb;
    if (type == IDFX_TYPE_Q8)
        return d * (int8_t)q[e];
    static const int8_t cb[16] = IDFX_Q4_CODEBOOK_INIT;
    const int nib = e < 16 ? (q[e] & 15) : (q[e - 16] >> 4);
    return d * cb[nib];
}

/* ROWTILE bytes reordered into GROUPTILE, from the layout comment in quant.h:
 * in each tile, group g is one block of R fp16 scales then R rows of QB bytes. */
static void to_grouptile(int type, const uint8_t *src, int64_t m, int64_t k, int R, uint8_t *dst) {
    const int64_t ng = k / 32, qb = type == IDFX_TYPE_Q4 ? 16 : 32, tb = ng * R * (2 + qb);
    for (int64_t t = 0; t < (m + R - 1) / R; t++)
        for (int64_t g = 0; g < ng; g++) {
            uint8_t *blk = dst + t * tb + g * R * (2 + qb);
            memcpy(blk, src + t * tb + g * R * 2, (size_t)R * 2);
            memcpy(blk + R * 2, src + t * tb + ng * R * 2 + g * R * qb, (size_t)(R * qb));
        }
}

/* A weight [m, k] of type t: stored bytes plus the exact values they decode to. */
typedef struct test_weight {
    idf_weight w;
    void *bytes;
    double *val; /* [m, k] */
} test_weight;

static test_weight make_weight(int type, int tile, int m, int k, bool group) {
    test_weight t = {0};
    float *src = xmalloc((size_t)m * k * sizeof(float));
    fill(src, (size_t)m * k, 0.5);
    t.val = xmalloc((size_t)m * k * sizeof(double));
    const uint64_t dims[2] = {(uint64_t)m, (uint64_t)k};
    const int layout = type == IDFX_TYPE_Q4 || type == IDFX_TYPE_Q8 ? IDFX_LAYOUT_ROWTILE : IDFX_LAYOUT_ROWMAJOR;
    uint64_t nbytes, unit;
    if (!idfx_tensor_nbytes(type, layout, layout == IDFX_LAYOUT_ROWTILE ? (uint32_t)tile : 0, 2, dims, &nbytes,
                            &unit)) {
        fprintf(stderr, "bad test weight %d [%d, %d]\n", type, m, k);
        exit(1);
    }
    t.bytes = xmalloc((size_t)nbytes);
    if (type == IDFX_TYPE_F32) {
        memcpy(t.bytes, src, (size_t)m * k * sizeof(float));
        for (int64_t i = 0; i < (int64_t)m * k; i++)
            t.val[i] = src[i];
    } else if (type == IDFX_TYPE_F16) {
        uint8_t *b = t.bytes;
        for (int64_t i = 0; i < (int64_t)m * k; i++) {
            const uint16_t h = idfx_fp32_to_fp16(src[i]);
            b[2 * i] = (uint8_t)h;
            b[2 * i + 1] = (uint8_t)(h >> 8);
            t.val[i] = idfx_fp16_to_fp32(h);
        }
    } else {
        if (type == IDFX_TYPE_Q4)
            idfx_quantize_q4_ref(src, m, k, (uint32_t)tile, 4, t.bytes);
        else
            idfx_quantize_q8_ref(src, m, k, (uint32_t)tile, 0, t.bytes);
        for (int64_t r = 0; r < m; r++)
            for (int64_t j = 0; j < k; j++)
                t.val[r * k + j] = rowtile_at(type, t.bytes, k, tile, r, j);
        if (group) {
            void *g = xmalloc((size_t)nbytes);
            to_grouptile(type, t.bytes, m, k, tile, g);
            free(t.bytes);
            t.bytes = g;
        }
    }
    free(src);
    t.w = (idf_weight){.name = "test.weight",
                       .data = t.bytes,
                       .type = (uint8_t)type,
                       .layout = (uint8_t)(group && layout == IDFX_LAYOUT_ROWTILE ? IDFX_LAYOUT_GROUPTILE : layout),
                       .tile_rows = layout == IDFX_LAYOUT_ROWTILE ? (uint32_t)tile : 0,
                       .rows = m,
                       .cols = k};
    return t;
}

static void free_weight(test_weight *t) {
    free(t->bytes);
    free(t->val);
}

/* ------------------------------------------------------------ one case */

/* The output of running one case: the guarded buffer and, per element, the
 * expected value (want) and whether the op writes it (written). */
typedef struct outcome {
    gbuf out;
    double *want;
    bool *written;
    idefics_status st;
    bool skipped;
    char detail[512]; /* the backend's last_error when st != OK */
} outcome;

static double naive_gelu(double x) {
    return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
}

/* Runs case c on backend b, filling o (and, with want, the naive expectation). */
static void run_case(const op_case *c, idf_backend *b, uint64_t seed, outcome *o) {
    rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
    memset(o, 0, sizeof *o);
    const int n = c->n, m = c->m, k = c->k;
    idf_op_desc d = {.op = c->op, .wtype = c->wtype, .kv_type = c->kv_type, .n = n, .m = m, .k = k};
    if (c->op == IDF_OP_MATMUL || c->op == IDF_OP_GET_ROWS)
        d.wlayout = c->wtype >= IDFX_TYPE_Q4
                        ? (c->flags & F_GROUP ? IDFX_LAYOUT_GROUPTILE : IDFX_LAYOUT_ROWTILE)
                        : IDFX_LAYOUT_ROWMAJOR;
    if (!idf_backend_supports(b, &d)) {
        o->skipped = true;
        return;
    }
    void *ctx = b->ctx;

    switch (c->op) {
    case IDF_OP_MATMUL: {
        test_weight w = make_weight(c->wtype, c->tile, m, k, c->flags & F_GROUP);
        const int ldy = c->flags & F_STRIDE ? m + 3 : m;
        float *x = xmalloc((size_t)n * k * sizeof(float)), *bias = NULL;
        fill(x, (size_t)n * k, 1.0);
        if (c->flags & F_BIAS) {
            bias = xmalloc((size_t)m * sizeof(float));
            fill(bias, (size_t)m, 1.0);
        }
        o->out = gbuf_new((size_t)n * ldy);
        o->want = xmalloc(o->out.n * sizeof(double));
        o->written = xmalloc(o->out.n);
        for (int i = 0; i < n; i++)
            for (int r = 0; r < m; r++) {
                double acc = bias ? bias[r] : 0.0;
                for (int j = 0; j < k; j++)
                    acc += (double)x[(size_t)i * k + j] * w.val[(size_t)r * k + j];
                o->want[(size_t)i * ldy + r] = acc;
                o->written[(size_t)i * ldy + r] = true;
            }
        o->st = b->matmul(ctx, &w.w, bias, x, n, o->out.p, ldy);
        free(x);
        free(bias);
        free_weight(&w);
        break;
    }
    case IDF_OP_GET_ROWS: {
        test_weight w = make_weight(c->wtype, c->tile, m, k, c->flags & F_GROUP);
        int32_t *ids = xmalloc((size_t)n * sizeof(int32_t));
        for (int i = 0; i < n; i++)
            ids[i] = i == 0 ? m - 1 : (int32_t)((frand() + 1.0) * 0.5 * m) % m;
        o->out = gbuf_new((size_t)n * k);
        o->want = xmalloc(o->out.n * sizeof(double));
        o->written = xmalloc(o->out.n);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < k; j++) {
                o->want[(size_t)i * k + j] = w.val[(size_t)ids[i] * k + j];
                o->written[(size_t)i * k + j] = true;
            }
        o->st = b->get_rows(ctx, &w.w, ids, n, o->out.p);
        free(ids);
        free_weight(&w);
        break;
    }
    case IDF_OP_RMSNORM:
    case IDF_OP_LAYERNORM: {
        float *x = xmalloc((size_t)n * k * sizeof(float)), *g = xmalloc((size_t)k * sizeof(float)), *bb = NULL;
        fill(x, (size_t)n * k, 3.0);
        for (int j = 0; j < k; j++)
            g[j] = (float)(1.0 + 0.5 * frand());
        if (c->flags & F_BIAS) {
            bb = xmalloc((size_t)k * sizeof(float));
            fill(bb, (size_t)k, 0.5);
        }
        const float eps = c->op == IDF_OP_RMSNORM ? 1e-6f : 1e-5f;
        o->out = gbuf_new((size_t)n * k);
        o->want = xmalloc(o->out.n * sizeof(double));
        o->written = xmalloc(o->out.n);
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * k;
            double mean = 0.0, ss = 0.0;
            if (c->op == IDF_OP_LAYERNORM) {
                for (int j = 0; j < k; j++)
                    mean += xi[j];
                mean /= k;
            }
            for (int j = 0; j < k; j++)
                ss += (xi[j] - mean) * (xi[j] - mean);
            const double inv = 1.0 / sqrt(ss / k + eps);
            for (int j = 0; j < k; j++) {
                o->want[(size_t)i * k + j] = (xi[j] - mean) * inv * g[j] + (bb ? bb[j] : 0.0);
                o->written[(size_t)i * k + j] = true;
            }
        }
        const float *src = x;
        if (c->flags & F_INPLACE) {
            memcpy(o->out.p, x, (size_t)n * k * sizeof(float));
            src = o->out.p;
        }
        o->st = c->op == IDF_OP_RMSNORM ? b->rmsnorm(ctx, src, g, eps, n, k, o->out.p)
                                        : b->layernorm(ctx, src, g, bb, eps, n, k, o->out.p);
        free(x);
        free(g);
        free(bb);
        break;
    }
    case IDF_OP_ROPE: {
        const int row = c->heads * k, stride = c->flags & F_STRIDE ? row + 5 : row;
        const float theta = 10000.0f;
        o->out = gbuf_new((size_t)n * stride);
        o->want = xmalloc(o->out.n * sizeof(double));
        o->written = xmalloc(o->out.n);
        for (int i = 0; i < n; i++)
            fill(o->out.p + (size_t)i * stride, (size_t)row, 1.0);
        const int half = k / 2;
        for (int i = 0; i < n; i++)
            for (int h = 0; h < c->heads; h++)
                for (int dd = 0; dd < k; dd++) {
                    const float *xh = o->out.p + (size_t)i * stride + (size_t)h * k;
                    /* spec §3.5: the angle is formed in fp32 (that rounding is part of the
                     * model); its cos/sin are taken in double here */
                    const int f = dd % half;
                    const float inv_freq = 1.0f / powf(theta, (float)(2 * f) / (float)k);
                    const float ang = (float)(c->pos0 + i) * inv_freq;
                    const double rot = dd < half ? -(double)xh[dd + half] : (double)xh[dd - half];
                    o->want[(size_t)i * stride + (size_t)h * k + dd] =
                        xh[dd] * cos((double)ang) + rot * sin((double)ang);
                    o->written[(size_t)i * stride + (size_t)h * k + dd] = true;
                }
        for (size_t e = 0; e < o->out.n; e++)
            if (!o->written[e])
                o->want[e] = 0; /* gap: must keep its sentinel */
        o->st = b->rope(ctx, o->out.p, n, stride, c->heads, k, c->pos0, theta);
        break;
    }
    case IDF_OP_ATTENTION: {
        const int row = c->heads * k;
        /* a Q8 cache's rows start on a 32-element block (quant.h) */
        const int stride = !(c->flags & F_STRIDE)        ? row
                           : c->kv_type == IDEFICS_KV_Q8 ? (row + 31) / 32 * 32 + 32
                                                         : row + 3;
        float *q = xmalloc((size_t)n * stride * sizeof(float));
        float *kf = xmalloc((size_t)m * stride * sizeof(float)), *vf = xmalloc((size_t)m * stride * sizeof(float));
        fill(q, (size_t)n * stride, 1.0);
        fill(kf, (size_t)m * stride, 1.0);
        fill(vf, (size_t)m * stride, 1.0);
        void *kb = kf, *vb = vf;
        uint16_t *kh = NULL, *vh = NULL;
        if (c->kv_type == IDEFICS_KV_F16) { /* store as f16; the expectation uses the rounded values */
            kh = xmalloc((size_t)m * stride * 2);
            vh = xmalloc((size_t)m * stride * 2);
            for (size_t e = 0; e < (size_t)m * stride; e++) {
                kh[e] = idfx_fp32_to_fp16(kf[e]);
                vh[e] = idfx_fp32_to_fp16(vf[e]);
                kf[e] = f16_round(kf[e]);
                vf[e] = f16_round(vf[e]);
            }
            kb = kh;
            vb = vh;
        }
        if (c->kv_type == IDEFICS_KV_Q8) { /* blocks of 32 written here from the quant.h comment */
            kh = xmalloc((size_t)m * stride / 32 * 34);
            vh = xmalloc((size_t)m * stride / 32 * 34);
            kq8_encode(kf, (size_t)m * stride, (uint8_t *)kh);
            kq8_encode(vf, (size_t)m * stride, (uint8_t *)vh);
            kb = kh;
            vb = vh;
        }
        float *mask = NULL;
        if (c->flags & F_MASK) { /* every row keeps at least key 0 */
            mask = xmalloc((size_t)n * m * sizeof(float));
            for (size_t e = 0; e < (size_t)n * m; e++)
                mask[e] = (e % m) != 0 && frand() < -0.3 ? -INFINITY : (float)frand();
        }
        const float scale = 1.0f / sqrtf((float)k);
        o->out = gbuf_new((size_t)n * stride);
        o->want = xmalloc(o->out.n * sizeof(double));
        o->written = xmalloc(o->out.n);
        double *sc = xmalloc((size_t)m * sizeof(double));
        for (int i = 0; i < n; i++)
            for (int h = 0; h < c->heads; h++) {
                const int see = c->flags & F_CAUSAL ? (c->pos0 + i + 1 < m ? c->pos0 + i + 1 : m) : m;
                double mx = -INFINITY, sum = 0.0;
                for (int t = 0; t < see; t++) {
                    double s = 0.0;
                    for (int dd = 0; dd < k; dd++)
                        s += (double)q[(size_t)i * stride + h * k + dd] * kf[(size_t)t * stride + h * k + dd];
                    sc[t] = s * scale + (mask ? mask[(size_t)i * m + t] : 0.0);
                    if (sc[t] > mx)
                        mx = sc[t];
                }
                for (int t = 0; t < see; t++)
                    sum += (sc[t] = exp(sc[t] - mx));
                for (int dd = 0; dd < k; dd++) {
                    double acc = 0.0;
                    for (int t = 0; t < see; t++)
                        acc += sc[t] * vf[(size_t)t * stride + h * k + dd];
                    o->want[(size_t)i * stride + h * k + dd] = acc / sum;
                    o->written[(size_t)i * stride + h * k + dd] = true;
                }
            }
        const idf_attn a = {.n_q = n,
                            .n_kv = m,
                            .n_heads = c->heads,
                            .head_dim = k,
                            .q = q,
                            .q_stride = stride,
                            .k = kb,
                            .v = vb,
                            .kv_stride = stride,
                            .kv_type = c->kv_type,
                            .scale = scale,
                            .causal = (c->flags & F_CAUSAL) != 0,
                            .q_pos0 = c->pos0,
                            .mask = mask,
                            .out = o->out.p,
                            .out_stride = stride};
        o->st = b->attention(ctx, &a);
        free(sc);
        free(q);
        free(kf);
        free(vf);
        free(kh);
        free(vh);
        free(mask);
        break;
    }
    default: { /* elementwise: n rows of k, in place */
        const size_t len = (size_t)n * k;
        float *other = xmalloc(len * sizeof(float)), *gate = xmalloc((size_t)k * sizeof(float));
        fill(other, len, 2.0);
        fill(gate, (size_t)k, 1.0);
        const float s = (float)(3.0 * frand());
        o->out = gbuf_new(len);
        o->want = xmalloc(len * sizeof(double));
        o->written = xmalloc(len);
        fill(o->out.p, len, 4.0);
        for (size_t e = 0; e < len; e++) {
            const double x = o->out.p[e];
            double y;
            switch (c->op) {
            case IDF_OP_GELU:
                y = naive_gelu(x);
                break;
            case IDF_OP_QUICK_GELU:
                y = x / (1.0 + exp(-1.702 * x));
                break;
            case IDF_OP_RELU:
                y = x > 0 ? x : 0;
                break;
            case IDF_OP_SILU_MUL:
                y = x / (1.0 + exp(-x)) * other[e];
                break;
            case IDF_OP_ADD:
                y = x + other[e];
                break;
            case IDF_OP_SCALE:
                y = x * s;
                break;
            default:
                y = x + (double)gate[e % k] * other[e];
                break; /* GATED_ADD */
            }
            o->want[e] = y;
            o->written[e] = true;
        }
        switch (c->op) {
        case IDF_OP_GELU:
            o->st = b->gelu(ctx, o->out.p, (int64_t)len);
            break;
        case IDF_OP_QUICK_GELU:
            o->st = b->quick_gelu(ctx, o->out.p, (int64_t)len);
            break;
        case IDF_OP_RELU:
            o->st = b->relu(ctx, o->out.p, (int64_t)len);
            break;
        case IDF_OP_SILU_MUL:
            o->st = b->silu_mul(ctx, o->out.p, other, (int64_t)len);
            break;
        case IDF_OP_ADD:
            o->st = b->add(ctx, o->out.p, other, (int64_t)len);
            break;
        case IDF_OP_SCALE:
            o->st = b->scale(ctx, o->out.p, s, (int64_t)len);
            break;
        default:
            o->st = b->gated_add(ctx, o->out.p, gate, other, n, k);
            break;
        }
        free(other);
        free(gate);
        break;
    }
    }
    if (o->st != IDEFICS_OK && b->last_error && b->last_error(ctx))
        snprintf(o->detail, sizeof o->detail, "%s", b->last_error(ctx));
}

static void free_outcome(outcome *o) {
    free(o->out.mem);
    free(o->want);
    free(o->written);
}

/* Compares got against want element by element. Returns the NMSE, or a
 * negative value with *why set on a hard failure. */
static double compare(const outcome *o, const double *want, const char **why) {
    if (!guards_ok(&o->out)) {
        *why = "wrote outside its output buffer (guard region changed)";
        return -1;
    }
    double num = 0.0, den = 0.0;
    for (size_t e = 0; e < o->out.n; e++) {
        const float *g = &o->out.p[e];
        if (!o->written[e]) {
            if (!is_sentinel(g)) {
                *why = "wrote into a gap between strided rows";
                return -1;
            }
            continue;
        }
        const double w = want[e];
        if (!isfinite(*g) && isfinite(w)) {
            *why = "produced NaN or Inf where a finite value was expected";
            return -1;
        }
        if (isinf(w) && (!isinf(*g) || (w > 0) != (*g > 0))) {
            *why = "infinity of the wrong sign";
            return -1;
        }
        if (!isfinite(w))
            continue;
        num += (*g - w) * (*g - w);
        den += w * w;
    }
    return den > 0 ? num / den : num;
}

static const char *op_name(idf_op op) {
    static const char *names[IDF_OP_COUNT] = {"matmul",    "get_rows", "rmsnorm",    "layernorm", "rope",
                                              "attention", "gelu",     "quick_gelu", "silu_mul",  "relu",
                                              "add",       "scale",    "gated_add"};
    return op < IDF_OP_COUNT ? names[op] : "?";
}

/* ---------------------------------------------------------------- main */

typedef idefics_status (*backend_ctor)(int n_threads, const idf_alloc *alloc, idf_backend **out, idf_err *err);

/* The fast CPU backend at each ISA level (backend_cpu.c); a level this CPU or
 * build cannot run is reported as absent and skipped. */
#define CPU_ISA_CTOR(fn, isa)                                                                                          \
    static idefics_status fn(int n_threads, const idf_alloc *alloc, idf_backend **out, idf_err *err) {                \
        return idf_backend_cpu_create_isa(isa, n_threads, alloc, out, err);                                           \
    }
CPU_ISA_CTOR(cpu_scalar_create, IDF_CPU_ISA_SCALAR)
CPU_ISA_CTOR(cpu_avx2_create, IDF_CPU_ISA_AVX2)
CPU_ISA_CTOR(cpu_avx512_create, IDF_CPU_ISA_AVX512)
CPU_ISA_CTOR(cpu_neon_create, IDF_CPU_ISA_NEON)
CPU_ISA_CTOR(cpu_neon_dotprod_create, IDF_CPU_ISA_NEON_DOTPROD)

/* The CPU backend quantizes matmul activations to int8 per group of 32 when
 * the weight is Q4/Q8 (integer dot products): relative error about
 * 1/127/sqrt(12) per element, NMSE ~1e-5 on these inputs. */
#define CPU_QMATMUL_NMSE 2e-4

/* backends[].isa for a backend on a device that may be absent (skipped then) */
#define ISA_DEVICE (-2)

int main(int argc, char **argv) {
    /* optional: one case number to run (debugging one case on one device) */
    const int only = argc > 1 ? atoi(argv[1]) : -1;
    /* IDEFICS_TEST_OPENCL_ONLY=1: the OpenCL runs of tests/meson.build (Rusticl,
     * clamped limits): only cpu-ref and opencl, and a missing device skips (77) */
    const char *oo = getenv("IDEFICS_TEST_OPENCL_ONLY");
    const bool opencl_only = oo && oo[0] == '1';
    /* The reference backend first: it is checked against the naive formulas,
     * and every later entry against it. Faster backends register here. */
    static const struct {
        const char *name;
        backend_ctor create;
        double qmatmul_nmse; /* tolerance for matmuls on Q4/Q8 weights (0 = the case's) */
        int isa;             /* -1, or the idf_cpu_isa it needs */
    } backends[] = {
        {"cpu-ref", idf_backend_ref_create, 0, -1},
        {"cpu-scalar", cpu_scalar_create, CPU_QMATMUL_NMSE, IDF_CPU_ISA_SCALAR},
        {"cpu-avx2", cpu_avx2_create, CPU_QMATMUL_NMSE, IDF_CPU_ISA_AVX2},
        {"cpu-avx512", cpu_avx512_create, CPU_QMATMUL_NMSE, IDF_CPU_ISA_AVX512},
        {"cpu-neon", cpu_neon_create, CPU_QMATMUL_NMSE, IDF_CPU_ISA_NEON},
        {"cpu-neondot", cpu_neon_dotprod_create, CPU_QMATMUL_NMSE, IDF_CPU_ISA_NEON_DOTPROD},
#ifdef IDF_HAVE_OPENCL
        /* fp32 arithmetic on the device (fp32 sums, not double): within the default tolerance */
        {"opencl", idf_backend_opencl_create_standalone, 0, ISA_DEVICE},
#endif
    };
    const int nb = (int)(sizeof backends / sizeof backends[0]);
    idf_backend *be[8] = {0};
    idf_err err;
    for (int i = 0; i < nb; i++) {
        if (opencl_only && i > 0 && backends[i].isa != ISA_DEVICE)
            continue;
        if (backends[i].isa >= 0 && !idf_cpu_isa_available((idf_cpu_isa)backends[i].isa)) {
            printf("SKIP backend %s: this CPU or build has no %s kernels\n", backends[i].name,
                   idf_cpu_isa_name((idf_cpu_isa)backends[i].isa));
            continue;
        }
        /* two threads, so the pool's work sharing is exercised too */
        const idefics_status cst = backends[i].create(2, NULL, &be[i], &err);
        if (cst == IDEFICS_ERR_NO_DEVICE && backends[i].isa == ISA_DEVICE) { /* e.g. no OpenCL device here */
            printf("SKIP backend %s: %s\n", backends[i].name, err.msg);
            if (opencl_only)
                return 77;
            be[i] = NULL;
            continue;
        }
        if (cst != IDEFICS_OK) {
            fprintf(stderr, "backend %s: %s\n", backends[i].name, err.msg);
            return 1;
        }
        if (be[i]->api_version != IDF_BACKEND_API_VERSION) {
            fprintf(stderr, "backend %s: api_version %u, expected %u\n", backends[i].name, be[i]->api_version,
                    IDF_BACKEND_API_VERSION);
            return 1;
        }
    }

    if (opencl_only) {
        bool any = false;
        for (int i = 0; i < nb; i++)
            any = any || (be[i] && backends[i].isa == ISA_DEVICE);
        if (!any) {
            printf("SKIP: IDEFICS_TEST_OPENCL_ONLY and no OpenCL backend in this build\n");
            return 77;
        }
    }
    int n_pass = 0, n_fail = 0, n_skip = 0;
    bool covered[IDF_OP_COUNT] = {0};
    const int nc = (int)(sizeof cases / sizeof cases[0]);
    for (int ci = 0; ci < nc; ci++) {
        const op_case *c = &cases[ci];
        covered[c->op] = true;
        if (only >= 0 && ci != only)
            continue;
        const double case_tol = c->max_nmse > 0 ? c->max_nmse : DEFAULT_NMSE;
        outcome ref;
        run_case(c, be[0], (uint64_t)ci + 1, &ref);
        for (int bi = 0; bi < nb; bi++) {
            if (!be[bi])
                continue;
            const bool qmm = c->op == IDF_OP_MATMUL && (c->wtype == IDFX_TYPE_Q4 || c->wtype == IDFX_TYPE_Q8);
            const double tol = qmm && backends[bi].qmatmul_nmse > 0 ? backends[bi].qmatmul_nmse : case_tol;
            outcome o;
            if (bi == 0)
                o = ref;
            else
                run_case(c, be[bi], (uint64_t)ci + 1, &o);
            const char *why = NULL;
            double nmse = 0;
            if (o.skipped) {
                n_skip++;
                printf("SKIP %-10s case %2d on %s (unsupported)\n", op_name(c->op), ci, backends[bi].name);
                continue;
            }
            if (o.st != IDEFICS_OK) {
                why = idefics_status_str(o.st);
                if (o.detail[0])
                    printf("     %s: %s\n", backends[bi].name, o.detail);
                nmse = -1;
            } else if (bi == 0) {
                nmse = compare(&o, o.want, &why);
            } else { /* against the reference backend's output */
                double *want = xmalloc(o.out.n * sizeof(double));
                for (size_t e = 0; e < o.out.n; e++)
                    want[e] = ref.out.p[e];
                nmse = compare(&o, want, &why);
                free(want);
            }
            const bool ok = nmse >= 0 && nmse <= tol;
            printf("%s %-10s case %2d on %-8s n=%d m=%d k=%d type=%d nmse=%.3g (max %.1g)%s%s\n", ok ? "PASS" : "FAIL",
                   op_name(c->op), ci, backends[bi].name, c->n, c->m, c->k, c->wtype, nmse, tol, why ? ": " : "",
                   why ? why : "");
            ok ? n_pass++ : n_fail++;
            if (bi != 0)
                free_outcome(&o);
        }
        free_outcome(&ref);
    }
    for (int op = 0; op < IDF_OP_COUNT && only < 0; op++)
        if (!covered[op]) {
            printf("FAIL op %s has no case in the table\n", op_name((idf_op)op));
            n_fail++;
        }

    /* Argument checks: invalid calls must be refused, not executed. */
    {
        test_weight w = make_weight(IDFX_TYPE_F32, 0, 4, 8, false);
        float x[8] = {0}, y[4];
        if (be[0]->matmul(be[0]->ctx, &w.w, NULL, x, 1, y, 3) != IDEFICS_ERR_INVALID_ARG) {
            printf("FAIL matmul accepted ldy < m\n");
            n_fail++;
        } else {
            n_pass++;
        }
        const int32_t bad = 4;
        if (be[0]->get_rows(be[0]->ctx, &w.w, &bad, 1, y) != IDEFICS_ERR_INVALID_ARG) {
            printf("FAIL get_rows accepted an id past the last row\n");
            n_fail++;
        } else {
            n_pass++;
        }
        free_weight(&w);
    }

    for (int i = 0; i < nb; i++)
        if (be[i])
            be[i]->free(be[i]);
    printf("%d passed, %d failed, %d skipped\n", n_pass, n_fail, n_skip);
    return n_fail ? 1 : 0;
}
