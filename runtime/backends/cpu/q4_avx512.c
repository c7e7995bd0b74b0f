/*
 * q4_avx512.c - AVX-512 (F, BW, VL) + VNNI kernels for the CPU backend
 * (cpu_kernels.h). Built with -mavx512* flags (runtime/meson.build) and called
 * only when platform/cpu_features.h reports all of them.
 *
 * Data layout (quant.h ROWTILE or GROUPTILE, addressed through idf_tile): for
 * group g the R rows of a tile are adjacent,
 * 16 quant bytes per row for Q4, 32 for Q8. So one 64-byte zmm load holds
 * group g of 4 rows (Q4) or 2 rows (Q8), and NB loads cover 4*NB / 2*NB rows.
 * Q4: nibbles -> bytes with and/shift, codebook lookup with vpshufb from a
 *     table of (codebook + 128) (unsigned); vpdpbusd multiplies those by the
 *     int8 activations; each row's 128-bit lane starts from the activation's
 *     -128 * sum correction (idf_qact.corr4), so the int32 sums are exact.
 * Q8: weights xor 0x80 (= w + 128, unsigned), same correction per 256-bit lane.
 * Work mapping: one call = one tile x nx <= 8 (Q4) / 4 (Q8) activation rows, rows in blocks
 * of 4*NB (Q4) / 2*NB (Q8); per group the int32 dot is scaled into fp32
 * accumulators (dw * dx), lanes are summed once at the end of the tile.
 */
#include <immintrin.h>
#include <string.h>

#include "cpu_kernels.h"
#include "quant.h"

#include "f32_block.inc"
#include "vec_f32.inc"

/* attn.inc over 16-lane zmm vectors */
#define AV_T __m512
#define AV_VL 16
#define AV_NCV 4
#define AV_ZERO() _mm512_setzero_ps()
#define AV_SET1(x) _mm512_set1_ps(x)
#define AV_LOAD(p) _mm512_loadu_ps(p)
#define AV_STORE(p, v) _mm512_storeu_ps(p, v)
#define AV_ADD(a, b) _mm512_add_ps(a, b)
#define AV_MUL(a, b) _mm512_mul_ps(a, b)
#define AV_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define AV_HSUM(v) _mm512_reduce_add_ps(v)
#define AV_LOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(p)))
#define AV_LOAD_Q8X2(p, lo, hi)                                                                                        \
    do {                                                                                                               \
        lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)(p))));           \
        hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)((p) + 16))));    \
    } while (0)
#define AV_F16_SCALAR(p) _cvtsh_ss((unsigned short)((p)[0] | ((p)[1] << 8)))
#include "attn.inc"

#define AI static inline __attribute__((always_inline))

/* The codebook + 128 as unsigned bytes, in every 128-bit lane. */
AI __m512i cb_table(void) {
    uint8_t t[16];
    for (int j = 0; j < 16; j++)
        t[j] = (uint8_t)(IDFX_Q4_CODEBOOK[j] + 128);
    return _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)t));
}

