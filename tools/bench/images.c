/*
 * images.c - idefics-bench --images (images.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "images.h"
#include "platform.h"

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int bench_images(const idefics_model *m, idf_state *st, const int *ns, int n_ns, int reps) {
    const idf_config *c = &m->cfg;
    const size_t np = (size_t)c->v_channels * c->v_image_size * c->v_image_size;
    const size_t nl = (size_t)m->n_img_tokens * c->v_dim;
    float *pix[BENCH_MAX_IMAGES] = {0}, *lat = malloc(BENCH_MAX_IMAGES * nl * sizeof(float));
    double *t1 = malloc((size_t)reps * sizeof(double)), *tb = malloc((size_t)reps * sizeof(double));
    int rc = lat && t1 && tb ? 0 : 1;
    uint64_t r = 0x9E3779B97F4A7C15ull; /* random pixels: speed does not depend on them */
    for (int i = 0; !rc && i < BENCH_MAX_IMAGES; i++) {
        if (!(pix[i] = malloc(np * sizeof(float)))) rc = 1;
        for (size_t k = 0; !rc && k < np; k++) {
            r ^= r << 13, r ^= r >> 7, r ^= r << 17;
            pix[i][k] = (float)((r >> 16) % 2001) / 1000.0f - 1.0f;
        }
    }
    if (rc) fprintf(stderr, "idefics-bench: out of memory\n");
    idf_err e;
    idf_err_clear(&e);
    /* warm-up: the image path's weights touched once */
    if (!rc && idf_state_add_image(st, pix[0], NULL, &e)) rc = 1;
    for (int k = 0; !rc && k < n_ns; k++) {
        const int n = ns[k];
        bool same = true;
        double maxd = 0;
        for (int rep = 0; !rc && rep < reps; rep++) {
            idf_state_reset(st);
            double a = idf_time_ms();
            for (int i = 0; !rc && i < n; i++)
                rc = idf_state_add_image(st, pix[i], NULL, &e) != IDEFICS_OK;
            t1[rep] = idf_time_ms() - a;
            for (int i = 0; !rc && i < n; i++)
                memcpy(lat + i * nl, idf_state_image_latents(st, i), nl * sizeof(float));
            idf_state_reset(st);
            a = idf_time_ms();
            if (!rc) rc = idf_state_add_images(st, (const float *const *)pix, n, NULL, &e) != IDEFICS_OK;
            tb[rep] = idf_time_ms() - a;
            for (int i = 0; !rc && i < n; i++) {
                const float *b = idf_state_image_latents(st, i);
                same = same && !memcmp(b, lat + i * nl, nl * sizeof(float));
                for (size_t j = 0; j < nl; j++)
                    maxd = fmax(maxd, fabs((double)b[j] - lat[i * nl + j]));
            }
        }
        if (rc) break;
        const double one = median(t1, reps), bat = median(tb, reps);
        printf("images %d: one by one %.1f ms (%.1f per image), batched %.1f ms (%.1f per image), %.2fx; "
               "latents %s (max |diff| %.3g)\n",
               n, one, one / n, bat, bat / n, one / bat, same ? "bitwise equal" : "differ", maxd);
    }
    if (rc && e.msg[0]) fprintf(stderr, "idefics-bench: %s\n", e.msg);
    idf_state_reset(st);
    for (int i = 0; i < BENCH_MAX_IMAGES; i++) free(pix[i]);
    free(lat);
    free(t1);
    free(tb);
    return rc;
}
