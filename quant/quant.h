/*
 * quant.h - quantized weight layouts, declared once for C and OpenCL C.
 *
 * This file is prepended to every OpenCL program (kernels/prelude) and included
 * by the C runtime and the converter, so the two can never disagree. The part
 * above the `#ifndef __OPENCL_VERSION__` line must stay valid OpenCL C 1.2.
 *
 * Q4 (IDFX_TYPE_Q4), 4.5 bits/weight
 *   Groups of 32 consecutive weights along a row share one fp16 scale d.
 *   Each weight is a 4-bit index i into the fixed int8 codebook IDFX_Q4_CODEBOOK:
 *       w = d * IDFX_Q4_CODEBOOK[i]
 *   The codebook is non-uniform and slightly asymmetric; the converter searches
 *   the scale (both signs) per group to minimise squared error, so the asymmetry
 *   is used on whichever side holds the group's outlier. The values were fitted
 *   by alternating least squares on Gaussian and Student-t(4) groups
 *   (tools/quant-codebook notes in docs/FORMAT.md). Being int8, the codebook lets
 *   SIMD paths look weights up with a byte shuffle and use integer dot products.
 *   16 bits of scale + 32 * 4 bits = 144 bits per 32 weights = 4.5 bits/weight.
 *
 * Q8 (IDFX_TYPE_Q8), 8.5 bits/weight
 *   Groups of 32 weights share one fp16 scale d; w = d * q, q int8 in [-127, 127].
 *
 * ROWTILE layout (IDFX_LAYOUT_ROWTILE) for a 2-D [rows, K] Q4/Q8 tensor
 *   K must be a multiple of 32; ng = K / 32 groups per row. Rows are grouped into
 *   tiles of R rows (R = layout_param, a power of two in [1, 64]); the last tile is
 *   padded with zero rows (scale 0). Tile t holds rows [t*R, t*R + R) as two runs:
 *     scales: fp16 d[g][r]                at byte (g*R + r) * 2
 *     quants: the 32 weights of (g, r)    at byte ng*R*2 + (g*R + r) * QB
 *             QB = 16 for Q4: byte j holds weight 32g+j in its low nibble and
 *                  weight 32g+j+16 in its high nibble;
 *             QB = 32 for Q8: byte j holds weight 32g+j.
 *   So for a fixed group g, the R rows of a tile are adjacent: one SIMD load (or
 *   R neighbouring GPU work-items) reads R rows' quants as one contiguous run, and
 *   all scales of the tile come before its quants.
 *   tile bytes = ng * R * (2 + QB); tensor bytes = ceil(rows / R) * tile bytes.
 *
 * GROUPTILE layout (IDFX_LAYOUT_GROUPTILE, format 1 addition): the same tiles
 *   and bytes as ROWTILE, ordered group by group instead of scales first:
 *     tile t, group g: block at byte g * R * (2 + QB): the R fp16 scales
 *     d[g][0..R), then the R rows' quants of group g (QB bytes each, row order).
 *   A decode step then reads each tile as one ascending stream; the ROWTILE
 *   order (a scale run, then a quant run 2*R*ng bytes further on) measured
 *   25-30% slower streaming on Zen 5 for the same kernel (docs/CPU.md).
 *
 * Q8 KV cache (IDEFICS_KV_Q8), 8.5 bits/element; in memory only, never in a file
 *   A cache row (one token's K or V, hidden elements, hidden a multiple of 32) is
 *   cut into blocks of 32 consecutive elements, stored back to back, 34 bytes each:
 *     byte 0..1   fp16 scale d (little-endian), d = fp16(max|x| / 127)
 *     byte 2..33  int8 q[j] = clamp(round_half_even(x[j] / d), -127, 127)  (0 when d = 0)
 *   element e of the row is d(block e/32) * q[e % 32]. Blocks follow the row, not
 *   the heads: a head narrower than 32 shares a block with its neighbour (a
 *   per-row view keeps store_kv one pass and every offset a multiple of 34).
 *   Declared here next to the weight layouts so every backend reads one layout;
 *   idfx_kvq8_quantize_ref / idfx_kvq8_at_ref are the truth.
 */
#ifndef IDFX_QUANT_H
#define IDFX_QUANT_H

#define IDFX_QK 32               /* weights per group, Q4 and Q8 */
#define IDFX_Q4_QBYTES 16        /* quant bytes per group, Q4 */
#define IDFX_Q8_QBYTES 32        /* quant bytes per group, Q8 */
#define IDFX_SCALE_BYTES 2       /* fp16 scale per group */
#define IDFX_MAX_TILE_ROWS 64
#define IDFX_KVQ8_BLOCK 32       /* elements per Q8 KV block */
#define IDFX_KVQ8_BYTES 34       /* bytes per Q8 KV block: fp16 scale + 32 int8 */

/* The 16 Q4 levels, ascending. Pinned by format version 1. */
#define IDFX_Q4_CODEBOOK_INIT \
    { -117, -86, -65, -49, -36, -24, -13, -2, 9, 20, 33, 47, 62, 78, 98, 127 }