/* Q4: NB zmm of 4 rows each, NX activation rows. */
AI void q4_rows(const idf_tile *tl, int64_t ng, int rb, const int NB, const idf_qact *a, int64_t x0, const int NX,
                float *y, int64_t ldy, int rows_valid, const float *bias) {
    const uint8_t *sc = tl->s + rb * 2;
    const uint8_t *qs = tl->q + rb * 16;
    const __m512i m4 = _mm512_set1_epi8(0x0f), tbl = cb_table();
    const __m512i sidx0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i sidx1 = _mm512_add_epi32(sidx0, _mm512_set1_epi32(4));
    __m512 acc[IDF_CPU_NX_MAX][2];
    for (int i = 0; i < NX; i++)
        for (int b = 0; b < NB; b++)
            acc[i][b] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *sg = sc + g * tl->s_step;
        const __m128i h = NB == 2 ? _mm_loadu_si128((const __m128i *)sg) : _mm_loadl_epi64((const __m128i *)sg);
        const __m512 f = _mm512_castps256_ps512(_mm256_cvtph_ps(h));
        __m512 s[2];
        s[0] = _mm512_permutexvar_ps(sidx0, f);
        if (NB == 2)
            s[1] = _mm512_permutexvar_ps(sidx1, f);
        __m512i wl[2], wh[2];
        for (int b = 0; b < NB; b++) {
            const __m512i q = _mm512_loadu_si512((const void *)(qs + g * tl->q_step + b * 64));
            wl[b] = _mm512_shuffle_epi8(tbl, _mm512_and_si512(q, m4));
            wh[b] = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16(q, 4), m4));
        }
        for (int i = 0; i < NX; i++) {
            const int64_t row = x0 + i;
            const int8_t *xg = a->q + row * a->ldg * 32 + g * 32;
            const __m512i xl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)xg));
            const __m512i xh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xg + 16)));
            /* pre-summed at quantization: one broadcast load instead of two loads and an add */
            const __m512i c =
                _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(a->corr4 + (row * a->ldg + g) * 4)));
            const __m512 dx = _mm512_set1_ps(a->d[row * a->ldg + g]);
            for (int b = 0; b < NB; b++) {
                __m512i t = _mm512_dpbusd_epi32(c, wl[b], xl);
                t = _mm512_dpbusd_epi32(t, wh[b], xh);
                acc[i][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(s[b], dx), acc[i][b]);
            }
        }
    }
    for (int i = 0; i < NX; i++)
        for (int b = 0; b < NB; b++) {
            float t[16];
            _mm512_storeu_ps(t, acc[i][b]);
            for (int l = 0; l < 4; l++) {
                const int r = rb + b * 4 + l;
                if (r < rows_valid)
                    y[i * ldy + r] = (t[4 * l] + t[4 * l + 1]) + (t[4 * l + 2] + t[4 * l + 3]) + (bias ? bias[r] : 0.f);
            }
        }
}

/* Decode (one activation row) against 8 rows per pass. It reads each weight
 * byte once and does little work per byte, so it waits on memory unless the
 * stream is fetched ahead: the hardware prefetcher stops at each 4 KB page
 * (the weights are file-backed 4 KB pages), and with software prefetch
 * IDF_CPU_PREFETCH bytes ahead one Zen 5 core went from 16 to 27 GB/s of Q4
 * (its plain read loop: 28-33). The activation scale is folded into the
 * eight row scales before they are spread over lanes (one ymm multiply
 * instead of two zmm), and two accumulator pairs alternate by group so the
 * fma chains do not limit a memory-bound loop.
 * TWO: decode with two-level activations (backend_cpu.c ACT2: x ~= d1 q1 +
 * d2 q2, rows x0 and x1 of a): y = W x0 + W x1 in the same single pass over
 * the weights, so the second level costs integer work in a memory-bound loop
 * instead of a second, unprefetched kernel over the tile. Per group the two
 * int32 dots are scaled by their activation scales and added before the
 * weight scale multiplies them. */
