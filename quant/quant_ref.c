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
    if (layout == IDFX_LAYOUT_ROWTILE) {
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

/* For one group of 32: choose codebook indices and a scale minimising the squared
 * error. Candidate scales: amax / cb_max * s for `search` values of s in
 * [0.7, 1.3] (s = 1 when search is 1), for both signs (so the codebook's longer
 * side can take either tail); for each, the indices are chosen and the scale
 * refit by least squares. search == 0: the single candidate s = 1, positive
 * sign, no refit.
 *
 * The candidates are evaluated Q4_LANES at a time with the group's loop on the
 * outside, so each lane runs exactly the scalar sequence of float operations of
 * one candidate (same values, same summation order) while the compiler can
 * keep the lanes in SIMD registers. The nearest level is found by counting the
 * midpoints below the value (equal to a binary search over the sorted levels),
 * and the level itself as a sum of exact integer steps, so no table gather is
 * needed. The winner is the first candidate, in the order (sign, s), with the
 * strictly smallest error. */
#define Q4_LANES 8

static float q4_group(const float *x, int search, uint8_t idx[IDFX_QK]) {
    float amax = 0.f;
    for (int j = 0; j < IDFX_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    /* Zero group; also what a group stays when no candidate has a finite error
     * (weights beyond the fp16 scale range, infinities). */
    memset(idx, q4_nearest(0.f), IDFX_QK);
    if (amax == 0.f) return 0.f;
    const float cbmax = 127.f;
    if (search <= 0) { /* one candidate, no refit: the plain scalar path is faster than a lane block */
        float d = idfx_fp16_to_fp32(idfx_fp32_to_fp16(amax / cbmax)), inv = 1.f / (amax / cbmax);
        uint8_t cand[IDFX_QK];
        float err = 0.f;
        for (int j = 0; j < IDFX_QK; j++) {
            cand[j] = (uint8_t)q4_nearest(x[j] * inv);
            float e = d * IDFX_Q4_CODEBOOK[cand[j]] - x[j];
            err += e * e;
        }
        if (!(err < INFINITY)) return 0.f;
        memcpy(idx, cand, IDFX_QK);
        return d;
    }
    float mid[15], step[15];
    for (int i = 1; i < 16; i++) {
        mid[i - 1] = 0.5f * (float)(IDFX_Q4_CODEBOOK[i - 1] + IDFX_Q4_CODEBOOK[i]);
        step[i - 1] = (float)(IDFX_Q4_CODEBOOK[i] - IDFX_Q4_CODEBOOK[i - 1]);
    }
    const int n = search > 0 ? search : 1;
    const int n_cand = search > 0 ? 2 * n : 1;
    float best_err = INFINITY, best_d = 0.f;
    for (int c0 = 0; c0 < n_cand; c0 += Q4_LANES) {
        float d[Q4_LANES], inv[Q4_LANES], num[Q4_LANES], den[Q4_LANES], err[Q4_LANES], d2[Q4_LANES];
        float lev[IDFX_QK][Q4_LANES];
        float cand[IDFX_QK][Q4_LANES]; /* level indices, as floats so the lanes stay one vector type */
        for (int c = 0; c < Q4_LANES; c++) {
            int ci = c0 + c < n_cand ? c0 + c : n_cand - 1; /* spare lanes repeat the last candidate */
            int sign = ci / n, s = ci % n;
            float f = search > 1 ? 0.7f + 0.6f * (float)s / (float)(n - 1) : 1.f;
            d[c] = (sign ? -1.f : 1.f) * amax * f / cbmax;
            inv[c] = 1.f / d[c];
            num[c] = 0.f;
            den[c] = 0.f;
            err[c] = 0.f;
        }
        for (int j = 0; j < IDFX_QK; j++) {
            const float xj = x[j];
            float v[Q4_LANES], l[Q4_LANES], q[Q4_LANES];
            for (int c = 0; c < Q4_LANES; c++) {
                v[c] = xj * inv[c];
                l[c] = (float)IDFX_Q4_CODEBOOK[0];
                q[c] = 0.f;
            }
            for (int i = 0; i < 15; i++) {
                for (int c = 0; c < Q4_LANES; c++) {
                    q[c] += v[c] > mid[i] ? 1.f : 0.f;
                    l[c] += v[c] > mid[i] ? step[i] : 0.f;
                }
            }
            for (int c = 0; c < Q4_LANES; c++) {
                cand[j][c] = q[c];
                lev[j][c] = l[c];
                num[c] += l[c] * xj;
                den[c] += l[c] * l[c];
            }
        }
        for (int c = 0; c < Q4_LANES; c++) {
            float r = (search > 0 && den[c] > 0.f) ? num[c] / den[c] : d[c];
            d2[c] = idfx_fp16_to_fp32(idfx_fp32_to_fp16(r)); /* the error of the stored scale */
        }
        for (int j = 0; j < IDFX_QK; j++) {
            for (int c = 0; c < Q4_LANES; c++) {
                float e = d2[c] * lev[j][c] - x[j];
                err[c] += e * e;
            }
        }
        for (int c = 0; c < Q4_LANES && c0 + c < n_cand; c++) {
            if (err[c] < best_err) {
                best_err = err[c];
                best_d = d2[c];
                for (int j = 0; j < IDFX_QK; j++) idx[j] = (uint8_t)cand[j][c];
            }
        }
    }
    return best_d;
}

void idfx_quantize_q4_ref(const float *w, int64_t rows, int64_t k, uint32_t r, int search, void *dst) {
    const int64_t ng = k / IDFX_QK;
    const int64_t rows_padded = (rows + r - 1) / r * r;
    uint8_t *base = dst;
    for (int64_t row = 0; row < rows_padded; row++) {
        for (int64_t g = 0; g < ng; g++) {
            uint8_t idx[IDFX_QK];
            float d = 0.f;
            if (row < rows)
                d = q4_group(w + row * k + g * IDFX_QK, search, idx);
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
    const int64_t ng = k / IDFX_QK;
    uint8_t *base = (uint8_t *)tensor; /* read only; tile_* helpers are shared with the writer */
    const uint32_t qb = type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
    for (int64_t g = 0; g < ng; g++) {
        float d = idfx_fp16_to_fp32(idf_rd16(tile_scale(base, row, g, ng, r, qb)));
        const uint8_t *q = tile_quants(base, row, g, ng, r, qb);
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
        if (layout == IDFX_LAYOUT_ROWTILE) {
            const int64_t ng = k / IDFX_QK;
            const uint32_t qb = type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
            uint8_t *base = (uint8_t *)data;
            for (int64_t g = 0; g < ng; g++) {
                float d = idfx_fp16_to_fp32(idf_rd16(tile_scale(base, row, g, ng, r, qb)));
                const uint8_t *q = tile_quants(base, row, g, ng, r, qb);
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
