/*
 * q4_avx2.c - AVX2 + FMA + F16C kernels for the CPU backend (cpu_kernels.h),
 * for x86-64 CPUs without AVX-512 VNNI. Built with -mavx2 -mfma -mf16c
 * (runtime/meson.build), called only when platform/cpu_features.h reports them.
 *
 * Data layout (quant.h ROWTILE or GROUPTILE, addressed through idf_tile): for
 * group g the R rows of a tile are adjacent,
 * so one 32-byte ymm load holds group g of 2 rows (Q4, 16 bytes a row) or of
 * 1 row (Q8). Q4 nibbles become signed int8 weights through vpshufb on the
 * codebook. Signed x signed byte products use the abs/sign trick:
 * vpmaddubsw(|w|, sign(x, w)) (|w|, |x| <= 127, so pairs fit int16 without
 * saturating), then vpmaddwd with ones to int32. Work mapping: one call = one
 * tile x nx <= 4 activation rows, rows in blocks of 2*NB (Q4) / NB (Q8); per
 * group the int32 sums are scaled into fp32 accumulators, lanes summed once at
 * the end of the tile.
 */
#include <immintrin.h>
#include <string.h>

#include "cpu_kernels.h"
#include "quant.h"

#include "f32_block.inc"
#include "vec_f32.inc"

/* attn.inc over 8-lane ymm vectors (16 registers: tiles of 4 x 2) */
static inline float av_hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#define AV_T __m256
#define AV_VL 8
#define AV_NCV 2
#define AV_ZERO() _mm256_setzero_ps()
#define AV_SET1(x) _mm256_set1_ps(x)
#define AV_LOAD(p) _mm256_loadu_ps(p)
#define AV_STORE(p, v) _mm256_storeu_ps(p, v)
#define AV_ADD(a, b) _mm256_add_ps(a, b)
#define AV_MUL(a, b) _mm256_mul_ps(a, b)
#define AV_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define AV_HSUM(v) av_hsum256(v)
#define AV_LOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p)))
#define AV_LOAD_Q8X2(p, lo, hi)                                                                                        \
    do {                                                                                                               \
        lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(p))));           \
        hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)((p) + 8))));     \
    } while (0)
#define AV_F16_SCALAR(p) _cvtsh_ss((unsigned short)((p)[0] | ((p)[1] << 8)))
#include "attn.inc"

#define AI static inline __attribute__((always_inline))

AI __m256i dot_i8(__m256i w, __m256i x) {
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Q4: NB ymm of 2 rows each (NB <= 4). */
AI void q4_rows(const idf_tile *tl, int64_t ng, int rb, const int NB, const idf_qact *a, int64_t x0,
                const int NX, float *y, int64_t ldy, int rows_valid, const float *bias) {
    const uint8_t *sc = tl->s + rb * 2;
    const uint8_t *qs = tl->q + rb * 16;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i tbl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)IDFX_Q4_CODEBOOK));
    __m256i sidx[4];
    for (int b = 0; b < 4; b++)
        sidx[b] = _mm256_set_epi32(2 * b + 1, 2 * b + 1, 2 * b + 1, 2 * b + 1, 2 * b, 2 * b, 2 * b, 2 * b);
    __m256 acc[IDF_CPU_NX][4];
    for (int i = 0; i < NX; i++)
        for (int b = 0; b < NB; b++)
            acc[i][b] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *sg = sc + g * tl->s_step;
        __m128i h;
        if (NB == 4)
            h = _mm_loadu_si128((const __m128i *)sg);
        else if (NB == 2)
            h = _mm_loadl_epi64((const __m128i *)sg);
        else
            h = _mm_cvtsi32_si128(*(const int32_t *)(const void *)sg);
        const __m256 f = _mm256_cvtph_ps(h);
        if (NX == 1) /* decode: the weights stream from memory, fetch ahead across 4 KB pages */
            IDF_PREFETCH_AHEAD(qs + g * tl->q_step, NB * 32);
        __m256 s[4];
        __m256i wl[4], wh[4];
        for (int b = 0; b < NB; b++) {
            s[b] = _mm256_permutevar8x32_ps(f, sidx[b]);
            const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + g * tl->q_step + b * 32));
            wl[b] = _mm256_shuffle_epi8(tbl, _mm256_and_si256(q, m4));
            wh[b] = _mm256_shuffle_epi8(tbl, _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
        }
        for (int i = 0; i < NX; i++) {
            const int64_t row = x0 + i;
            const int8_t *xg = a->q + row * a->ldg * 32 + g * 32;
            const __m256i xl = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)xg));
            const __m256i xh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(xg + 16)));
            const __m256 dx = _mm256_set1_ps(a->d[row * a->ldg + g]);
            for (int b = 0; b < NB; b++) {
                const __m256i t = _mm256_add_epi32(dot_i8(wl[b], xl), dot_i8(wh[b], xh));
                acc[i][b] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(s[b], dx), acc[i][b]);
            }
        }
    }
    for (int i = 0; i < NX; i++)
        for (int b = 0; b < NB; b++) {
            float t[8];
            _mm256_storeu_ps(t, acc[i][b]);
            for (int l = 0; l < 2; l++) {
                const int r = rb + b * 2 + l;
                if (r < rows_valid)
                    y[i * ldy + r] = (t[4 * l] + t[4 * l + 1]) + (t[4 * l + 2] + t[4 * l + 3]) + (bias ? bias[r] : 0.f);
            }
        }
}