AI void gemv8(const idf_tile *tl, int64_t ng, int rb, const idf_qact *a, int64_t x0, int64_t x1, const int TWO,
              float *y, int rows_valid, const float *bias) {
    const uint8_t *sc = tl->s + rb * 2;
    const uint8_t *qs = tl->q + rb * 16;
    const __m512i m4 = _mm512_set1_epi8(0x0f), tbl = cb_table();
    const __m512i sidx0 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i sidx1 = _mm512_add_epi32(sidx0, _mm512_set1_epi32(4));
    const int8_t *xq = a->q + x0 * a->ldg * 32, *rq = a->q + x1 * a->ldg * 32;
    const float *xd = a->d + x0 * a->ldg, *rd = a->d + x1 * a->ldg;
    const int32_t *xc = a->corr4 + x0 * a->ldg * 4, *rc = a->corr4 + x1 * a->ldg * 4;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *qg = qs + g * tl->q_step;
        IDF_PREFETCH_AHEAD(qg, 128);
        __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + g * tl->s_step)));
        if (!TWO)
            f = _mm256_mul_ps(f, _mm256_set1_ps(xd[g]));
        const __m512 fz = _mm512_castps256_ps512(f);
        const __m512 s0 = _mm512_permutexvar_ps(sidx0, fz), s1 = _mm512_permutexvar_ps(sidx1, fz);
        const __m512i q0 = _mm512_loadu_si512((const void *)qg), q1 = _mm512_loadu_si512((const void *)(qg + 64));
        const __m512i l0 = _mm512_shuffle_epi8(tbl, _mm512_and_si512(q0, m4));
        const __m512i l1 = _mm512_shuffle_epi8(tbl, _mm512_and_si512(q1, m4));
        const __m512i h0 = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16(q0, 4), m4));
        const __m512i h1 = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16(q1, 4), m4));
        const __m512i xl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xq + g * 32)));
        const __m512i xh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xq + g * 32 + 16)));
        const __m512i c = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(xc + g * 4)));
        __m512 v0 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, l0, xl), h0, xh));
        __m512 v1 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(c, l1, xl), h1, xh));
        if (TWO) {
            const __m512i rl = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(rq + g * 32)));
            const __m512i rh = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(rq + g * 32 + 16)));
            const __m512i rcr = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(rc + g * 4)));
            const __m512 dx = _mm512_set1_ps(xd[g]), dr = _mm512_set1_ps(rd[g]);
            v0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(rcr, l0, rl), h0, rh)), dr,
                                 _mm512_mul_ps(v0, dx));
            v1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_dpbusd_epi32(rcr, l1, rl), h1, rh)), dr,
                                 _mm512_mul_ps(v1, dx));
        }
        const int p = (int)(g & 1) * 2;
        acc[p] = _mm512_fmadd_ps(v0, s0, acc[p]);
        acc[p + 1] = _mm512_fmadd_ps(v1, s1, acc[p + 1]);
    }
    float t[32];
    _mm512_storeu_ps(t, _mm512_add_ps(acc[0], acc[2]));
    _mm512_storeu_ps(t + 16, _mm512_add_ps(acc[1], acc[3]));
    for (int l = 0; l < 8; l++) {
        const int r = rb + l;
        if (r < rows_valid)
            y[r] = (t[4 * l] + t[4 * l + 1]) + (t[4 * l + 2] + t[4 * l + 3]) + (bias ? bias[r] : 0.f);
    }
}

static void q4_gemv8(const idf_tile *tl, int64_t ng, int rb, const idf_qact *a, int64_t x0, float *y, int rows_valid,
                     const float *bias) {
    gemv8(tl, ng, rb, a, x0, x0, 0, y, rows_valid, bias);
}

static void q4_tile_sum2(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int64_t x1, float *y,
                         int rows_valid, const float *bias) {
    for (int rb = 0; rb < rows_valid; rb += 8)
        gemv8(tl, ng, rb, a, x0, x1, 1, y, rows_valid, bias);
}

/* GEMM, 16 weight rows x NX activation rows per pass (cpu_kernels.h
 * idf_cpu_rows16_fn). q4_rows keeps each row's group in one 128-bit lane, so
 * every vpdpbusd leaves four partial sums per row and each (row block, group,
 * activation row) pays cvt + mul + fma per two vpdpbusd. Here the quant bytes
 * of 16 rows are transposed in registers (8 unpacks per group, shared by all
 * NX activation rows) so that int32 lane j holds one row and every vpdpbusd
 * adds a dword of 4 weights x a broadcast dword of 4 activations: 8 vpdpbusd
 * complete the group, and cvt + mul + fma run once per 16 rows instead of four
 * times. The activation's -128 * sum correction is one int32 per group
 * (idf_qact.corr1). Lane j = 4L + p holds row L + 4p (the unpack order);
 * the scales are permuted to match and the rows put back on store. */
