/*
 * quant_ref.c - scalar reference routines for the layouts in quant.h.
 * Straightforward on purpose: every SIMD and GPU path is tested against these.
 */
#include "quant.h"

#include <math.h>
#include <string.h>

#include "platform.h"

/* ---------------------------------------------------------------- fp16 */

float idfx_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

uint16_t idfx_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000u ? 0x200 : 0));
    if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000u) { /* below the smallest normal half: subnormal or zero */
        if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25 rounds to 0 */
        uint32_t e = absx >> 23;
        uint32_t man = (absx & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((absx >> 13) - ((127 - 15) << 10)) & 0xffff;
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

/* Branch-free: both the normal and the subnormal result are computed and one
 * is picked with integer masks. The subnormal one comes from the FPU (adding
 * 0.5 shifts the value's bits into the low mantissa, rounded to nearest even
 * by the addition itself); the normal one by rounding the mantissa at bit 13
 * with a bias of 0xfff plus the kept bit's parity. */
void idfx_fp32_to_fp16_row(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t x;
        memcpy(&x, &src[i], 4);
        const uint32_t sign = (x >> 16) & 0x8000u, absx = x & 0x7fffffffu;
        float af;
        memcpy(&af, &absx, 4);
        /* subnormal half: absx < 2^-14; 0.5f is 126 << 23 */
        float sf = af + 0.5f;
        uint32_t sb;
        memcpy(&sb, &sf, 4);
        const uint32_t sub = sb - 0x3f000000u;
        /* normal half; values that round past 65504 carry into the exponent
         * and land on 0x7c00 (inf) */
        const uint32_t nrm = (absx + 0xc8000fffu + ((absx >> 13) & 1u)) >> 13;
        const uint32_t is_sub = (uint32_t) - (int32_t)(absx < 0x38800000u);
        const uint32_t is_big = (uint32_t) - (int32_t)(absx >= 0x47800000u);
        const uint32_t is_nan = (uint32_t) - (int32_t)(absx > 0x7f800000u);
        uint32_t h = (sub & is_sub) | (nrm & ~is_sub);
        h = (h & ~is_big) | ((0x7c00u | (0x200u & is_nan)) & is_big);
        dst[i] = (uint16_t)((h & 0x7fffu) | sign);
    }
}

float idfx_bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* -------------------------------------------------------------- traits */

static const idfx_type_traits traits[IDFX_TYPE_COUNT] = {
    [IDFX_TYPE_F32] = {.name = "F32", .group = 1, .group_bytes = 4, .quantized = false},
    [IDFX_TYPE_F16] = {.name = "F16", .group = 1, .group_bytes = 2, .quantized = false},
    [IDFX_TYPE_Q4] = {.name = "Q4", .group = IDFX_QK, .group_bytes = IDFX_SCALE_BYTES + IDFX_Q4_QBYTES, .quantized = true},
    [IDFX_TYPE_Q8] = {.name = "Q8", .group = IDFX_QK, .group_bytes = IDFX_SCALE_BYTES + IDFX_Q8_QBYTES, .quantized = true},
};

const idfx_type_traits *idfx_type_get_traits(int type) {
    return (type >= 0 && type < IDFX_TYPE_COUNT) ? &traits[type] : NULL;
}

bool idfx_tensor_nbytes(int type, int layout, uint32_t layout_param, uint32_t n_dims, const uint64_t *dims,
                        uint64_t *nbytes, uint64_t *unit) {
    const idfx_type_traits *tt = idfx_type_get_traits(type);
    if (!tt || n_dims < 1 || n_dims > IDFX_MAX_DIMS) return false;
    uint64_t n = 1;
    for (uint32_t i = 0; i < n_dims; i++) {
        if (dims[i] == 0) return false;
        if (!idf_mul_u64(n, dims[i], &n)) return false;
    }
    if (layout == IDFX_LAYOUT_ROWMAJOR) {
        if (tt->quantized || layout_param != 0) return false;
        uint64_t row = dims[n_dims - 1];
        if (!idf_mul_u64(row, tt->group_bytes, unit)) return false;
        return idf_mul_u64(n, tt->group_bytes, nbytes);
    }
    if (idfx_layout_tiled(layout)) {
        uint32_t r = layout_param;
        if (!tt->quantized || n_dims != 2) return false;
        if (r < 1 || r > IDFX_MAX_TILE_ROWS || (r & (r - 1)) != 0) return false;
        uint64_t rows = dims[0], k = dims[1];
        if (k % IDFX_QK != 0) return false;
        uint64_t ng = k / IDFX_QK, tile, ntiles = rows / r + (rows % r != 0);
        if (!idf_mul_u64(ng, (uint64_t)r * tt->group_bytes, &tile)) return false;
        *unit = tile;
        return idf_mul_u64(ntiles, tile, nbytes);
    }
    return false;
}

/* ------------------------------------------------------- quantization */

/* Tile addressing: pointers to the scale and quants of (row, group g). */
static inline uint8_t *tile_scale(uint8_t *base, int64_t row, int64_t g, int64_t ng, uint32_t r, uint32_t qb) {
    uint64_t tile_bytes = (uint64_t)ng * r * (IDFX_SCALE_BYTES + qb);
    uint8_t *tile = base + (uint64_t)(row / r) * tile_bytes;
    return tile + ((uint64_t)g * r + (uint64_t)(row % r)) * IDFX_SCALE_BYTES;
}
static inline uint8_t *tile_quants(uint8_t *base, int64_t row, int64_t g, int64_t ng, uint32_t r, uint32_t qb) {
    uint64_t tile_bytes = (uint64_t)ng * r * (IDFX_SCALE_BYTES + qb);
    uint8_t *tile = base + (uint64_t)(row / r) * tile_bytes;
    return tile + (uint64_t)ng * r * IDFX_SCALE_BYTES + ((uint64_t)g * r + (uint64_t)(row % r)) * qb;
}

/* The same for either tiled layout (GROUPTILE: group g's R scales, then its R
 * rows' quants, one block of R * (2 + qb) bytes per group). */
static inline uint8_t *lay_scale(int layout, uint8_t *base, int64_t row, int64_t g, int64_t ng, uint32_t r,
                                 uint32_t qb) {
    if (layout != IDFX_LAYOUT_GROUPTILE) return tile_scale(base, row, g, ng, r, qb);
    uint8_t *tile = base + (uint64_t)(row / r) * ((uint64_t)ng * r * (IDFX_SCALE_BYTES + qb));
    return tile + (uint64_t)g * r * (IDFX_SCALE_BYTES + qb) + (uint64_t)(row % r) * IDFX_SCALE_BYTES;
}
static inline uint8_t *lay_quants(int layout, uint8_t *base, int64_t row, int64_t g, int64_t ng, uint32_t r,
                                  uint32_t qb) {
    if (layout != IDFX_LAYOUT_GROUPTILE) return tile_quants(base, row, g, ng, r, qb);
    uint8_t *tile = base + (uint64_t)(row / r) * ((uint64_t)ng * r * (IDFX_SCALE_BYTES + qb));
    return tile + (uint64_t)g * r * (IDFX_SCALE_BYTES + qb) + (uint64_t)r * IDFX_SCALE_BYTES +
           (uint64_t)(row % r) * qb;
}

/* Nearest codebook index for x (in codebook units). The codebook is sorted, so
 * compare against the midpoints. */
static inline int q4_nearest(float x) {
    int lo = 0;
    /* binary search over 16 sorted levels: 4 steps */
    for (int step = 8; step > 0; step >>= 1) {
        int i = lo + step;
        if (i < 16 && x > 0.5f * (float)(IDFX_Q4_CODEBOOK[i - 1] + IDFX_Q4_CODEBOOK[i])) lo = i;
    }
    return lo;
}

/* Nearest level by bucket: for each integer n in [-Q4_TAB_HALF, Q4_TAB_HALF),
 * base = the number of midpoints below n and m = the midpoint in [n, n + 1) (at
 * most one: adjacent midpoints are more than 10 apart), or +inf. The index of v
 * is then base + (v > m), the same count of midpoints below v that the binary
 * search in q4_nearest gives, for every float including NaN and infinities (the
 * clamp sends NaN to the bottom bucket). Midpoints are multiples of 0.5, so
 * when c + Q4_TAB_HALF rounds up to the next integer (c just below it) no
 * midpoint lies in between and the count is still right. Built once per call. */
#define Q4_TAB_HALF 200
typedef struct q4_tab {
    uint8_t base[2 * Q4_TAB_HALF];
    float m[2 * Q4_TAB_HALF];
} q4_tab;

static void q4_tab_init(q4_tab *t) {
    float mid[15];
    for (int i = 1; i < 16; i++) mid[i - 1] = 0.5f * (float)(IDFX_Q4_CODEBOOK[i - 1] + IDFX_Q4_CODEBOOK[i]);
    for (int b = 0; b < 2 * Q4_TAB_HALF; b++) {
        float n = (float)(b - Q4_TAB_HALF);
        int below = 0;
        float m = INFINITY;
        for (int i = 0; i < 15; i++) {
            if (mid[i] < n)
                below++;
            else if (mid[i] < n + 1.f)
                m = mid[i];
        }
        t->base[b] = (uint8_t)below;
        t->m[b] = m;
    }
}

static inline int q4_nearest_tab(const q4_tab *t, float v) {
    float c = fminf(fmaxf(v, -Q4_TAB_HALF + 0.5f), Q4_TAB_HALF - 0.5f);
    int b = (int)(c + (float)Q4_TAB_HALF);
    return t->base[b] + (v > t->m[b]);
}

/* For one group of 32: choose codebook indices and a scale minimising the squared
 * error. Candidate scales: amax / cb_max * s for `search` values of s in
 * [0.7, 1.3] (s = 1 when search is 1), for both signs (so the codebook's longer
 * side can take either tail); for each, the indices are chosen and the scale
 * refit by least squares. search == 0: the single candidate s = 1, positive
 * sign, no refit. The winner is the first candidate, in the order (sign, s),
 * with the strictly smallest error; a group where no candidate has a finite
 * error (weights beyond the fp16 scale range, infinities) is stored as zeros. */
static float q4_group(const q4_tab *tab, const float *x, int search, uint8_t idx[IDFX_QK]) {
    float amax = 0.f;
    for (int j = 0; j < IDFX_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    memset(idx, q4_nearest(0.f), IDFX_QK);
    if (amax == 0.f) return 0.f;
    const float cbmax = 127.f;
    const int n = search > 0 ? search : 1;
    float best_err = INFINITY, best_d = 0.f;
    for (int sign = 0; sign < (search > 0 ? 2 : 1); sign++) {
        for (int s = 0; s < n; s++) {
            float f = search > 1 ? 0.7f + 0.6f * (float)s / (float)(n - 1) : 1.f;
            float d = (sign ? -1.f : 1.f) * amax * f / cbmax;
            float inv = 1.f / d;
            float num = 0.f, den = 0.f, lev[IDFX_QK];
            uint8_t cand[IDFX_QK];
            for (int j = 0; j < IDFX_QK; j++) {
                int q = q4_nearest_tab(tab, x[j] * inv);
                cand[j] = (uint8_t)q;
                lev[j] = IDFX_Q4_CODEBOOK[q];
                num += lev[j] * x[j];
                den += lev[j] * lev[j];
            }
            float d2 = (search > 0 && den > 0.f) ? num / den : d;
            d2 = idfx_fp16_to_fp32(idfx_fp32_to_fp16(d2)); /* the error of the stored scale */
            float err = 0.f;
            for (int j = 0; j < IDFX_QK; j++) {
                float e = d2 * lev[j] - x[j];
                err += e * e;
            }
            if (err < best_err) {
                best_err = err;
                best_d = d2;
                memcpy(idx, cand, IDFX_QK);
            }
        }
    }
    return best_d;
}

void idfx_quantize_q4_ref(const float *w, int64_t rows, int64_t k, uint32_t r, int search, void *dst) {
    const int64_t ng = k / IDFX_QK;
    const int64_t rows_padded = (rows + r - 1) / r * r;
    uint8_t *base = dst;
    q4_tab tab;
    q4_tab_init(&tab);
    for (int64_t row = 0; row < rows_padded; row++) {
        for (int64_t g = 0; g < ng; g++) {
            uint8_t idx[IDFX_QK];
            float d = 0.f;
            if (row < rows)
                d = q4_group(&tab, w + row * k + g * IDFX_QK, search, idx);
            else
                memset(idx, q4_nearest(0.f), IDFX_QK);
            idf_wr16(tile_scale(base, row, g, ng, r, IDFX_Q4_QBYTES), idfx_fp32_to_fp16(d));
            uint8_t *q = tile_quants(base, row, g, ng, r, IDFX_Q4_QBYTES);
            for (int j = 0; j < 16; j++) q[j] = (uint8_t)(idx[j] | (idx[j + 16] << 4));
        }
    }
}

void idfx_quantize_q8_ref(const float *w, int64_t rows, int64_t k, uint32_t r, int search, void *dst) {
    const int64_t ng = k / IDFX_QK;
    const int64_t rows_padded = (rows + r - 1) / r * r;
    uint8_t *base = dst;
    for (int64_t row = 0; row < rows_padded; row++) {
        for (int64_t g = 0; g < ng; g++) {
            int8_t *q = (int8_t *)tile_quants(base, row, g, ng, r, IDFX_Q8_QBYTES);
            float d = 0.f;
            if (row < rows) {
                const float *x = w + row * k + g * IDFX_QK;
                float amax = 0.f;
                for (int j = 0; j < IDFX_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
                float best_err = INFINITY;
                int n = search > 0 ? search : 1;
                for (int s = 0; s < n && amax > 0.f; s++) {
                    /* 8-bit steps are fine already; a narrow search trims outliers */
                    float f = search > 1 ? 0.9f + 0.1f * (float)s / (float)(n - 1) : 1.f;
                    float dc = idfx_fp16_to_fp32(idfx_fp32_to_fp16(amax * f / 127.f));
                    if (dc == 0.f) continue;
                    float err = 0.f;
                    int8_t cand[IDFX_QK];
                    for (int j = 0; j < IDFX_QK; j++) {
                        float v = roundf(x[j] / dc);
                        v = fminf(127.f, fmaxf(-127.f, v));
                        cand[j] = (int8_t)v;
                        float e = dc * v - x[j];
                        err += e * e;
                    }
                    if (err < best_err) {
                        best_err = err;
                        d = dc;
                        memcpy(q, cand, IDFX_QK);
                    }
                }
                if (!(best_err < INFINITY)) memset(q, 0, IDFX_QK);
            } else {
                memset(q, 0, IDFX_QK);
            }
            idf_wr16(tile_scale(base, row, g, ng, r, IDFX_Q8_QBYTES), idfx_fp32_to_fp16(d));
        }
    }
}

void idfx_dequant_row_ref(int type, const void *tensor, int64_t row, int64_t k, uint32_t r, float *out) {
    idfx_dequant_row_layout_ref(type, IDFX_LAYOUT_ROWTILE, tensor, row, k, r, out);
}

void idfx_dequant_row_layout_ref(int type, int layout, const void *tensor, int64_t row, int64_t k, uint32_t r,
                                 float *out) {
    const int64_t ng = k / IDFX_QK;
    uint8_t *base = (uint8_t *)tensor; /* read only; tile_* helpers are shared with the writer */
    const uint32_t qb = type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
    for (int64_t g = 0; g < ng; g++) {
        float d = idfx_fp16_to_fp32(idf_rd16(lay_scale(layout, base, row, g, ng, r, qb)));
        const uint8_t *q = lay_quants(layout, base, row, g, ng, r, qb);
        float *o = out + g * IDFX_QK;
        if (type == IDFX_TYPE_Q4) {
            for (int j = 0; j < 16; j++) {
                o[j] = d * IDFX_Q4_CODEBOOK[q[j] & 15];
                o[j + 16] = d * IDFX_Q4_CODEBOOK[q[j] >> 4];
            }
        } else {
            for (int j = 0; j < IDFX_QK; j++) o[j] = d * (float)(int8_t)q[j];
        }
    }
}

void idfx_gemv_ref(int type, int layout, uint32_t r, const void *data, int64_t rows, int64_t k, const float *x,
                   float *y) {
    for (int64_t row = 0; row < rows; row++) {
        double acc = 0.0;
        if (idfx_layout_tiled(layout)) {
            const int64_t ng = k / IDFX_QK;
            const uint32_t qb = type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
            uint8_t *base = (uint8_t *)data;
            for (int64_t g = 0; g < ng; g++) {
                float d = idfx_fp16_to_fp32(idf_rd16(lay_scale(layout, base, row, g, ng, r, qb)));
                const uint8_t *q = lay_quants(layout, base, row, g, ng, r, qb);
                const float *xg = x + g * IDFX_QK;
                float s = 0.f;
                if (type == IDFX_TYPE_Q4) {
                    for (int j = 0; j < 16; j++)
                        s += IDFX_Q4_CODEBOOK[q[j] & 15] * xg[j] + IDFX_Q4_CODEBOOK[q[j] >> 4] * xg[j + 16];
                } else {
                    for (int j = 0; j < IDFX_QK; j++) s += (float)(int8_t)q[j] * xg[j];
                }
                acc += (double)d * s;
            }
        } else if (type == IDFX_TYPE_F32) {
            const float *w = (const float *)data + row * k;
            for (int64_t j = 0; j < k; j++) acc += (double)w[j] * x[j];
        } else { /* F16 */
            const uint8_t *w = (const uint8_t *)data + (uint64_t)row * k * 2;
            for (int64_t j = 0; j < k; j++) acc += (double)idfx_fp16_to_fp32(idf_rd16(w + 2 * j)) * x[j];
        }
        y[row] = (float)acc;
    }
}

void idfx_kvq8_quantize_ref(const float *x, int64_t n, void *dst) {
    uint8_t *o = dst;
    for (int64_t b = 0; b + IDFX_KVQ8_BLOCK <= n; b += IDFX_KVQ8_BLOCK, o += IDFX_KVQ8_BYTES) {
        float amax = 0.f;
        for (int j = 0; j < IDFX_KVQ8_BLOCK; j++)
            amax = fmaxf(amax, fabsf(x[b + j]));
        const uint16_t dh = idfx_fp32_to_fp16(amax / 127.f);
        /* divide by the stored (rounded) scale, so dequantization sees the q it expects */
        const float d = idfx_fp16_to_fp32(dh), inv = d > 0.f ? 1.f / d : 0.f;
        o[0] = (uint8_t)(dh & 0xff);
        o[1] = (uint8_t)(dh >> 8);
        for (int j = 0; j < IDFX_KVQ8_BLOCK; j++) {
            float q = rintf(x[b + j] * inv);
            q = q > 127.f ? 127.f : q < -127.f ? -127.f : q;
            o[2 + j] = (uint8_t)(int8_t)q;
        }
    }
}

void idfx_q4_0_absmax_roundtrip(const float *w, int64_t n, float *out) {
    for (int64_t i0 = 0; i0 + IDFX_QK <= n; i0 += IDFX_QK) {
        const float *x = w + i0;
        float amax = 0.f, mx = 0.f;
        for (int j = 0; j < IDFX_QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                mx = x[j];
            }
        float d = idfx_fp16_to_fp32(idfx_fp32_to_fp16(mx / -8.f));
        float id = d != 0.f ? 1.f / d : 0.f;
        for (int j = 0; j < IDFX_QK; j++) {
            float q = floorf(x[j] * id + 8.5f);
            q = fminf(15.f, fmaxf(0.f, q));
            out[i0 + j] = (q - 8.f) * d;
        }
    }
}

void idfx_rowtile_to_grouptile(int type, uint32_t r, int64_t rows, int64_t k, const void *src, void *dst) {
    const int64_t ng = k / IDFX_QK, ntiles = rows / r + (rows % r != 0);
    const uint32_t qb = type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
    uint8_t *in = (uint8_t *)src, *out = dst;
    for (int64_t t = 0; t < ntiles; t++)
        for (int64_t g = 0; g < ng; g++)
            for (uint32_t i = 0; i < r; i++) {
                const int64_t row = t * r + i; /* padding rows included: same tile bytes */
                memcpy(lay_scale(IDFX_LAYOUT_GROUPTILE, out, row, g, ng, r, qb), tile_scale(in, row, g, ng, r, qb),
                       IDFX_SCALE_BYTES);
                memcpy(lay_quants(IDFX_LAYOUT_GROUPTILE, out, row, g, ng, r, qb), tile_quants(in, row, g, ng, r, qb),
                       qb);
            }
}
