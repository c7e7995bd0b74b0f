/*
 * attn_bench.c - idefics-attn-bench: the attention op alone at the decoder's
 * shape (LLaMA-7B / IDEFICS-9B: 32 heads of 128), on the fast CPU backend and
 * the reference, for decode (one query row against a cache of D tokens) and
 * prefill (P causal rows), and the cross-attention shape (one row against an
 * image's 64 latents). A program, not a test: it prints figures.
 *
 *   idefics-attn-bench [-t THREADS] [-r REPS] [--kv f16|f32|q8] [--heads H] [--hd D]
 *                      [-d 0,512,1700] [-p 512,1700] [--chunk 64] [--copies N] [--ref]
 *
 * Prefill runs as forward.c evaluates a prompt: causal chunks of --chunk rows
 * (64) against the cache so far.
 * Decode figures are per call (one layer) and per decode step (x 32 layers),
 * with the KV bytes read per second (each K and V row once is the floor).
 * Each time is the median of REPS calls after one warm-up call.
 *
 *   idefics-attn-bench --model FILE.idfx [-t THREADS] [-n TOKENS] [--images 1,4,8]
 *
 * The cost of cross-attention per decode step on a real model: decode tok/s
 * with no image, then with 1, 4, 8 random images encoded into the context
 * (the decoded tokens attend to the latest image, as after a prompt).
 *
 *   idefics-attn-bench --model FILE.idfx --profile [-d 0,512,1700] [-n TOKENS] [--kv f16|q8]
 *
 * Decode at each depth (the context filled with that many tokens first), each
 * step split into matmuls, self-attention, cross-attention and the rest, wall
 * ms per token, and the process's CPU ms per token (both threads).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "forward.h"
#include "idefics.h"
#include "model.h"
#include "platform.h"
#include "quant.h"

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static float *rnd(size_t n, float amp, uint64_t seed) {
    float *p = malloc(n * sizeof(float));
    uint64_t s = seed * 2654435761u + 7;
    for (size_t i = 0; p && i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = amp * ((float)((s >> 40) & 0xffffff) / 8388608.0f - 1.0f);
    }
    return p;
}

static int parse_list(const char *s, int *v, int max) {
    int n = 0;
    while (*s && n < max) {
        char *e;
        v[n++] = (int)strtol(s, &e, 10);
        s = *e == ',' ? e + 1 : e;
        if (e == s && *s)
            return -1;
    }
    return n;
}

/* `copies` K or V caches of n_el elements in kv_type; *bytes = the size of one. */
static void *make_kv(int kv_type, const float *src, int64_t n_el, int copies, size_t *bytes) {
    *bytes = kv_type == IDEFICS_KV_F32   ? (size_t)n_el * 4
             : kv_type == IDEFICS_KV_F16 ? (size_t)n_el * 2
                                         : (size_t)(n_el / IDFX_KVQ8_BLOCK) * IDFX_KVQ8_BYTES;
    uint8_t *p = malloc(*bytes * (size_t)copies);
    if (!p)
        return NULL;
    if (kv_type == IDEFICS_KV_F32) {
        memcpy(p, src, *bytes);
    } else if (kv_type == IDEFICS_KV_F16) {
        for (int64_t i = 0; i < n_el; i++) {
            const uint16_t h = idfx_fp32_to_fp16(src[i]);
            memcpy(p + 2 * i, &h, 2);
        }
    } else {
        idfx_kvq8_quantize_ref(src, n_el, p);
    }
    for (int c = 1; c < copies; c++)
        memcpy(p + (size_t)c * *bytes, p, *bytes);
    return p;
}

/* CPU time of the whole process (every thread), ms: on a shared machine the
 * wall time includes waiting for a core; this does not. */
static double cpu_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static double last_cpu_ms; /* CPU ms per call of the last time_attn (median) */

typedef struct bench {
    idf_backend *b;
    int reps;
    int copies;      /* caches of `bytes` each, one per layer, taken in turn */
    size_t bytes;
} bench;

/* Each call reads the next layer's cache, as decode does (32 layers of cache do
 * not fit the last-level cache), so decode figures include memory traffic. */