AI void rows16_nx(const idf_tile *A, const idf_tile *B, int64_t ng, const idf_qact *a, int64_t x0, const int NX,
                  float *y, int64_t ldy, const float *bias) {
    const __m512i m4 = _mm512_set1_epi8(0x0f), tbl = cb_table();
    const __m512i sperm = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    __m512 acc[IDF_CPU_NX_MAX];
    for (int i = 0; i < NX; i++)
        acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const __m256i h =
            _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(A->s + g * A->s_step))),
                                    _mm_loadu_si128((const __m128i *)(B->s + g * B->s_step)), 1);
        const __m512 sp = _mm512_permutexvar_ps(sperm, _mm512_cvtph_ps(h));
        const uint8_t *pa = A->q + g * A->q_step, *pb = B->q + g * B->q_step;
        const __m512i a0 = _mm512_loadu_si512((const void *)pa), a1 = _mm512_loadu_si512((const void *)(pa + 64));
        const __m512i b0 = _mm512_loadu_si512((const void *)pb), b1 = _mm512_loadu_si512((const void *)(pb + 64));
        const __m512i t0 = _mm512_unpacklo_epi32(a0, a1), t1 = _mm512_unpackhi_epi32(a0, a1);
        const __m512i t2 = _mm512_unpacklo_epi32(b0, b1), t3 = _mm512_unpackhi_epi32(b0, b1);
        __m512i p[4];
        p[0] = _mm512_unpacklo_epi64(t0, t2);
        p[1] = _mm512_unpackhi_epi64(t0, t2);
        p[2] = _mm512_unpacklo_epi64(t1, t3);
        p[3] = _mm512_unpackhi_epi64(t1, t3);
        /* p[m] holds packed byte dword m of every row: weights 4m.. (low
         * nibbles) and 16 + 4m.. (high nibbles) */
        __m512i wl[4], wh[4];
        for (int m = 0; m < 4; m++) {
            wl[m] = _mm512_shuffle_epi8(tbl, _mm512_and_si512(p[m], m4));
            wh[m] = _mm512_shuffle_epi8(tbl, _mm512_and_si512(_mm512_srli_epi16(p[m], 4), m4));
        }
        for (int i = 0; i < NX; i++) {
            const int64_t row = x0 + i;
            const int8_t *xg = a->q + row * a->ldg * 32 + g * 32;
            int32_t xv[8];
            memcpy(xv, xg, sizeof xv);
            __m512i t = _mm512_set1_epi32(a->corr1[row * a->ldg + g]);
            for (int m = 0; m < 4; m++) {
                t = _mm512_dpbusd_epi32(t, wl[m], _mm512_set1_epi32(xv[m]));
                t = _mm512_dpbusd_epi32(t, wh[m], _mm512_set1_epi32(xv[4 + m]));
            }
            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(sp, _mm512_set1_ps(a->d[row * a->ldg + g])),
                                     acc[i]);
        }
    }
    for (int i = 0; i < NX; i++) {
        float t[16];
        _mm512_storeu_ps(t, acc[i]);
        for (int j = 0; j < 16; j++) {
            const int r = j / 4 + 4 * (j % 4);
            y[i * ldy + r] = t[j] + (bias ? bias[r] : 0.f);
        }
    }
}

static void q4_rows16(const idf_tile *A, const idf_tile *B, int64_t ng, const idf_qact *a, int64_t x0, int nx,
                      float *y, int64_t ldy, const float *bias) {
    switch (nx) {
    case 1: rows16_nx(A, B, ng, a, x0, 1, y, ldy, bias); break;
    case 2: rows16_nx(A, B, ng, a, x0, 2, y, ldy, bias); break;
    case 3: rows16_nx(A, B, ng, a, x0, 3, y, ldy, bias); break;
    case 4: rows16_nx(A, B, ng, a, x0, 4, y, ldy, bias); break;
    case 5: rows16_nx(A, B, ng, a, x0, 5, y, ldy, bias); break;
    case 6: rows16_nx(A, B, ng, a, x0, 6, y, ldy, bias); break;
    case 7: rows16_nx(A, B, ng, a, x0, 7, y, ldy, bias); break;
    default: rows16_nx(A, B, ng, a, x0, 8, y, ldy, bias); break;
    }
}

