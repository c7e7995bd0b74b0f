/*
 * test_quant.c - the quant/ reference routines and the converter's parallel
 * quantizer: fp16 conversion (exhaustive round trip and rounding of chosen
 * values), Q4/Q8 error bounds on known distributions and exactness on exactly
 * representable groups, ROWTILE addressing and padding, gemv_ref against
 * dequant + dot, and idf_quantize_rowtile == the serial reference, byte for byte.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "platform.h"
#include "quant.h"
#include "quantize.h"

#include "check.h"

static uint64_t rng_state = 0x1234567;
static uint64_t rng_next(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uniform(void) { return ((double)(rng_next() >> 11) + 0.5) / 9007199254740992.0; }
static double normal(void) { return sqrt(-2.0 * log(uniform())) * cos(6.283185307179586 * uniform()); }
static double student_t3(void) {
    double a = normal(), b = normal(), c = normal();
    return normal() / sqrt((a * a + b * b + c * c) / 3.0);
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* ------------------------------------------------------------------ fp16 */

static void test_fp16_exhaustive(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = idfx_fp16_to_fp32((uint16_t)h);
        uint32_t exp = (h >> 10) & 31, man = h & 1023;
        if (exp == 31 && man) { /* NaN: stays NaN with the sign kept; the payload is not pinned */
            uint16_t back = idfx_fp32_to_fp16(f);
            if (!isnan(f) || ((back >> 10) & 31) != 31 || !(back & 1023) || (back >> 15) != (h >> 15)) bad++;
            continue;
        }
        /* the value itself, from its definition */
        double want = exp == 0 ? ldexp((double)man, -24) : exp == 31 ? INFINITY : ldexp(1024.0 + man, (int)exp - 25);
        if (h >> 15) want = -want;
        if ((double)f != want || (signbit(f) != 0) != (h >> 15)) bad++;
        if (idfx_fp32_to_fp16(f) != h) bad++;
    }
    CHECK(bad == 0, "fp16 exhaustive round trip: %d mismatches", bad);
}

static void test_fp16_rounding(void) {
    static const struct {
        float in;
        uint16_t out;
        const char *what;
    } cases[] = {
        {1.0f, 0x3c00, "one"},
        {-2.0f, 0xc000, "minus two"},
        {65504.0f, 0x7bff, "max half"},
        {65519.996f, 0x7bff, "just below the overflow midpoint"},
        {65520.0f, 0x7c00, "overflow midpoint rounds to inf (ties to even)"},
        {1e6f, 0x7c00, "overflow"},
        {-1e6f, 0xfc00, "negative overflow"},
        {1.0f + 1.0f / 2048.0f, 0x3c00, "tie between 1 and 1+2^-10 goes to even 1"},
        {1.0f + 3.0f / 2048.0f, 0x3c02, "tie between 1+2^-10 and 1+2^-9 goes to even"},
        {1.0f + 1.0f / 2048.0f + 1.0f / 65536.0f, 0x3c01, "just above a tie rounds up"},
        {6.103515625e-05f, 0x0400, "smallest normal"},
        {5.9604645e-08f, 0x0001, "smallest subnormal 2^-24"},
        {2.98023224e-08f, 0x0000, "2^-25 is a tie, goes to even zero"},
        {2.98023259e-08f, 0x0001, "just above 2^-25 rounds up to 2^-24"},
        {8.940697e-08f, 0x0002, "1.5 * 2^-24 ties to even 2"},
        {6.0975552e-05f, 0x03ff, "largest subnormal"},
        {6.1005353e-05f, 0x0400, "between largest subnormal and smallest normal, rounds up"},
        {1e-10f, 0x0000, "underflow to zero"},
        {-1e-10f, 0x8000, "underflow keeps the sign"},
        {-0.0f, 0x8000, "negative zero"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = idfx_fp32_to_fp16(cases[i].in);
        CHECK(got == cases[i].out, "fp32->fp16 %s: %.9g -> 0x%04x, want 0x%04x", cases[i].what, cases[i].in, got,
              cases[i].out);
    }
    CHECK(idfx_fp32_to_fp16(INFINITY) == 0x7c00 && idfx_fp32_to_fp16(-INFINITY) == 0xfc00, "infinities");
    uint16_t n = idfx_fp32_to_fp16(NAN);
    CHECK(((n >> 10) & 31) == 31 && (n & 1023), "NaN stays NaN (0x%04x)", n);
    /* every fp32 between two adjacent halves rounds to the nearer one: sample many */
    int bad = 0;
    for (int i = 0; i < 200000; i++) {
        float f = bits_f32((uint32_t)(rng_next() & 0x7fffffff));
        if (!(fabsf(f) < 65504.f)) continue;
        uint16_t h = idfx_fp32_to_fp16(f);
        double v = idfx_fp16_to_fp32(h), e = fabs(v - f);
        double up = idfx_fp16_to_fp32((uint16_t)(h + 1)), dn = h & 0x7fff ? idfx_fp16_to_fp32((uint16_t)(h - 1)) : -v;
        if (e > fabs(up - f) || e > fabs(dn - f)) bad++;
    }
    CHECK(bad == 0, "fp16 rounding is not to nearest for %d sampled floats", bad);
    CHECK(idfx_bf16_to_fp32(0x3f80) == 1.0f && f32_bits(idfx_bf16_to_fp32(0xc2f7)) == 0xc2f70000u, "bf16 widening");
}

/* ------------------------------------------------------------ Q4 / Q8 */

static double roundtrip_nmse(int type, const float *w, int64_t rows, int64_t k, uint32_t r, int search) {
    uint64_t dims[2] = {(uint64_t)rows, (uint64_t)k}, nb, unit;
    if (!idfx_tensor_nbytes(type, IDFX_LAYOUT_ROWTILE, r, 2, dims, &nb, &unit)) return INFINITY;
    uint8_t *buf = malloc(nb);
    float *row = malloc((size_t)k * sizeof *row);
    if (type == IDFX_TYPE_Q4)
        idfx_quantize_q4_ref(w, rows, k, r, search, buf);
    else
        idfx_quantize_q8_ref(w, rows, k, r, search, buf);
    double num = 0, den = 0;
    for (int64_t i = 0; i < rows; i++) {
        idfx_dequant_row_ref(type, buf, i, k, r, row);
        for (int64_t j = 0; j < k; j++) {
            double e = (double)w[i * k + j] - row[j];
            num += e * e;
            den += (double)w[i * k + j] * w[i * k + j];
        }
    }
    free(buf);
    free(row);
    return num / den;
}

static double q4_0_nmse(const float *w, int64_t n) {
    float *o = malloc((size_t)n * sizeof *o);
    idfx_q4_0_absmax_roundtrip(w, n, o);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)w[i] - o[i]) * ((double)w[i] - o[i]);
        den += (double)w[i] * w[i];
    }
    free(o);
    return num / den;
}

