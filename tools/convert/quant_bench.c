/*
 * quant_bench.c - idefics-quant-bench: weight-space quality of the quantizers.
 *
 * Fills a rows x cols matrix from a Gaussian and from a Student-t (nu = 3)
 * distribution (deterministic PRNG), round-trips it through our Q4 (default
 * search and search 0), plain absmax Q4_0 and Q8, and prints for each:
 * bits/weight, NMSE = sum (w - w')^2 / sum w^2, the change versus Q4_0 and the
 * quantization speed. --sweep prints NMSE and time for a list of search counts
 * (how docs/QUANT.md chose the default). Prints numbers; asserts nothing.
 *
 * --dequant IN.idfx OUT.safetensors writes every tensor of a converted file back
 * as F32 safetensors (dequantized), so tools/convert/quant_eval.py can run the
 * transformers model on exactly the weights the runtime sees and measure the
 * output error of each precision choice.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idfx_reader.h"
#include "platform.h"
#include "quant.h"
#include "quantize.h"

typedef struct rng {
    uint64_t s;
} rng;

/* splitmix64: tiny, fast, and good enough for test matrices */
static uint64_t rng_next(rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_uniform(rng *r) { return ((double)(rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }
static double rng_normal(rng *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void fill(float *w, int64_t n, int student, uint64_t seed) {
    rng r = {seed};
    for (int64_t i = 0; i < n; i++) {
        double z = rng_normal(&r);
        if (student) { /* t_3 = z / sqrt(chi2_3 / 3) */
            double a = rng_normal(&r), b = rng_normal(&r), c = rng_normal(&r);
            z /= sqrt((a * a + b * b + c * c) / 3.0);
        }
        w[i] = (float)(0.02 * z);
    }
}

static double nmse(const float *w, const float *q, int64_t n) {
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = (double)w[i] - q[i];
        num += e * e;
        den += (double)w[i] * w[i];
    }
    return num / den;
}

/* Our Q4/Q8 round trip; returns the quantization time in ms. */
static double roundtrip(idf_pool *pool, int type, const float *w, int64_t rows, int64_t cols, int search,
                        uint8_t *buf, float *out) {
    double t0 = idf_time_ms();
    idf_quantize_rowtile(pool, type, w, rows, cols, IDF_QUANT_DEFAULT_TILE_ROWS, search, buf, NULL, NULL);
    double t = idf_time_ms() - t0;
    for (int64_t r = 0; r < rows; r++)
        idfx_dequant_row_ref(type, buf, r, cols, IDF_QUANT_DEFAULT_TILE_ROWS, out + r * cols);
    return t;
}


/* ------------------------------------------------------------ --dequant */

static int dequant_to_safetensors(const char *in, const char *out) {
    idf_mapping map;
    if (idf_map_file(in, &map)) {
        fprintf(stderr, "idefics-quant-bench: cannot map %s\n", in);
        return 1;
    }
    idfx_file f;
    idf_err e;
    if (idfx_open(&f, map.data, map.size, NULL, &e) != IDEFICS_OK || idfx_materialize(&f, NULL, true, &e) != IDEFICS_OK) {
        fprintf(stderr, "idefics-quant-bench: %s: %s\n", in, e.msg);
        return 1;
    }
    /* header: names and shapes; data: each tensor as F32, in directory order */
    size_t cap = 1 << 20, len = 0;
    char *h = malloc(cap);
    uint64_t off = 0;
    len += (size_t)snprintf(h + len, cap - len, "{");
    for (uint32_t i = 0; i < f.n_tensors; i++) {
        const idfx_tensor *t = &f.tensors[i];
        if (cap - len < 1024 + strlen(t->name)) {
            cap *= 2;
            h = realloc(h, cap);
        }
        len += (size_t)snprintf(h + len, cap - len, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[", i ? "," : "", t->name);
        for (uint32_t d = 0; d < t->n_dims; d++)
            len += (size_t)snprintf(h + len, cap - len, "%s%llu", d ? "," : "", (unsigned long long)t->dims[d]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)off,
                                (unsigned long long)(off + t->n_elements * 4));
        off += t->n_elements * 4;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    while (len % 8) h[len++] = ' ';
    FILE *fp = fopen(out, "wb");
    uint8_t l8[8];
    idf_wr64(l8, len);
    int ok = fp && fwrite(l8, 1, 8, fp) == 8 && fwrite(h, 1, len, fp) == len;
    for (uint32_t i = 0; i < f.n_tensors && ok; i++) {
        const idfx_tensor *t = &f.tensors[i];
        uint64_t cols = t->dims[t->n_dims - 1], rows = t->n_elements / cols;
        float *row = malloc(cols * sizeof *row);
        for (uint64_t r = 0; r < rows && ok; r++) {
            if (t->type == IDFX_TYPE_Q4 || t->type == IDFX_TYPE_Q8)
                idfx_dequant_row_ref(t->type, t->data, (int64_t)r, (int64_t)cols, t->layout_param, row);
            else if (t->type == IDFX_TYPE_F16)
                for (uint64_t j = 0; j < cols; j++)
                    row[j] = idfx_fp16_to_fp32(idf_rd16((const uint8_t *)t->data + 2 * (r * cols + j)));
            else
                memcpy(row, (const float *)t->data + r * cols, cols * sizeof *row);
            ok = fwrite(row, sizeof *row, cols, fp) == cols;
        }
        free(row);
    }
    if (fp && fclose(fp)) ok = 0;
    free(h);
    idfx_close(&f);
    idf_unmap_file(&map);
    if (!ok) fprintf(stderr, "idefics-quant-bench: cannot write %s\n", out);
    return ok ? 0 : 1;
}

static void usage(void) {
    fprintf(stderr,
            "usage: idefics-quant-bench [--rows N] [--cols K] [--search N] [-j THREADS] [--seed S]\n"
            "                           [--sweep N,N,...]\n"
            "       idefics-quant-bench --dequant IN.idfx OUT.safetensors\n"
            "  defaults: 4096 x 4096, search %d (the converter's default), all cores\n",
            IDF_QUANT_DEFAULT_SEARCH);
}

int main(int argc, char **argv) {
    int64_t rows = 4096, cols = 4096;
    int search = IDF_QUANT_DEFAULT_SEARCH, threads = 0;
    uint64_t seed = 1234;
    const char *sweep = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--rows") && v) rows = atoll(argv[++i]);
        else if (!strcmp(a, "--cols") && v) cols = atoll(argv[++i]);
        else if (!strcmp(a, "--search") && v) search = atoi(argv[++i]);
        else if (!strcmp(a, "-j") && v) threads = atoi(argv[++i]);
        else if (!strcmp(a, "--seed") && v) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(a, "--sweep") && v) sweep = argv[++i];
        else if (!strcmp(a, "--dequant") && i + 2 < argc) return dequant_to_safetensors(argv[i + 1], argv[i + 2]);
        else {
            usage();
            return !strcmp(a, "-h") || !strcmp(a, "--help") ? 0 : 2;
        }
    }
    if (rows < 1 || cols < 32 || cols % 32 != 0 || search < 0) {
        fprintf(stderr, "idefics-quant-bench: need rows >= 1, cols a multiple of 32, search >= 0\n");
        return 2;
    }
    uint64_t dims[2] = {(uint64_t)rows, (uint64_t)cols}, q4b, q8b, unit;
    if (!idfx_tensor_nbytes(IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, IDF_QUANT_DEFAULT_TILE_ROWS, 2, dims, &q4b, &unit) ||
        !idfx_tensor_nbytes(IDFX_TYPE_Q8, IDFX_LAYOUT_ROWTILE, IDF_QUANT_DEFAULT_TILE_ROWS, 2, dims, &q8b, &unit)) {
        fprintf(stderr, "idefics-quant-bench: bad shape\n");
        return 2;
    }
    int64_t n = rows * cols;
    float *w = malloc((size_t)n * sizeof *w), *out = malloc((size_t)n * sizeof *out);
    uint8_t *buf = malloc((size_t)q8b);
    idf_pool *pool = idf_pool_create(threads, NULL, NULL, NULL);
    if (!w || !out || !buf || !pool) {
        fprintf(stderr, "idefics-quant-bench: out of memory\n");
        return 1;
    }
    printf("matrix %lld x %lld, tile rows %u, %d threads\n", (long long)rows, (long long)cols,
           IDF_QUANT_DEFAULT_TILE_ROWS, idf_pool_size(pool));
    const double bpw4 = 8.0 * (double)q4b / (double)n, bpw8 = 8.0 * (double)q8b / (double)n;
    static const char *dist_name[2] = {"gaussian", "student-t3"};
    for (int dist = 0; dist < 2; dist++) {
        fill(w, n, dist, seed + (uint64_t)dist);
        idfx_q4_0_absmax_roundtrip(w, n, out);
        double base = nmse(w, out, n);
        if (sweep) {
            printf("\n%s: Q4 search sweep (Q4_0 absmax NMSE %.6f)\n", dist_name[dist], base);
            printf("  %-8s %12s %10s %10s %10s\n", "search", "NMSE", "vs Q4_0", "ms", "Mw/s");
            for (const char *p = sweep; *p;) {
                int s = atoi(p);
                double t = roundtrip(pool, IDFX_TYPE_Q4, w, rows, cols, s, buf, out);
                double e = nmse(w, out, n);
                printf("  %-8d %12.6f %+9.1f%% %10.1f %10.2f\n", s, e, 100.0 * (e - base) / base, t,
                       (double)n / 1e3 / t);
                fflush(stdout);
                const char *c = strchr(p, ',');
                p = c ? c + 1 : p + strlen(p);
            }
            continue;
        }
        printf("\n%s (w ~ 0.02 * %s)\n", dist_name[dist], dist ? "t(3)" : "N(0,1)");
        printf("  %-22s %6s %12s %10s %10s\n", "method", "bits/w", "NMSE", "vs Q4_0", "Mw/s");
        printf("  %-22s %6.2f %12.6f %10s %10s\n", "Q4_0 absmax", 4.5, base, "-", "-");
        char name[64];
        snprintf(name, sizeof name, "Q4 search %d", search);
        double t = roundtrip(pool, IDFX_TYPE_Q4, w, rows, cols, search, buf, out);
        double e = nmse(w, out, n);
        printf("  %-22s %6.2f %12.6f %+9.1f%% %10.2f\n", name, bpw4, e, 100.0 * (e - base) / base,
               (double)n / 1e3 / t);
        t = roundtrip(pool, IDFX_TYPE_Q4, w, rows, cols, 0, buf, out);
        e = nmse(w, out, n);
        printf("  %-22s %6.2f %12.6f %+9.1f%% %10.2f\n", "Q4 search 0", bpw4, e, 100.0 * (e - base) / base,
               (double)n / 1e3 / t);
        t = roundtrip(pool, IDFX_TYPE_Q8, w, rows, cols, 0, buf, out);
        e = nmse(w, out, n);
        printf("  %-22s %6.2f %12.6f %+9.1f%% %10.2f\n", "Q8", bpw8, e, 100.0 * (e - base) / base,
               (double)n / 1e3 / t);
        /* F16 for scale: what the converter falls back to */
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; i++) {
            double d = (double)w[i] - idfx_fp16_to_fp32(idfx_fp32_to_fp16(w[i]));
            num += d * d;
            den += (double)w[i] * w[i];
        }
        printf("  %-22s %6.2f %12.3g %+9.1f%% %10s\n", "F16", 16.0, num / den, 100.0 * (num / den - base) / base,
               "-");
    }
    idf_pool_free(pool);
    free(w);
    free(out);
    free(buf);
    return 0;
}
