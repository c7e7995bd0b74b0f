/*
 * test_act2.c - two-level activation quantization of the CPU backend's Q4/Q8
 * matmuls (backend_cpu.c, IDEFICS_CPU_ACT; issue 11 point 6): against the
 * reference backend, two levels must cut the error of one int8 level by far
 * (the residual's scale is ~1/254 of the first), on heavy-tailed rows like the
 * down projection's input, with a bias and an output stride; and the default
 * applies two levels to exactly the weights named *mlp.down_proj*.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "quant.h"

#include "check.h"

static uint64_t g_rng = 88172645463325252ull;
static float frand(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((g_rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

static double nmse(const float *a, const float *b, int64_t n, int64_t m, int64_t ld) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t r = 0; r < m; r++) {
            const double d = (double)a[i * ld + r] - b[i * ld + r];
            num += d * d;
            den += (double)b[i * ld + r] * b[i * ld + r];
        }
    return num / den;
}

static idf_backend *cpu_with(const char *act) {
    if (act)
        setenv("IDEFICS_CPU_ACT", act, 1);
    else
        unsetenv("IDEFICS_CPU_ACT");
    idf_backend *b = NULL;
    idf_err err;
    CHECK(idf_backend_cpu_create(2, NULL, &b, &err) == IDEFICS_OK, "cpu backend: %s", err.msg);
    return b;
}

int main(void) {
    idf_err err;
    idf_backend *ref = NULL;
    if (idf_backend_ref_create(1, NULL, &ref, &err) != IDEFICS_OK) return fprintf(stderr, "%s\n", err.msg), 1;
    idf_backend *one = cpu_with("int8"), *two = cpu_with("int8x2"), *def = cpu_with(NULL);
    if (!one || !two || !def) return 1;
    /* m = 76: the last 8-row tile has 4 rows (the decode kernels' row guard) */
    const int64_t m = 76, k = 256, ld = 80;
    const int types[2] = {IDFX_TYPE_Q4, IDFX_TYPE_Q8};
    const int ns[4] = {1, 3, 8, 17};
    float *wf = malloc((size_t)(m * k) * sizeof(float)), *bias = malloc((size_t)m * sizeof(float));
    float *x = malloc((size_t)(17 * k) * sizeof(float));
    float *y[4];
    for (int i = 0; i < 4; i++) y[i] = calloc((size_t)(17 * ld), sizeof(float));
    uint8_t *wq = malloc((size_t)(2 * 80 * k)), *wg = malloc((size_t)(2 * 80 * k)); /* >= Q8 bytes with scales */
    for (int64_t i = 0; i < m * k; i++) wf[i] = frand();
    for (int64_t i = 0; i < m; i++) bias[i] = frand();
    /* heavy tails: mostly small values and a few outliers per group */
    for (int64_t i = 0; i < 17 * k; i++) x[i] = frand() * (i % 29 == 0 ? 8.0f : 0.05f);
    /* both tiled layouts: GROUPTILE is what the converter writes, and the
     * decode row (n = 1) takes the one-pass two-level kernel where there is one */
    for (int t = 0; t < 4; t++) {
        const int ty = types[t % 2], grouptile = t >= 2;
        if (ty == IDFX_TYPE_Q4) idfx_quantize_q4_ref(wf, m, k, 8, 4, wq);
        else idfx_quantize_q8_ref(wf, m, k, 8, 0, wq);
        if (grouptile) idfx_rowtile_to_grouptile(ty, 8, m, k, wq, wg);
        idf_weight w = {.name = "model.layers.0.mlp.down_proj.weight", .data = grouptile ? wg : wq,
                        .type = (uint8_t)ty, .layout = grouptile ? IDFX_LAYOUT_GROUPTILE : IDFX_LAYOUT_ROWTILE,
                        .tile_rows = 8, .rows = m, .cols = k};
        for (int c = 0; c < 4; c++) {
            const int64_t n = ns[c];
            CHECK(ref->matmul(ref->ctx, &w, bias, x, n, y[0], ld) == IDEFICS_OK, "ref");
            CHECK(one->matmul(one->ctx, &w, bias, x, n, y[1], ld) == IDEFICS_OK, "int8");
            CHECK(two->matmul(two->ctx, &w, bias, x, n, y[2], ld) == IDEFICS_OK, "int8x2");
            CHECK(def->matmul(def->ctx, &w, bias, x, n, y[3], ld) == IDEFICS_OK, "default");
            const double e1 = nmse(y[1], y[0], n, m, ld), e2 = nmse(y[2], y[0], n, m, ld);
            printf("type %d %s n %2lld: NMSE int8 %.3g, int8x2 %.3g\n", ty, grouptile ? "grouptile" : "rowtile",
                   (long long)n, e1, e2);
            CHECK(e1 > 1e-7 && e2 < e1 / 100, "type %d n %lld: int8x2 NMSE %.3g is not far below int8's %.3g",
                  ty, (long long)n, e2, e1);
            CHECK(!memcmp(y[2], y[3], (size_t)(n * ld) * sizeof(float)), "default differs from int8x2 on down_proj");
            /* another name: the default is one level */
            w.name = "model.layers.0.mlp.up_proj.weight";
            CHECK(def->matmul(def->ctx, &w, bias, x, n, y[3], ld) == IDEFICS_OK, "default");
            CHECK(!memcmp(y[1], y[3], (size_t)(n * ld) * sizeof(float)), "default differs from int8 on up_proj");
            w.name = "model.layers.0.mlp.down_proj.weight";
        }
    }
    one->free(one), two->free(two), def->free(def), ref->free(ref);
    free(wf), free(bias), free(x), free(wq), free(wg);
    for (int i = 0; i < 4; i++) free(y[i]);
    return failures != 0;
}