/* Q8: NB ymm of 1 row each (NB <= 4). */
AI void q8_rows(const idf_tile *tl, int64_t ng, int rb, const int NB, const idf_qact *a, int64_t x0,
                const int NX, float *y, int64_t ldy, int rows_valid, const float *bias) {
    const uint8_t *sc = tl->s + rb * 2;
    const uint8_t *qs = tl->q + rb * 32;
    __m256 acc[IDF_CPU_NX][4];
    for (int i = 0; i < NX; i++)
        for (int b = 0; b < NB; b++)
            acc[i][b] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *sg = sc + g * tl->s_step;
        if (NX == 1)
            IDF_PREFETCH_AHEAD(qs + g * tl->q_step, NB * 32);
        __m256 s[4];
        __m256i w[4];
        for (int b = 0; b < NB; b++) {
            s[b] = _mm256_set1_ps(_cvtsh_ss((unsigned short)(sg[2 * b] | (sg[2 * b + 1] << 8))));
            w[b] = _mm256_loadu_si256((const __m256i *)(qs + g * tl->q_step + b * 32));
        }
        for (int i = 0; i < NX; i++) {
            const int64_t row = x0 + i;
            const __m256i x = _mm256_loadu_si256((const __m256i *)(a->q + row * a->ldg * 32 + g * 32));
            const __m256 dx = _mm256_set1_ps(a->d[row * a->ldg + g]);
            for (int b = 0; b < NB; b++)
                acc[i][b] =
                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_i8(w[b], x)), _mm256_mul_ps(s[b], dx), acc[i][b]);
        }
    }
    for (int i = 0; i < NX; i++)
        for (int b = 0; b < NB; b++) {
            const int r = rb + b;
            if (r < rows_valid)
                y[i * ldy + r] = hsum8(acc[i][b]) + (bias ? bias[r] : 0.f);
        }
}

#define DISPATCH_NX(fn, NB)                                                                                            \
    switch (nx) {                                                                                                      \
    case 1: fn(tl, ng, rb, NB, a, x0, 1, y, ldy, rows_valid, bias); break;                                        \
    case 2: fn(tl, ng, rb, NB, a, x0, 2, y, ldy, rows_valid, bias); break;                                        \
    case 3: fn(tl, ng, rb, NB, a, x0, 3, y, ldy, rows_valid, bias); break;                                        \
    default: fn(tl, ng, rb, NB, a, x0, 4, y, ldy, rows_valid, bias); break;                                       \
    }

static void q4_tile(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                    int64_t ldy, int rows_valid, const float *bias) {
    const int R = tl->R;
    const int step = R % 8 == 0 ? 8 : R % 4 == 0 ? 4 : 2;
    for (int rb = 0; rb < rows_valid; rb += step) {
        if (step == 8) {
            DISPATCH_NX(q4_rows, 4)
        } else if (step == 4) {
            DISPATCH_NX(q4_rows, 2)
        } else {
            DISPATCH_NX(q4_rows, 1)
        }
    }
}

static void q8_tile(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                    int64_t ldy, int rows_valid, const float *bias) {
    const int R = tl->R;
    const int step = R % 4 == 0 ? 4 : 1;
    for (int rb = 0; rb < rows_valid; rb += step) {
        if (step == 4) {
            DISPATCH_NX(q8_rows, 4)
        } else {
            DISPATCH_NX(q8_rows, 1)
        }
    }
}

/* F16C: 8 fp16 -> fp32 per vcvtph2ps. */
static void fp16_row(const void *src, int64_t n, float *dst) {
    const uint8_t *p = src;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * j))));
    if (j < n)
        idf_cpu_fp16_row_scalar(p + 2 * j, n - j, dst + j);
}

/* Activation quantization (cpu_kernels.h): the same fp32 products and
 * round-to-nearest-even as idf_cpu_quant_scalar, so the same bytes. */
static void quant(const float *x, int64_t r0, int64_t n, idf_qact *a) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int64_t i = r0; i < r0 + n; i++) {
        const float *xi = x + (i - r0) * a->k;
        for (int64_t g = 0; g < a->ng; g++) {
            const float *xg = xi + g * 32;
            __m256 v[4];
            for (int b = 0; b < 4; b++)
                v[b] = _mm256_loadu_ps(xg + 8 * b);
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                     _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            const float amax = _mm_cvtss_f32(h);
            const float d = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
            const __m256 vi = _mm256_set1_ps(inv);
            __m256i q[4];
            for (int b = 0; b < 4; b++)
                q[b] = _mm256_cvtps_epi32(_mm256_mul_ps(v[b], vi));
            /* packs interleave 128-bit lanes; the permute restores element order */
            const __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
            const __m256i qb = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
            _mm256_storeu_si256((__m256i *)(a->q + i * a->ldg * 32 + g * 32), qb);
            a->d[i * a->ldg + g] = d;
            /* sums of 4 neighbours: ones (unsigned) x q (signed), then pairs */
            const __m256i s4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, qb), ones16);
            const __m256i c8 = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(s4, 7));
            _mm256_storeu_si256((__m256i *)(a->corr + (i * a->ldg + g) * 8), c8);
            const __m128i c4 = _mm_add_epi32(_mm256_castsi256_si128(c8), _mm256_extracti128_si256(c8, 1));
            _mm_storeu_si128((__m128i *)(a->corr4 + (i * a->ldg + g) * 4), c4);
            const __m128i c2 = _mm_add_epi32(c4, _mm_unpackhi_epi64(c4, c4));
            a->corr1[i * a->ldg + g] = _mm_cvtsi128_si32(_mm_add_epi32(c2, _mm_srli_si128(c2, 4)));
        }
    }
}

void idf_cpu_kernels_avx2(idf_cpu_kernels *k) {
    *k = (idf_cpu_kernels){
        .name = "avx2",
        .q4_tile = q4_tile,
        .q8_tile = q8_tile,
        .q4_min_r = 2,
        .q8_min_r = 1,
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