#ifdef __OPENCL_VERSION__
/* No program-scope __constant copy for OpenCL: the kernels take the codebook
 * as a __constant kernel argument (a 16-byte buffer the backend uploads from
 * IDFX_Q4_CODEBOOK). Mesa's Rusticl turns every read of program-scope
 * constant data into a read of a hidden kernel argument placed at the read,
 * and a read inside divergent control flow is one llvmpipe can only treat as
 * uniform (its "load_kernel_arg in control flow" warning). */
#else /* ---------------------------------------------------------- C only below */

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include "idfx_format.h"

static const int8_t IDFX_Q4_CODEBOOK[16] = IDFX_Q4_CODEBOOK_INIT;

/* ---- fp16 <-> fp32 (IEEE binary16, round to nearest even) ---- */
float idfx_fp16_to_fp32(uint16_t h);
uint16_t idfx_fp32_to_fp16(float f);
/* n floats to fp16, the same bits as idfx_fp32_to_fp16 for every input (round
 * to nearest even, subnormals, inf, NaN), written branch-free so the compiler
 * vectorizes it (F16 KV stores: 2.6% of a 512-token prefill as the scalar loop). */
void idfx_fp32_to_fp16_row(const float *src, uint16_t *dst, int64_t n);
float idfx_bf16_to_fp32(uint16_t h);

/* ---- type traits ---- */
typedef struct idfx_type_traits {
    const char *name;
    uint32_t group;        /* elements per group (1 for F32/F16) */
    uint32_t group_bytes;  /* bytes per group including its scale */
    bool quantized;
} idfx_type_traits;

/* ROWTILE or GROUPTILE: a 2-D Q4/Q8 tensor in R-row tiles (layout_param = R). */
static inline bool idfx_layout_tiled(int layout) {
    return layout == IDFX_LAYOUT_ROWTILE || layout == IDFX_LAYOUT_GROUPTILE;
}

/* NULL for an out-of-range type. */
const idfx_type_traits *idfx_type_get_traits(int type);

/* Byte size of a tensor with the given type/layout/shape, or false when the
 * combination is invalid (bad layout for the type, K not a multiple of 32,
 * tile rows out of range) or the size overflows. `unit` receives the byte size
 * of one chunking unit (a tile for ROWTILE, a row for ROWMAJOR). */
bool idfx_tensor_nbytes(int type, int layout, uint32_t layout_param, uint32_t n_dims,
                        const uint64_t *dims, uint64_t *nbytes, uint64_t *unit);

/* ---- scalar reference routines: the truth every SIMD and GPU path is tested against ---- */

/* Quantize `rows` x `k` fp32 row-major weights into a ROWTILE buffer of
 * idfx_tensor_nbytes() bytes. `search` is the number of scale candidates per
 * sign tried for each group (0 = plain absmax scale, no search). */
void idfx_quantize_q4_ref(const float *w, int64_t rows, int64_t k, uint32_t tile_rows,
                          int search, void *dst);
void idfx_quantize_q8_ref(const float *w, int64_t rows, int64_t k, uint32_t tile_rows,
                          int search, void *dst);

/* Dequantize one row of a ROWTILE tensor into k floats; _layout_: of either
 * tiled layout (ROWTILE or GROUPTILE). */
void idfx_dequant_row_ref(int type, const void *tensor, int64_t row, int64_t k,
                          uint32_t tile_rows, float *out);
void idfx_dequant_row_layout_ref(int type, int layout, const void *tensor, int64_t row, int64_t k,
                                 uint32_t tile_rows, float *out);

/* Rewrite a ROWTILE tensor (rows x k, tile_rows r) as GROUPTILE: the same
 * bytes, reordered tile by tile (src and dst do not overlap). */
void idfx_rowtile_to_grouptile(int type, uint32_t r, int64_t rows, int64_t k, const void *src, void *dst);

/* y[r] = sum_j W[r, j] * x[j] for r in [0, rows), any stored type and layout.
 * Reference GEMV in fp32; data is the tensor's decoded bytes. */
void idfx_gemv_ref(int type, int layout, uint32_t tile_rows, const void *data,
                   int64_t rows, int64_t k, const float *x, float *y);

/* Q8 KV cache (layout above): quantize n floats (n a multiple of 32) into
 * n / 32 blocks at dst; read element idx of a run of blocks. */
void idfx_kvq8_quantize_ref(const float *x, int64_t n, void *dst);
static inline float idfx_kvq8_at_ref(const void *blocks, int64_t idx) {
    const uint8_t *b = (const uint8_t *)blocks + (idx / IDFX_KVQ8_BLOCK) * IDFX_KVQ8_BYTES;
    return idfx_fp16_to_fp32((uint16_t)(b[0] | (b[1] << 8))) * (float)(int8_t)b[2 + idx % IDFX_KVQ8_BLOCK];
}

/* Plain absmax Q4_0 (groups of 32, fp16 scale d = max/-8, q in [0,15] - 8), the
 * baseline that the converter's --bench-quant compares our Q4 against. Writes the
 * dequantized values to out. */
void idfx_q4_0_absmax_roundtrip(const float *w, int64_t n, float *out);

#endif /* __OPENCL_VERSION__ */
#endif /* IDFX_QUANT_H */