static double time_attn(const bench *B, const idf_attn *a0) {
    double v[64], cv[64];
    const int r = B->reps < 64 ? B->reps : 64;
    idf_attn a = *a0;
    B->b->attention(B->b->ctx, &a); /* warm-up */
    for (int i = 0; i < r; i++) {
        double ms = 0;
        const double c0 = cpu_ms();
        for (int l = 0; l < B->copies; l++) {
            a.k = (const uint8_t *)a0->k + (size_t)l * B->bytes;
            a.v = (const uint8_t *)a0->v + (size_t)l * B->bytes;
            const double t0 = idf_time_ms();
            if (B->b->attention(B->b->ctx, &a) != IDEFICS_OK)
                return -1;
            ms += idf_time_ms() - t0;
        }
        v[i] = ms / B->copies;
        cv[i] = (cpu_ms() - c0) / B->copies;
    }
    qsort(v, (size_t)r, sizeof v[0], cmp_d);
    qsort(cv, (size_t)r, sizeof cv[0], cmp_d);
    last_cpu_ms = cv[r / 2];
    return v[r / 2];
}

/* --model profiles: the state's backend with its matmul and attention slots
 * wrapped by timers (a program's own globals; the library has none). */
static idefics_status (*real_attn)(void *, const idf_attn *);
static idefics_status (*real_mm)(void *, const idf_weight *, const float *, const float *, int64_t, float *, int64_t);
/* wall ms and process CPU ms (every thread: on a machine shared with other
 * jobs, CPU time is what the op itself costs) */
static double t_self, t_cross, t_mm, c_self, c_cross, c_mm;

static idefics_status prof_attn(void *ctx, const idf_attn *a) {
    const double t0 = idf_time_ms(), c0 = cpu_ms();
    const idefics_status st = real_attn(ctx, a);
    *(a->causal ? &t_self : &t_cross) += idf_time_ms() - t0;
    *(a->causal ? &c_self : &c_cross) += cpu_ms() - c0;
    return st;
}

static idefics_status prof_mm(void *ctx, const idf_weight *w, const float *bias, const float *x, int64_t n, float *y,
                              int64_t ldy) {
    const double t0 = idf_time_ms(), c0 = cpu_ms();
    const idefics_status st = real_mm(ctx, w, bias, x, n, y, ldy);
    t_mm += idf_time_ms() - t0;
    c_mm += cpu_ms() - c0;
    return st;
}

/* The model for the --model modes, or NULL with the reason on stderr. */
static idefics_model *load_model(const char *path, int threads) {
    char msg[512];
    idefics_model_params mp = idefics_model_default_params();
    mp.n_threads = threads;
    idefics_model *m = NULL;
    if (idefics_model_load(path, &mp, &m, msg, sizeof msg) != IDEFICS_OK)
        fprintf(stderr, "idefics-attn-bench: %s\n", msg);
    return m;
}

/* --model --depth: the context filled with D random tokens (untimed), then tg
 * decode steps, each split into matmuls, self-attention, cross-attention and
 * the rest (norms, rope, activations, sampling-free logits), wall and CPU. */