/* Q8: NB zmm of 2 rows each. */
AI void q8_rows(const idf_tile *tl, int64_t ng, int rb, const int NB, const idf_qact *a, int64_t x0,
                const int NX, float *y, int64_t ldy, int rows_valid, const float *bias) {
    const uint8_t *sc = tl->s + rb * 2;
    const uint8_t *qs = tl->q + rb * 32;
    const __m512i bias80 = _mm512_set1_epi8((char)0x80);
    __m512i sidx[4];
    for (int b = 0; b < 4; b++)
        sidx[b] = _mm512_set_epi32(2 * b + 1, 2 * b + 1, 2 * b + 1, 2 * b + 1, 2 * b + 1, 2 * b + 1, 2 * b + 1,
                                   2 * b + 1, 2 * b, 2 * b, 2 * b, 2 * b, 2 * b, 2 * b, 2 * b, 2 * b);
    __m512 acc[IDF_CPU_NX][4];
    for (int i = 0; i < NX; i++)
        for (int b = 0; b < NB; b++)
            acc[i][b] = _mm512_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *sg = sc + g * tl->s_step;
        __m128i h;
        if (NB == 4)
            h = _mm_loadu_si128((const __m128i *)sg);
        else if (NB == 2)
            h = _mm_loadl_epi64((const __m128i *)sg);
        else
            h = _mm_cvtsi32_si128(*(const int32_t *)(const void *)sg);
        const __m512 f = _mm512_castps256_ps512(_mm256_cvtph_ps(h));
        __m512 s[4];
        __m512i w[4];
        for (int b = 0; b < NB; b++) {
            s[b] = _mm512_permutexvar_ps(sidx[b], f);
            w[b] = _mm512_xor_si512(_mm512_loadu_si512((const void *)(qs + g * tl->q_step + b * 64)), bias80);
        }
        if (NX == 1) /* decode: the weights stream from memory (see q4_gemv8) */
            IDF_PREFETCH_AHEAD(qs + g * tl->q_step, NB * 64);
        for (int i = 0; i < NX; i++) {
            const int64_t row = x0 + i;
            const int8_t *xg = a->q + row * a->ldg * 32 + g * 32;
            const __m512i x = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)xg));
            const __m512i c =
                _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(a->corr + (row * a->ldg + g) * 8)));
            const __m512 dx = _mm512_set1_ps(a->d[row * a->ldg + g]);
            for (int b = 0; b < NB; b++)
                acc[i][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(c, w[b], x)),
                                            _mm512_mul_ps(s[b], dx), acc[i][b]);
        }
    }
    for (int i = 0; i < NX; i++)
        for (int b = 0; b < NB; b++) {
            float t[16];
            _mm512_storeu_ps(t, acc[i][b]);
            for (int l = 0; l < 2; l++) {
                const int r = rb + b * 2 + l;
                if (r >= rows_valid)
                    continue;
                float s = 0.f;
                for (int e = 0; e < 8; e++)
                    s += t[8 * l + e];
                y[i * ldy + r] = s + (bias ? bias[r] : 0.f);
            }
        }
}

#define DISPATCH_NX(fn, NB, ...)                                                                                       \
    switch (nx) {                                                                                                      \
    case 1: fn(tl, ng, rb, NB, a, x0, 1, y, ldy, rows_valid, bias); break;                                        \
    case 2: fn(tl, ng, rb, NB, a, x0, 2, y, ldy, rows_valid, bias); break;                                        \
    case 3: fn(tl, ng, rb, NB, a, x0, 3, y, ldy, rows_valid, bias); break;                                        \
    default: fn(tl, ng, rb, NB, a, x0, 4, y, ldy, rows_valid, bias); break;                                       \
    }

/* Q4 takes up to 8 activation rows per call (q4_max_nx): 8 x 2 fp32
 * accumulators + 4 decoded weight registers fit the 32 zmm, and the nibble
 * decode and codebook lookup of a group are then shared by twice the rows. */
#define DISPATCH_NX8(fn, NB)                                                                                           \
    switch (nx) {                                                                                                      \
    case 1: fn(tl, ng, rb, NB, a, x0, 1, y, ldy, rows_valid, bias); break;                                        \
    case 2: fn(tl, ng, rb, NB, a, x0, 2, y, ldy, rows_valid, bias); break;                                        \
    case 3: fn(tl, ng, rb, NB, a, x0, 3, y, ldy, rows_valid, bias); break;                                        \
    case 4: fn(tl, ng, rb, NB, a, x0, 4, y, ldy, rows_valid, bias); break;                                        \
    case 5: fn(tl, ng, rb, NB, a, x0, 5, y, ldy, rows_valid, bias); break;                                        \
    case 6: fn(tl, ng, rb, NB, a, x0, 6, y, ldy, rows_valid, bias); break;                                        \
    case 7: fn(tl, ng, rb, NB, a, x0, 7, y, ldy, rows_valid, bias); break;                                        \
    default: fn(tl, ng, rb, NB, a, x0, 8, y, ldy, rows_valid, bias); break;                                       \
    }