static void test_error_bounds(void) {
    const int64_t rows = 128, k = 1024, n = rows * k;
    float *w = malloc((size_t)n * sizeof *w);
    for (int dist = 0; dist < 2; dist++) {
        for (int64_t i = 0; i < n; i++) w[i] = (float)(0.02 * (dist ? student_t3() : normal()));
        double base = q4_0_nmse(w, n);
        double q4 = roundtrip_nmse(IDFX_TYPE_Q4, w, rows, k, 8, IDF_QUANT_DEFAULT_SEARCH);
        double q4s0 = roundtrip_nmse(IDFX_TYPE_Q4, w, rows, k, 8, 0);
        double q8 = roundtrip_nmse(IDFX_TYPE_Q8, w, rows, k, 8, 0);
        const char *dn = dist ? "student-t3" : "gaussian";
        printf("%s: Q4_0 %.5f  Q4(search %d) %.5f  Q4(search 0) %.5f  Q8 %.3g\n", dn, base, IDF_QUANT_DEFAULT_SEARCH,
               q4, q4s0, q8);
        /* Gaussian groups of 32: a good 16-level quantizer is near 0.0054, absmax Q4_0 near 0.0074 */
        CHECK(q4 < (dist ? 0.0100 : 0.0058), "%s: Q4 NMSE %.5f above its bound", dn, q4);
        CHECK(q4 < 0.8 * base, "%s: Q4 NMSE %.5f is not 20%% below Q4_0 %.5f", dn, q4, base);
        CHECK(q4 <= q4s0, "%s: the scale search made Q4 worse (%.5f > %.5f)", dn, q4, q4s0);
        CHECK(q8 < (dist ? 1.0e-4 : 4.0e-5), "%s: Q8 NMSE %.3g above its bound", dn, q8);
    }
    free(w);
}

/* Groups that are a scale times codebook levels (Q4) or integers (Q8) with an
 * fp16-exact scale come back exactly. */