static int depth_profile(const char *path, int threads, int tg, int kv, const int *depth, int nd) {
    idefics_model *m = load_model(path, threads);
    if (!m)
        return 1;
    const idf_config *c = &m->cfg;
    idf_state *st = NULL;
    idf_err e;
    idf_err_clear(&e);
    int maxd = 0;
    for (int i = 0; i < nd; i++)
        maxd = depth[i] > maxd ? depth[i] : maxd;
    float *logits = malloc((size_t)c->n_vocab * sizeof(float));
    int32_t *ids = malloc((size_t)(maxd + tg + 1) * sizeof(int32_t));
    int rc = 1;
    if (!logits || !ids || tg < 1 || maxd + tg + 1 > 2048)
        goto out;
    for (int i = 0; i < maxd + tg + 1; i++)
        ids[i] = (int32_t)((uint32_t)(i * 2654435761u) % c->vocab_size);
    if (idf_state_create(m, 2048, (idefics_kv_type)kv, threads, &st, &e) != IDEFICS_OK)
        goto fail;
    idf_backend *b = idf_state_backend(st);
    real_attn = b->attention;
    real_mm = b->matmul;
    b->attention = prof_attn;
    b->matmul = prof_mm;
    printf("decode profile: %s, %s, %d threads, kv %s, %d tokens per depth (ms per token)\n", path, b->name, threads,
           kv == IDEFICS_KV_Q8 ? "q8" : kv == IDEFICS_KV_F32 ? "f32" : "f16", tg);
    printf("%7s %9s | wall: %8s %9s %9s %9s %9s | cpu: %8s %9s %9s %9s\n", "depth", "tok/s", "total", "matmul",
           "self-att", "cross-att", "other", "total", "matmul", "self-att", "cross-att");
    for (int d = 0; d < nd; d++) {
        idf_state_reset(st);
        t_self = t_cross = t_mm = c_self = c_cross = c_mm = 0;
        if (depth[d] > 0) { /* the fill is a depth-token prefill: report it too */
            const double f0 = idf_time_ms(), fc0 = cpu_ms();
            if (idf_state_eval(st, ids, NULL, depth[d], logits, false, &e) != IDEFICS_OK)
                goto fail;
            const double fw = idf_time_ms() - f0, fc = cpu_ms() - fc0;
            printf("  (prefill of %d tokens: %.0f ms wall = %.2f tok/s, %.0f ms cpu: matmul %.0f, self-att %.0f, "
                   "other %.0f)\n",
                   depth[d], fw, depth[d] / (fw / 1e3), fc, c_mm, c_self, fc - c_mm - c_self);
        }
        t_self = t_cross = t_mm = c_self = c_cross = c_mm = 0;
        const double c0 = cpu_ms(), t0 = idf_time_ms();
        for (int t = 0; t < tg; t++)
            if (idf_state_eval(st, ids + depth[d] + t, NULL, 1, logits, false, &e) != IDEFICS_OK)
                goto fail;
        const double tot = (idf_time_ms() - t0) / tg, cpu = (cpu_ms() - c0) / tg;
        printf("%7d %9.3f |       %8.2f %9.2f %9.2f %9.2f %9.2f |      %8.2f %9.2f %9.2f %9.2f\n", depth[d],
               1e3 / tot, tot, t_mm / tg, t_self / tg, t_cross / tg, tot - (t_mm + t_self + t_cross) / tg, cpu,
               c_mm / tg, c_self / tg, c_cross / tg);
        fflush(stdout);
    }
    printf("peak RSS %.1f MB, anonymous RSS %.1f MB\n", (double)idf_peak_rss_bytes() / 1048576.0,
           (double)idf_anon_rss_bytes() / 1048576.0);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "idefics-attn-bench: %s\n", e.msg);
out:
    idf_state_free(st);
    idefics_model_free(m);
    free(logits);
    free(ids);
    return rc;
}

/* --model: decode tok/s with 0 and then n_img[] images in the context. */
static int model_mode(const char *path, int threads, int tg, const int *n_img, int ni) {
    idefics_model *m = load_model(path, threads);
    if (!m)
        return 1;
    const idf_config *c = &m->cfg;
    idf_state *st = NULL;
    idf_err e;
    idf_err_clear(&e);
    const size_t np = (size_t)c->v_channels * c->v_image_size * c->v_image_size;
    float *logits = malloc((size_t)c->n_vocab * sizeof(float)), *pix = rnd(np ? np : 1, 1.0f, 9);
    int32_t ids[512], img[512];
    int rc = 1;
    if (!logits || !pix || tg < 1 || tg > 500)
        goto out;
    for (int i = 0; i < tg + 1; i++)
        ids[i] = (int32_t)((uint32_t)(i * 2654435761u) % c->vocab_size);
    if (idf_state_create(m, 2048, IDEFICS_KV_F16, threads, &st, &e) != IDEFICS_OK)
        goto fail;
    idf_backend *b = idf_state_backend(st);
    real_attn = b->attention;
    real_mm = b->matmul;
    b->attention = prof_attn;
    b->matmul = prof_mm;
    printf("cross-attention cost per decode step: %s, %d threads, %d tokens per run, %u latents per image, "
           "%u cross blocks (ms per token; cpu = process CPU time, both threads)\n",
           path, threads, tg, m->n_img_tokens, c->n_cross);
    int have = 0;
    for (int k = -1; k < ni; k++) {
        const int want = k < 0 ? 0 : n_img[k];
        if (want > 0 && (!m->w->vl || c->v_layers == 0)) {
            printf("text-only model: no images\n");
            break;
        }
        for (; have < want; have++) {
            int slot;
            if (idf_state_add_image(st, pix, &slot, &e) != IDEFICS_OK)
                goto fail;
        }
        const int32_t sl = want > 0 ? want - 1 : -1;
        for (int i = 0; i < tg + 1; i++)
            img[i] = sl;
        idf_state_truncate(st, 0);
        if (idf_state_eval(st, ids, img, 1, logits, false, &e) != IDEFICS_OK)
            goto fail;
        t_self = t_cross = t_mm = c_self = c_cross = c_mm = 0;
        const double t0 = idf_time_ms(), c0 = cpu_ms();
        for (int t = 0; t < tg; t++)
            if (idf_state_eval(st, ids + 1 + t, img + 1 + t, 1, logits, false, &e) != IDEFICS_OK)
                goto fail;
        const double ms = (idf_time_ms() - t0) / tg, cms = (cpu_ms() - c0) / tg;
        printf("images in context %d: %8.2f ms/token (%6.2f tok/s); cpu %7.2f ms/token: matmul %7.2f, "
               "cross-attention %6.3f (wall %6.3f), self-attention %6.3f\n",
               want, ms, 1e3 / ms, cms, c_mm / tg, c_cross / tg, t_cross / tg, c_self / tg);
    }
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "idefics-attn-bench: %s\n", e.msg);
out:
    idf_state_free(st);
    idefics_model_free(m);
    free(logits);
    free(pix);
    return rc;
}