static void q4_tile(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                    int64_t ldy, int rows_valid, const float *bias) {
    const int R = tl->R;
    const int step = R % 8 == 0 ? 8 : 4;
    for (int rb = 0; rb < rows_valid; rb += step) {
        if (step == 8 && nx == 1) {
            q4_gemv8(tl, ng, rb, a, x0, y, rows_valid, bias);
        } else if (step == 8) {
            DISPATCH_NX8(q4_rows, 2)
        } else {
            DISPATCH_NX8(q4_rows, 1)
        }
    }
}

static void q8_tile(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                    int64_t ldy, int rows_valid, const float *bias) {
    const int R = tl->R;
    const int step = R % 8 == 0 ? 8 : R % 4 == 0 ? 4 : 2;
    for (int rb = 0; rb < rows_valid; rb += step) {
        if (step == 8) {
            DISPATCH_NX(q8_rows, 4)
        } else if (step == 4) {
            DISPATCH_NX(q8_rows, 2)
        } else {
            DISPATCH_NX(q8_rows, 1)
        }
    }
}

/* 16 fp16 -> fp32 per vcvtph2ps zmm. */
static void fp16_row(const void *src, int64_t n, float *dst) {
    const uint8_t *p = src;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(dst + j, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 2 * j))));
    if (j < n)
        idf_cpu_fp16_row_scalar(p + 2 * j, n - j, dst + j);
}

/* Activation quantization (cpu_kernels.h): the same fp32 products and
 * round-to-nearest-even as idf_cpu_quant_scalar, so the same bytes; the
 * correction sums come from vpdpbusd of ones (unsigned) by q (signed). */
static void quant(const float *x, int64_t r0, int64_t n, idf_qact *a) {
    const __m256i ones8 = _mm256_set1_epi8(1);
    for (int64_t i = r0; i < r0 + n; i++) {
        const float *xi = x + (i - r0) * a->k;
        for (int64_t g = 0; g < a->ng; g++) {
            const float *xg = xi + g * 32;
            const __m512 v0 = _mm512_loadu_ps(xg), v1 = _mm512_loadu_ps(xg + 16);
            const float amax =
                _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
            const __m512 vi = _mm512_set1_ps(inv);
            const __m128i b0 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v0, vi)));
            const __m128i b1 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v1, vi)));
            const __m256i qb = _mm256_inserti128_si256(_mm256_castsi128_si256(b0), b1, 1);
            _mm256_storeu_si256((__m256i *)(a->q + i * a->ldg * 32 + g * 32), qb);
            a->d[i * a->ldg + g] = d;
            const __m256i s4 = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones8, qb);
            const __m256i c8 = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s4, 7));
            _mm256_storeu_si256((__m256i *)(a->corr + (i * a->ldg + g) * 8), c8);
            const __m128i c4 = _mm_add_epi32(_mm256_castsi256_si128(c8), _mm256_extracti128_si256(c8, 1));
            _mm_storeu_si128((__m128i *)(a->corr4 + (i * a->ldg + g) * 4), c4);
            const __m128i c2 = _mm_add_epi32(c4, _mm_unpackhi_epi64(c4, c4));
            a->corr1[i * a->ldg + g] = _mm_cvtsi128_si32(_mm_add_epi32(c2, _mm_srli_si128(c2, 4)));
        }
    }
}

void idf_cpu_kernels_avx512(idf_cpu_kernels *k) {
    *k = (idf_cpu_kernels){
        .name = "avx512vnni",
        .q4_tile = q4_tile,
        .q8_tile = q8_tile,
        .q4_rows16 = q4_rows16,
        .q4_tile_sum2 = q4_tile_sum2,
        .q4_sum2_min_r = 8,
        .q4_min_r = 4,
        .q8_min_r = 2,
        .q4_max_nx = 8,
        .q8_max_nx = 4,
        .f32_block = f32_block,
        .quant = quant,
        .fp16_row = fp16_row,
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
