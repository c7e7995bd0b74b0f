/*
 * q4_scalar.c - portable C kernels for the CPU backend (cpu_kernels.h): the
 * fallback on any CPU and the reference the SIMD kernel files reuse for odd
 * tile sizes. Data layout: ROWTILE or GROUPTILE tiles (quant.h), R rows per
 * tile, addressed through idf_tile: the scale of (group g, row r) at
 * s + g*s_step + r*2, its quants at q + g*q_step + r*QB. Work
 * mapping: one call = one tile x nx activation rows; the caller (backend_cpu.c)
 * spreads tiles over the thread pool. Dot products are exact in int32 per
 * group and scaled into an fp32 accumulator per (row, activation row).
 */
#include <math.h>
#include <string.h>

#include "cpu_kernels.h"
#include "quant.h"

#include "f32_block.inc"
#include "vec_f32.inc"

/* attn.inc over plain floats: the scalar kernels (one lane, tiles of 4 x 4) */
#define AV_T float
#define AV_VL 1
#define AV_NCV 4
#define AV_ZERO() 0.f
#define AV_SET1(x) (x)
#define AV_LOAD(p) (*(p))
#define AV_STORE(p, v) (*(p) = (v))
#define AV_ADD(a, b) ((a) + (b))
#define AV_MUL(a, b) ((a) * (b))
#define AV_FMA(a, b, c) ((a) * (b) + (c))
#define AV_HSUM(v) (v)
#define AV_LOAD_F16(p) idfx_fp16_to_fp32((uint16_t)((p)[0] | ((p)[1] << 8)))
#define AV_LOAD_Q8X2(p, lo, hi)                                                                                        \
    do {                                                                                                               \
        lo = (float)(int8_t)(p)[0];                                                                                    \
        hi = (float)(int8_t)(p)[1];                                                                                    \
    } while (0)
#define AV_F16_SCALAR(p) idfx_fp16_to_fp32((uint16_t)((p)[0] | ((p)[1] << 8)))
#include "attn.inc"

static inline float h2f(const uint8_t *p) {
    return idfx_fp16_to_fp32((uint16_t)(p[0] | (p[1] << 8)));
}

void idf_cpu_q4_tile_scalar(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                            int64_t ldy, int rows_valid, const float *bias) {
    for (int i = 0; i < nx; i++) {
        const int8_t *xq = a->q + (x0 + i) * a->ldg * 32;
        const float *xd = a->d + (x0 + i) * a->ldg;
        for (int r = 0; r < rows_valid; r++) {
            float acc = 0.f;
            for (int64_t g = 0; g < ng; g++) {
                const uint8_t *q = tl->q + g * tl->q_step + r * 16;
                const int8_t *xg = xq + g * 32;
                int32_t s = 0;
                for (int j = 0; j < 16; j++)
                    s += IDFX_Q4_CODEBOOK[q[j] & 15] * xg[j] + IDFX_Q4_CODEBOOK[q[j] >> 4] * xg[j + 16];
                acc += h2f(tl->s + g * tl->s_step + r * 2) * xd[g] * (float)s;
            }
            y[i * ldy + r] = acc + (bias ? bias[r] : 0.f);
        }
    }
}

void idf_cpu_q8_tile_scalar(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                            int64_t ldy, int rows_valid, const float *bias) {
    for (int i = 0; i < nx; i++) {
        const int8_t *xq = a->q + (x0 + i) * a->ldg * 32;
        const float *xd = a->d + (x0 + i) * a->ldg;
        for (int r = 0; r < rows_valid; r++) {
            float acc = 0.f;
            for (int64_t g = 0; g < ng; g++) {
                const int8_t *q = (const int8_t *)(tl->q + g * tl->q_step + r * 32);
                const int8_t *xg = xq + g * 32;
                int32_t s = 0;
                for (int j = 0; j < 32; j++)
                    s += q[j] * xg[j];
                acc += h2f(tl->s + g * tl->s_step + r * 2) * xd[g] * (float)s;
            }
            y[i * ldy + r] = acc + (bias ? bias[r] : 0.f);
        }
    }
}

void idf_cpu_quant_scalar(const float *x, int64_t r0, int64_t n, idf_qact *a) {
    for (int64_t i = r0; i < r0 + n; i++) {
        const float *xi = x + (i - r0) * a->k;
        for (int64_t g = 0; g < a->ng; g++) {
            const float *xg = xi + g * 32;
            float amax = 0.f;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(xg[j]));
            const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
            int8_t *q = a->q + i * a->ldg * 32 + g * 32;
            for (int j = 0; j < 32; j++)
                q[j] = (int8_t)lrintf(xg[j] * inv);
            a->d[i * a->ldg + g] = d;
            int32_t *c = a->corr + (i * a->ldg + g) * 8;
            for (int j = 0; j < 8; j++)
                c[j] = -128 * (q[4 * j] + q[4 * j + 1] + q[4 * j + 2] + q[4 * j + 3]);
            for (int j = 0; j < 4; j++)
                a->corr4[(i * a->ldg + g) * 4 + j] = c[j] + c[j + 4];
            a->corr1[i * a->ldg + g] = c[0] + c[1] + c[2] + c[3] + c[4] + c[5] + c[6] + c[7];
        }
    }
}

void idf_cpu_fp16_row_scalar(const void *src, int64_t n, float *dst) {
    const uint8_t *p = src;
    for (int64_t j = 0; j < n; j++)
        dst[j] = idfx_fp16_to_fp32((uint16_t)(p[2 * j] | (p[2 * j + 1] << 8)));
}

void idf_cpu_kernels_scalar(idf_cpu_kernels *k) {
    *k = (idf_cpu_kernels){
        .name = "scalar",
        .q4_tile = idf_cpu_q4_tile_scalar,
        .q8_tile = idf_cpu_q8_tile_scalar,
        .q4_min_r = 1,
        .q8_min_r = 1,
        .f32_block = f32_block,
        .quant = idf_cpu_quant_scalar,
        .fp16_row = idf_cpu_fp16_row_scalar,
        .attn_qk_row = attn_qk_row,
        .attn_pv_row = attn_pv_row,
        .attn_gemm_qk = attn_gemm_qk,
        .attn_gemm_pv = attn_gemm_pv,
        .attn_softmax_cols = attn_softmax_cols,
        .attn_vl = AV_VL,
        .softmax_exp = softmax_exp,
        .gelu = gelu_vec,
        .quick_gelu = quick_gelu_vec,
        .silu_mul = silu_mul_vec,
    };
}