static void test_exact_groups(void) {
    const int64_t rows = 5, k = 64;
    float w[5 * 64], out[64];
    uint8_t buf[4096];
    const float scales[5] = {1.0f / 64.0f, 0.5f, 3.0f, -0.25f, 0.0f};
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < k; j++) {
            int level = (int)((i * 7 + j * 5) % 16);
            if (j % 32 == 3) level = scales[i] >= 0 ? 15 : 0; /* the group's absmax sits on the long side */
            w[i * k + j] = scales[i] * IDFX_Q4_CODEBOOK[level];
        }
    for (int search = 0; search <= 16; search += 8) {
        idfx_quantize_q4_ref(w, rows, k, 4, search, buf);
        for (int64_t i = 0; i < rows; i++) {
            idfx_dequant_row_ref(IDFX_TYPE_Q4, buf, i, k, 4, out);
            int bad = 0;
            for (int64_t j = 0; j < k; j++) bad += out[j] != w[i * k + j];
            /* search 0 uses the positive absmax scale only, so the negative-scale row is exact only with search */
            if (search > 0 || scales[i] >= 0) CHECK(bad == 0, "Q4 search %d row %lld: %d values not exact", search,
                                                    (long long)i, bad);
        }
    }
    for (int64_t i = 0; i < rows; i++)
        for (int64_t j = 0; j < k; j++) /* each group holds a +-127 so that amax / 127 is the scale */
            w[i * k + j] = scales[i] * (float)(j % 32 == 5 ? 127 : (int)((i * 31 + j * 17) % 255) - 127);
    idfx_quantize_q8_ref(w, rows, k, 2, 0, buf);
    for (int64_t i = 0; i < rows; i++) {
        idfx_dequant_row_ref(IDFX_TYPE_Q8, buf, i, k, 2, out);
        int bad = 0;
        for (int64_t j = 0; j < k; j++) bad += out[j] != w[i * k + j];
        CHECK(bad == 0, "Q8 row %lld: %d values not exact", (long long)i, bad);
    }
}

/* The ROWTILE byte layout of quant.h, checked by hand on a small tensor, plus
 * the zero padding rows of the last tile. */
static void test_rowtile_layout(void) {
    const int64_t rows = 11, k = 64, ng = 2;
    const uint32_t r = 4;
    float w[11 * 64];
    for (int64_t i = 0; i < rows * k; i++) w[i] = (float)normal();
    uint64_t dims[2] = {(uint64_t)rows, (uint64_t)k}, nb, unit;
    CHECK(idfx_tensor_nbytes(IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, r, 2, dims, &nb, &unit), "nbytes");
    CHECK(nb == 3 * (uint64_t)ng * r * 18 && unit == (uint64_t)ng * r * 18, "Q4 tensor bytes %llu unit %llu",
          (unsigned long long)nb, (unsigned long long)unit);
    uint8_t *buf = malloc(nb);
    memset(buf, 0xAB, nb); /* padding must be written, not left over */
    idfx_quantize_q4_ref(w, rows, k, r, 4, buf);
    int zero_idx = 0; /* the level nearest to 0 */
    for (int i = 1; i < 16; i++)
        if (abs(IDFX_Q4_CODEBOOK[i]) < abs(IDFX_Q4_CODEBOOK[zero_idx])) zero_idx = i;
    for (int64_t row = 0; row < 12; row++) {
        const uint8_t *tile = buf + (uint64_t)(row / r) * unit;
        float out[64];
        if (row < rows) idfx_dequant_row_ref(IDFX_TYPE_Q4, buf, row, k, r, out);
        for (int64_t g = 0; g < ng; g++) {
            uint16_t d = idf_rd16(tile + (g * r + row % r) * 2);
            const uint8_t *q = tile + ng * r * 2 + (g * r + row % r) * 16;
            if (row >= rows) {
                CHECK(d == 0, "padding row %lld group %lld: scale 0x%04x", (long long)row, (long long)g, d);
                for (int j = 0; j < 16; j++)
                    CHECK(q[j] == (uint8_t)(zero_idx | zero_idx << 4), "padding row quant byte 0x%02x", q[j]);
                continue;
            }
            for (int j = 0; j < 16; j++) {
                float lo = idfx_fp16_to_fp32(d) * IDFX_Q4_CODEBOOK[q[j] & 15];
                float hi = idfx_fp16_to_fp32(d) * IDFX_Q4_CODEBOOK[q[j] >> 4];
                CHECK(lo == out[g * 32 + j] && hi == out[g * 32 + j + 16], "row %lld group %lld byte %d layout",
                      (long long)row, (long long)g, j);
            }
        }
    }
    free(buf);
    /* Q8: same addressing with 32-byte quants */
    CHECK(idfx_tensor_nbytes(IDFX_TYPE_Q8, IDFX_LAYOUT_ROWTILE, r, 2, dims, &nb, &unit) && unit == (uint64_t)ng * r * 34,
          "Q8 unit");
    buf = malloc(nb);
    memset(buf, 0xAB, nb);
    idfx_quantize_q8_ref(w, rows, k, r, 0, buf);
    const uint8_t *last = buf + 2 * unit;
    for (int64_t g = 0; g < ng; g++) {
        CHECK(idf_rd16(last + (g * r + 3) * 2) == 0, "Q8 padding scale");
        for (int j = 0; j < 32; j++) CHECK(last[ng * r * 2 + (g * r + 3) * 32 + j] == 0, "Q8 padding quant");
    }
    free(buf);
    /* invalid combinations are refused */
    uint64_t bad_k[2] = {8, 48};
    CHECK(!idfx_tensor_nbytes(IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 8, 2, bad_k, &nb, &unit), "K = 48 accepted");
    CHECK(!idfx_tensor_nbytes(IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 3, 2, dims, &nb, &unit), "R = 3 accepted");
    CHECK(!idfx_tensor_nbytes(IDFX_TYPE_Q4, IDFX_LAYOUT_ROWMAJOR, 0, 2, dims, &nb, &unit), "Q4 ROWMAJOR accepted");
}