int main(int argc, char **argv) {
    int threads = 0, reps = 7, copies = 8, heads = 32, hd = 128, layers = 32, kv_type = IDEFICS_KV_F16;
    int depth[8] = {0, 128, 512, 1024, 1700, 2047}, nd = 6, pp[8] = {512, 1700}, np = 2;
    bool ref = false;
    const char *model = NULL;
    bool profile = false; /* --model with --profile: the depth profile of decode over -d */
    int n_img[8] = {1, 4, 8}, ni = 3, tg = 16, chunk = 64;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--ref")) {
            ref = true;
            continue;
        }
        if (!strcmp(a, "--profile")) {
            profile = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "idefics-attn-bench: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "-t"))
            threads = atoi(v);
        else if (!strcmp(a, "-r"))
            reps = atoi(v);
        else if (!strcmp(a, "--heads"))
            heads = atoi(v);
        else if (!strcmp(a, "--chunk"))
            chunk = atoi(v);
        else if (!strcmp(a, "--model"))
            model = v;
        else if (!strcmp(a, "--images"))
            ni = parse_list(v, n_img, 8);
        else if (!strcmp(a, "-n"))
            tg = atoi(v);
        else if (!strcmp(a, "--copies"))
            copies = atoi(v);
        else if (!strcmp(a, "--hd"))
            hd = atoi(v);
        else if (!strcmp(a, "--kv"))
            kv_type = !strcmp(v, "f32") ? IDEFICS_KV_F32 : !strcmp(v, "q8") ? IDEFICS_KV_Q8 : IDEFICS_KV_F16;
        else if (!strcmp(a, "-d"))
            nd = parse_list(v, depth, 8);
        else if (!strcmp(a, "-p"))
            np = parse_list(v, pp, 8);
        else {
            fprintf(stderr, "usage: idefics-attn-bench [-t N] [-r REPS] [--kv f16|f32|q8] [--heads H] [--hd D] "
                            "[-d LIST] [-p LIST] [--chunk ROWS] [--copies N] [--ref]\n"
                            "       idefics-attn-bench --model FILE.idfx [-t N] [-n TOKENS] [--images 1,4,8]\n"
                            "       idefics-attn-bench --model FILE.idfx --profile [-d LIST] [-n TOKENS] [--kv f16|q8]\n");
            return 2;
        }
    }
    if (nd < 0 || np < 0 || reps < 1 || copies < 1 || chunk < 1 || heads < 1 || hd < 1 || (heads * hd) % 32) {
        fprintf(stderr, "idefics-attn-bench: bad arguments\n");
        return 2;
    }
    if (threads <= 0)
        threads = idf_cpu_count();
    if (model && profile)
        return depth_profile(model, threads, tg, kv_type, depth, nd);
    if (model)
        return ni < 0 ? 2 : model_mode(model, threads, tg, n_img, ni);
    idf_err err;
    idf_backend *b = NULL;
    const idefics_status st =
        ref ? idf_backend_ref_create(threads, NULL, &b, &err) : idf_backend_cpu_create(threads, NULL, &b, &err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics-attn-bench: %s\n", err.msg);
        return 1;
    }
    const int row = heads * hd, max_ctx = 2048;
    int maxd = 1;
    for (int i = 0; i < nd; i++)
        maxd = depth[i] + 1 > maxd ? depth[i] + 1 : maxd;
    for (int i = 0; i < np; i++)
        maxd = pp[i] > maxd ? pp[i] : maxd;
    maxd = maxd > max_ctx ? maxd : max_ctx;
    float *kf = rnd((size_t)maxd * row, 1.0f, 1), *vf = rnd((size_t)maxd * row, 1.0f, 2);
    float *q = rnd((size_t)maxd * row, 1.0f, 3), *out = malloc((size_t)maxd * row * sizeof(float));
    size_t kvb = 0;
    void *k = make_kv(kv_type, kf, (int64_t)maxd * row, copies, &kvb);
    void *v = make_kv(kv_type, vf, (int64_t)maxd * row, copies, &kvb);
    if (!k || !v || !q || !kf || !vf || !out) {
        fprintf(stderr, "idefics-attn-bench: out of memory\n");
        return 1;
    }
    const double bytes_per_row = (double)kvb / maxd;
    const char *kvn = kv_type == IDEFICS_KV_F32 ? "f32" : kv_type == IDEFICS_KV_Q8 ? "q8" : "f16";
    printf("attention on %s, %d threads, %d heads x %d, kv %s, median of %d, %d caches in turn\n", b->name, threads,
           heads, hd, kvn, reps, copies);
    bench B = {b, reps, copies, kvb};
    for (int i = 0; i < nd; i++) {
        const int n_kv = depth[i] + 1;
        const idf_attn a = {.n_q = 1, .n_kv = n_kv, .n_heads = heads, .head_dim = hd, .q = q, .q_stride = row,
                            .k = k, .v = v, .kv_stride = row, .kv_type = kv_type, .scale = 1.0f / sqrtf((float)hd),
                            .causal = true, .q_pos0 = depth[i], .out = out, .out_stride = row};
        const double ms = time_attn(&B, &a);
        printf("decode  depth %5d: %8.4f ms/layer, %7.2f ms/step (x%d layers), KV read %6.2f GB/s; cpu %8.4f ms/layer\n",
               depth[i], ms, ms * layers, layers, 2.0 * bytes_per_row * n_kv / (ms * 1e6), last_cpu_ms);
    }
    for (int i = 0; i < np; i++) {
        /* as forward.c evaluates a prompt: chunks of `chunk` rows (IDF_EVAL_BATCH),
         * each attending to the cache so far and to itself, causally */
        double ms = 0, cms = 0;
        B.reps = reps > 3 ? 3 : reps;
        B.copies = 1;
        for (int p0 = 0; p0 < pp[i]; p0 += chunk) {
            const int nq = pp[i] - p0 < chunk ? pp[i] - p0 : chunk;
            const idf_attn a = {.n_q = nq, .n_kv = p0 + nq, .n_heads = heads, .head_dim = hd,
                                .q = q + (size_t)p0 * row, .q_stride = row, .k = k, .v = v, .kv_stride = row,
                                .kv_type = kv_type, .scale = 1.0f / sqrtf((float)hd), .causal = true, .q_pos0 = p0,
                                .out = out + (size_t)p0 * row, .out_stride = row};
            ms += time_attn(&B, &a);
            cms += last_cpu_ms;
        }
        const double flops = 4.0 * heads * hd * (double)pp[i] * (pp[i] + 1) / 2;
        printf("prefill %5d rows (chunks of %d):  %8.2f ms/layer, %7.1f ms (x%d layers), %6.1f GFLOP/s; cpu %8.2f "
               "ms/layer, %6.1f GFLOP/s per busy core\n",
               pp[i], chunk, ms, ms * layers, layers, flops / (ms * 1e6), cms, flops / (cms * 1e6));
    }
    /* cross-attention, one decode row against 64 latents (one image: a row
     * attends to its latest image only, so this is the per-layer cost at any
     * number of images), and 256 / 512 latents for scale */
    for (int nl = 64; nl <= 512; nl *= 2) {
        if (nl == 128)
            continue;
        const idf_attn a = {.n_q = 1, .n_kv = nl, .n_heads = heads, .head_dim = hd, .q = q,
                            .q_stride = row, .k = k, .v = v, .kv_stride = row, .kv_type = kv_type,
                            .scale = 1.0f / sqrtf((float)hd), .out = out, .out_stride = row};
        B.reps = reps;
        B.copies = copies;
        const double ms = time_attn(&B, &a);
        printf("cross   %3d latents: %8.4f ms/call; cpu %8.4f ms/call\n", nl, ms, last_cpu_ms);
    }
    b->free(b);
    free(kf);
    free(vf);
    free(q);
    free(out);
    free(k);
    free(v);
    return 0;
}