static void test_gemv(void) {
    const int64_t rows = 37, k = 96;
    float w[37 * 96], x[96], y[37], row[96];
    for (int64_t i = 0; i < rows * k; i++) w[i] = (float)normal();
    for (int64_t j = 0; j < k; j++) x[j] = (float)normal();
    static uint8_t buf[37 * 96 * 4];
    for (int type = 0; type < IDFX_TYPE_COUNT; type++) {
        int layout = type >= IDFX_TYPE_Q4 ? IDFX_LAYOUT_ROWTILE : IDFX_LAYOUT_ROWMAJOR;
        uint32_t r = layout == IDFX_LAYOUT_ROWTILE ? 8 : 0;
        if (type == IDFX_TYPE_Q4) idfx_quantize_q4_ref(w, rows, k, r, 8, buf);
        if (type == IDFX_TYPE_Q8) idfx_quantize_q8_ref(w, rows, k, r, 0, buf);
        if (type == IDFX_TYPE_F16)
            for (int64_t i = 0; i < rows * k; i++) idf_wr16(buf + 2 * i, idfx_fp32_to_fp16(w[i]));
        if (type == IDFX_TYPE_F32) memcpy(buf, w, sizeof w);
        idfx_gemv_ref(type, layout, r, buf, rows, k, x, y);
        double worst = 0;
        for (int64_t i = 0; i < rows; i++) {
            if (layout == IDFX_LAYOUT_ROWTILE)
                idfx_dequant_row_ref(type, buf, i, k, r, row);
            else if (type == IDFX_TYPE_F16)
                for (int64_t j = 0; j < k; j++) row[j] = idfx_fp16_to_fp32(idf_rd16(buf + 2 * (i * k + j)));
            else
                memcpy(row, w + i * k, sizeof row);
            double dot = 0, mag = 0;
            for (int64_t j = 0; j < k; j++) {
                dot += (double)row[j] * x[j];
                mag += fabs((double)row[j] * x[j]);
            }
            double rel = fabs(dot - y[i]) / (mag + 1e-30);
            if (rel > worst) worst = rel;
        }
        CHECK(worst < 1e-6, "gemv_ref %s differs from dequant + dot by %.3g (relative)",
              idfx_type_get_traits(type)->name, worst);
    }
}

/* The converter's parallel quantizer is the reference, byte for byte, for any
 * thread count, tile height and row count (including a partial last tile). */
static int n_progress;
static void count_progress(void *ud, int64_t done, int64_t rows) {
    (void)ud;
    if (done > 0 && done <= rows) n_progress++;
}

static void test_parallel_equals_ref(void) {
    const int64_t k = 4096;
    const int64_t row_counts[3] = {1, 45, 300};
    float *w = malloc((size_t)(300 * k) * sizeof *w);
    for (int64_t i = 0; i < 300 * k; i++) w[i] = (float)(0.02 * student_t3());
    idf_pool *pools[3] = {NULL, idf_pool_create(2, NULL, NULL, NULL), idf_pool_create(3, NULL, NULL, NULL)};
    for (int type = IDFX_TYPE_Q4; type <= IDFX_TYPE_Q8; type++)
        for (int ri = 0; ri < 3; ri++)
            for (uint32_t r = 1; r <= 64; r *= 8) {
                int64_t rows = row_counts[ri];
                uint64_t dims[2] = {(uint64_t)rows, (uint64_t)k}, nb, unit;
                idfx_tensor_nbytes(type, IDFX_LAYOUT_ROWTILE, r, 2, dims, &nb, &unit);
                uint8_t *a = malloc(nb), *b = malloc(nb);
                int search = type == IDFX_TYPE_Q4 ? 3 : 4;
                if (type == IDFX_TYPE_Q4)
                    idfx_quantize_q4_ref(w, rows, k, r, search, a);
                else
                    idfx_quantize_q8_ref(w, rows, k, r, search, a);
                for (int p = 0; p < 3; p++) {
                    memset(b, 0x5a, nb);
                    n_progress = 0;
                    idf_quantize_rowtile(pools[p], type, w, rows, k, r, search, b, count_progress, NULL);
                    CHECK(!memcmp(a, b, nb), "%s rows %lld R %u threads %d: differs from the reference",
                          type == IDFX_TYPE_Q4 ? "Q4" : "Q8", (long long)rows, r, idf_pool_size(pools[p]));
                    CHECK(n_progress > 0, "no progress reported");
                }
                free(a);
                free(b);
            }
    /* fp16 / widening helpers */
    uint8_t h[2 * 1000];
    float back[1000];
    idf_convert_f32_to_f16(pools[1], w, 1000, h);
    idf_convert_to_f32(pools[1], IDF_SRC_F16, h, 1000, back);
    int bad = 0;
    for (int i = 0; i < 1000; i++) bad += back[i] != idfx_fp16_to_fp32(idfx_fp32_to_fp16(w[i]));
    CHECK(bad == 0, "f32 -> f16 -> f32 helpers: %d mismatches", bad);
    uint8_t bf[4] = {0x80, 0x3f, 0x00, 0xc0};
    idf_convert_to_f32(NULL, IDF_SRC_BF16, bf, 2, back);
    CHECK(back[0] == 1.0f && back[1] == -2.0f, "bf16 widening helper");
    idf_pool_free(pools[1]);
    idf_pool_free(pools[2]);
    free(w);
}

/* The branch-free row conversion gives the scalar one's bits: every fp32
 * pattern at a stride of 251 (17 M values: every exponent, both signs, NaNs
 * and infinities), plus +-0, +-inf, and the neighbours of every fp16 value's
 * rounding boundaries (the midpoints, where ties go to even). (All 2^32
 * patterns were checked once when it was written: 0 mismatches, 9 s.) */
static void test_fp16_row(void) {
    enum { N = 4096 };
    static float src[N];
    static uint16_t dst[N];
    long bad = 0, n = 0;
    int fill = 0;
    for (uint64_t b = 0; b < (1ull << 32); b += 251) {
        src[fill++] = bits_f32((uint32_t)b);
        if (fill == N || b + 251 >= (1ull << 32)) {
            idfx_fp32_to_fp16_row(src, dst, fill);
            for (int i = 0; i < fill; i++) bad += dst[i] != idfx_fp32_to_fp16(src[i]);
            n += fill;
            fill = 0;
        }
    }
    for (uint32_t h = 0; h < 0x10000; h++) {
        const uint32_t x = f32_bits(idfx_fp16_to_fp32((uint16_t)h));
        /* the fp32 patterns around the midpoint above this half */
        const uint32_t mid = x + ((h & 0x7c00) ? 0x1000u : 0u);
        for (int d = -2; d <= 2 && (h & 0x7c00) != 0x7c00; d++) src[fill++] = bits_f32(mid + (uint32_t)d);
        if (fill > N - 8 || h == 0xffff) {
            idfx_fp32_to_fp16_row(src, dst, fill);
            for (int i = 0; i < fill; i++) bad += dst[i] != idfx_fp32_to_fp16(src[i]);
            n += fill;
            fill = 0;
        }
    }
    const float special[] = {0.f, -0.f, INFINITY, -INFINITY, NAN, -NAN, 65504.f, 65520.f, -65520.f, 5.96e-8f, 2.98e-8f};
    idfx_fp32_to_fp16_row(special, dst, 11);
    for (int i = 0; i < 11; i++) bad += dst[i] != idfx_fp32_to_fp16(special[i]);
    CHECK(bad == 0, "idfx_fp32_to_fp16_row differs from idfx_fp32_to_fp16 for %ld of %ld inputs", bad, n + 11);
}

int main(void) {
    test_fp16_exhaustive();
    test_fp16_rounding();
    test_fp16_row();
    test_error_bounds();
    test_exact_groups();
    test_rowtile_layout();
    test_gemv();
    test_parallel_equals_ref();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all quant checks passed\n");
    return 0;
}
