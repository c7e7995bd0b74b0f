/*
 * opencl_ops.c - idefics-opencl-ops: per-op timings of the OpenCL backend at
 * IDEFICS-9B shapes, next to the reference and fast CPU backends, plus the
 * bytes the kernels read per call against the weight bytes (decode should
 * read each weight byte once: ratio 1.0), and CLBlast SGEMM against our F32
 * matmul kernel on the vision-tower shapes. A program, not a test: it prints
 * numbers (docs/OPENCL.md has the PoCL results).
 *
 *   idefics-opencl-ops [-r REPS] [--quick] [--no-cpu] [--no-clblast] [--filter TEXT]
 *   (--filter: only the cases whose name contains TEXT)
 *   idefics-opencl-ops --model FILE.idfx [--prompt N]
 *   (one N-token prefill, then one decode token on a real model with --backend
 *   opencl: per-op time and the bytes the kernels read for that token, against
 *   the bytes of the matrices a decode step uses)
 *
 * Weights and activations are random (speed does not depend on values); Q4/Q8
 * are quantised with the reference quantiser at the converter's default tile of
 * 8 rows. Each time is the median of REPS calls after one warm-up call.
 * Device: IDEFICS_DEVICE / the first OpenCL device (PoCL here).
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_opencl.h"
#include "forward.h"
#include "idefics.h"
#include "model.h"
#include "quant.h"

static int reps = 5;

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static float *rnd(size_t n, float amp) {
    float *p = malloc(n * sizeof(float));
    uint64_t s = n * 2654435761u + 7;
    for (size_t i = 0; p && i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        p[i] = amp * ((float)((s >> 40) & 0xffffff) / 8388608.0f - 1.0f);
    }
    return p;
}

typedef struct wt {
    idf_weight w;
    void *bytes;
    uint64_t nbytes;
} wt;

static wt make_w(int type, int64_t m, int64_t k) {
    wt t = {0};
    const int layout = type >= IDFX_TYPE_Q4 ? IDFX_LAYOUT_ROWTILE : IDFX_LAYOUT_ROWMAJOR;
    const uint64_t dims[2] = {(uint64_t)m, (uint64_t)k};
    uint64_t unit;
    idfx_tensor_nbytes(type, layout, layout ? 8 : 0, 2, dims, &t.nbytes, &unit);
    float *src = rnd((size_t)(m * k), 0.05f);
    t.bytes = aligned_alloc(4096, (t.nbytes + 4095) / 4096 * 4096);
    if (type == IDFX_TYPE_Q4)
        idfx_quantize_q4_ref(src, m, k, 8, 0, t.bytes);
    else if (type == IDFX_TYPE_Q8)
        idfx_quantize_q8_ref(src, m, k, 8, 0, t.bytes);
    else if (type == IDFX_TYPE_F16)
        for (int64_t i = 0; i < m * k; i++)
            ((uint16_t *)t.bytes)[i] = idfx_fp32_to_fp16(src[i]);
    else
        memcpy(t.bytes, src, (size_t)(m * k) * 4);
    free(src);
    t.w = (idf_weight){.name = "bench", .data = t.bytes, .type = (uint8_t)type, .layout = (uint8_t)layout,
                       .tile_rows = layout ? 8 : 0, .rows = m, .cols = k};
    return t;
}

typedef struct bcase {
    const char *what;
    idf_op op;
    int type;     /* matmul */
    int64_t n, m, k;
    int heads, kv_type; /* attention: n = n_q, m = n_kv, k = head_dim */
    bool causal;
} bcase;

/* One call of case c on backend b. */
static idefics_status run1(idf_backend *b, const bcase *c, const wt *w, float *x, float *y, void *kv, float *g) {
    switch (c->op) {
    case IDF_OP_MATMUL:
        return b->matmul(b->ctx, &w->w, NULL, x, c->n, y, c->m);
    case IDF_OP_RMSNORM:
        return b->rmsnorm(b->ctx, x, g, 1e-6f, c->n, c->k, y);
    case IDF_OP_LAYERNORM:
        return b->layernorm(b->ctx, x, g, g, 1e-5f, c->n, c->k, y);
    case IDF_OP_ROPE:
        return b->rope(b->ctx, y, c->n, (int64_t)c->heads * c->k, c->heads, (int)c->k, 100, 10000.0f);
    case IDF_OP_SILU_MUL:
        return b->silu_mul(b->ctx, y, x, c->n * c->k);
    case IDF_OP_ADD:
        return b->add(b->ctx, y, x, c->n * c->k);
    case IDF_OP_GELU:
        return b->gelu(b->ctx, y, c->n * c->k);
    case IDF_OP_ATTENTION: {
        const int64_t row = (int64_t)c->heads * c->k;
        const idf_attn a = {.n_q = (int)c->n, .n_kv = (int)c->m, .n_heads = c->heads, .head_dim = (int)c->k,
                            .q = x, .q_stride = row, .k = kv,
                            .v = (const uint8_t *)kv + (size_t)(c->m * row) * (c->kv_type == IDEFICS_KV_F32 ? 4 : 2),
                            .kv_stride = row, .kv_type = c->kv_type, .scale = 0.1f, .causal = c->causal,
                            .q_pos0 = (int)(c->m - c->n), .out = y, .out_stride = row};
        return b->attention(b->ctx, &a);
    }
    default:
        return IDEFICS_ERR_UNSUPPORTED;
    }
}

/* ny > 0: b keeps registered memory on the device; each call is timed until
 * y is back on the host (host_access), as the forward pass would need it. */
static double time_case_out(idf_backend *b, const bcase *c, const wt *w, float *x, float *y, void *kv, float *g,
                            size_t ny) {
    if (!b)
        return NAN;
    if (run1(b, c, w, x, y, kv, g) != IDEFICS_OK)
        return NAN;
    if (ny && b->host_access(b->ctx, y, ny * 4) != IDEFICS_OK)
        return NAN;
    double t[64];
    const int r = reps < 64 ? reps : 64;
    for (int i = 0; i < r; i++) {
        const double t0 = idf_time_ms();
        run1(b, c, w, x, y, kv, g);
        if (ny)
            b->host_access(b->ctx, y, ny * 4);
        t[i] = idf_time_ms() - t0;
    }
    qsort(t, (size_t)r, sizeof t[0], cmp_d);
    return t[r / 2];
}

static double time_case(idf_backend *b, const bcase *c, const wt *w, float *x, float *y, void *kv, float *g) {
    return time_case_out(b, c, w, x, y, kv, g, 0);
}

/* ---- CLBlast, loaded at run time like OpenCL itself ---- */
typedef int (*sgemm_fn)(int layout, int ta, int tb, size_t m, size_t n, size_t k, float alpha, cl_mem a, size_t ao,
                        size_t lda, cl_mem b, size_t bo, size_t ldb, float beta, cl_mem c, size_t co, size_t ldc,
                        cl_command_queue *q, cl_event *ev);

static void clblast_vs_ours(idf_ocl_device *dev, idf_backend *ob) {
    void *lib = dlopen("libclblast.so.1", RTLD_NOW | RTLD_LOCAL);
    sgemm_fn sgemm = lib ? (sgemm_fn)(uintptr_t)dlsym(lib, "CLBlastSgemm") : NULL;
    if (!sgemm) {
        printf("\nCLBlast: libclblast.so.1 not found; skipped\n");
        return;
    }
    const idf_cl_api *cl = &dev->cl;
    cl_int e;
    cl_command_queue q = cl->clCreateCommandQueue(dev->ctx, dev->device, 0, &e);
    printf("\nDense F32 GEMM y[n,m] = x[n,k] W[m,k]^T: CLBlast SGEMM vs matmul_f.cl (device-resident buffers for "
           "CLBlast,\nhost-wrapped for ours as the backend runs it); median of %d\n", reps);
    printf("%-28s %10s %10s %10s %10s\n", "shape", "clblast ms", "GFLOP/s", "ours ms", "GFLOP/s");
    const int64_t shapes[][3] = {{257, 1280, 1280}, {257, 5120, 1280}, {257, 1280, 5120}, {321, 1536, 1280}, {64, 4096, 4096}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t n = shapes[s][0], m = shapes[s][1], k = shapes[s][2];
        wt w = make_w(IDFX_TYPE_F32, m, k);
        float *x = rnd((size_t)(n * k), 1.0f), *y = calloc((size_t)(n * m), 4);
        cl_mem a = cl->clCreateBuffer(dev->ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, (size_t)(n * k) * 4, x, &e);
        cl_mem bb = cl->clCreateBuffer(dev->ctx, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, (size_t)(m * k) * 4, w.bytes, &e);
        cl_mem cc = cl->clCreateBuffer(dev->ctx, CL_MEM_READ_WRITE, (size_t)(n * m) * 4, NULL, &e);
        double t[64];
        int st = sgemm(101, 111, 112, (size_t)n, (size_t)m, (size_t)k, 1.0f, a, 0, (size_t)k, bb, 0, (size_t)k, 0.0f,
                       cc, 0, (size_t)m, &q, NULL); /* warm-up: CLBlast compiles its kernels here */
        cl->clFinish(q);
        for (int i = 0; i < reps && st == 0; i++) {
            const double t0 = idf_time_ms();
            st = sgemm(101, 111, 112, (size_t)n, (size_t)m, (size_t)k, 1.0f, a, 0, (size_t)k, bb, 0, (size_t)k, 0.0f,
                       cc, 0, (size_t)m, &q, NULL);
            cl->clFinish(q);
            t[i] = idf_time_ms() - t0;
        }
        qsort(t, (size_t)reps, sizeof t[0], cmp_d);
        const double tc = st == 0 ? t[reps / 2] : NAN;
        const bcase bc = {.op = IDF_OP_MATMUL, .n = n, .m = m, .k = k};
        const double to = time_case(ob, &bc, &w, x, y, NULL, NULL);
        const double fl = 2.0 * (double)n * (double)m * (double)k / 1e6;
        char nm[64];
        snprintf(nm, sizeof nm, "n=%lld m=%lld k=%lld", (long long)n, (long long)m, (long long)k);
        printf("%-28s %10.2f %10.2f %10.2f %10.2f%s\n", nm, tc, fl / tc, to, fl / to, st ? " (clblast error)" : "");
        cl->clReleaseMemObject(a);
        cl->clReleaseMemObject(bb);
        cl->clReleaseMemObject(cc);
        free(w.bytes);
        free(x);
        free(y);
    }
    cl->clReleaseCommandQueue(q);
    dlclose(lib);
}

/* Bytes of the matrices one decode token multiplies by: every decoder layer,
 * every gated cross block's q/o/MLP (their K/V were applied at image time),
 * lm_head and additional_fc. */
static uint64_t wbytes(const idf_weight *w) {
    const uint64_t dims[2] = {(uint64_t)w->rows, (uint64_t)w->cols};
    uint64_t b = 0, u;
    return w->data && idfx_tensor_nbytes(w->type, w->layout, w->tile_rows, 2, dims, &b, &u) ? b : 0;
}

static int model_mode(const char *path, int n_prompt) {
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = IDEFICS_BACKEND_OPENCL;
    idefics_model *m = NULL;
    char errbuf[512];
    double t0 = idf_time_ms();
    if (idefics_model_load(path, &mp, &m, errbuf, sizeof errbuf) != IDEFICS_OK) {
        printf("cannot load %s with --backend opencl: %s\n", path, errbuf);
        return 1;
    }
    printf("model %s: loaded in %.0f ms; weights %.1f MiB zero-copy, %.1f MiB uploaded, %.1f MiB left to the CPU\n",
           path, idf_time_ms() - t0, (double)m->ocl->w_zero_copy / 1048576.0, (double)m->ocl->w_uploaded / 1048576.0,
           (double)m->ocl->w_declined / 1048576.0);
    const idf_config *c = &m->cfg;
    uint64_t dec = wbytes(&m->w->lm_head) + (c->additional_vocab ? wbytes(&m->w->lm_add) : 0);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const idf_decoder_layer *L = &m->w->dl[l];
        dec += wbytes(&L->q) + wbytes(&L->k) + wbytes(&L->v) + wbytes(&L->o) + wbytes(&L->gate) + wbytes(&L->up) +
               wbytes(&L->down);
    }
    uint64_t xdense = 0, xattn = 0;
    for (uint32_t j = 0; j < c->n_cross; j++) {
        const idf_cross_block *B = &m->w->xb[j];
        xdense += wbytes(&B->gate) + wbytes(&B->up) + wbytes(&B->down);
        xattn += wbytes(&B->q) + wbytes(&B->o);
    }
    idf_err err;
    idf_state *st = NULL;
    if (idf_state_create(m, n_prompt + 8, IDEFICS_KV_F16, 0, &st, &err) != IDEFICS_OK) {
        printf("state: %s\n", err.msg);
        idefics_model_free(m);
        return 1;
    }
    int32_t *ids = calloc((size_t)n_prompt + 1, sizeof(int32_t));
    float *logits = malloc((size_t)c->n_vocab * sizeof(float));
    for (int i = 0; i <= n_prompt; i++)
        ids[i] = (int32_t)(1 + (i * 7919) % (c->vocab_size - 1));
    idf_backend *b = idf_state_backend(st);
    t0 = idf_time_ms();
    idefics_status s1 = idf_state_eval(st, ids, NULL, n_prompt, logits, false, &err);
    const double t_pp = idf_time_ms() - t0;
    idf_ocl_backend_stats_reset(b);
    t0 = idf_time_ms();
    if (s1 == IDEFICS_OK)
        s1 = idf_state_eval(st, ids + n_prompt, NULL, 1, logits, false, &err);
    const double t_tg = idf_time_ms() - t0;
    if (s1 != IDEFICS_OK) {
        printf("eval: %s\n", err.msg);
    } else {
        const idf_ocl_op_stats *os = idf_ocl_backend_stats(b);
        printf("prefill %d tokens: %.0f ms; one decode token: %.0f ms (text only: the cross blocks' attention is "
               "skipped without an image)\n",
               n_prompt, t_pp, t_tg);
        static const char *names[IDF_OP_COUNT] = {"matmul", "get_rows", "rmsnorm", "layernorm", "rope",
                                                  "attention", "gelu", "quick_gelu", "silu_mul", "relu",
                                                  "add", "scale", "gated_add"};
        uint64_t w_rd = 0, all_rd = 0;
        printf("%-10s %6s %10s %12s\n", "op", "calls", "ms", "MiB read");
        for (int o = 0; o < IDF_OP_COUNT; o++) {
            if (!os[o].calls)
                continue;
            printf("%-10s %6llu %10.1f %12.2f\n", names[o], (unsigned long long)os[o].calls, os[o].ms,
                   (double)os[o].bytes_rd / 1048576.0);
            w_rd += os[o].w_bytes;
            all_rd += os[o].bytes_rd;
        }
        const uint64_t used = dec + xdense;
        printf("decode token: weight bytes the kernels read %.1f MiB; matrices a text token uses %.1f MiB "
               "(decoder + lm_head %.1f, cross MLP %.1f; cross q/o %.1f only with an image): ratio %.3f; all "
               "buffer reads %.1f MiB (%.3fx)\n",
               (double)w_rd / 1048576.0, (double)used / 1048576.0, (double)dec / 1048576.0,
               (double)xdense / 1048576.0, (double)xattn / 1048576.0, (double)w_rd / (double)used,
               (double)all_rd / 1048576.0, (double)all_rd / (double)used);
    }
    free(ids);
    free(logits);
    idf_state_free(st);
    idefics_model_free(m);
    return s1 == IDEFICS_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--model")) {
            int np = 16;
            for (int j = 1; j + 1 < argc; j++)
                if (!strcmp(argv[j], "--prompt"))
                    np = atoi(argv[j + 1]) > 0 ? atoi(argv[j + 1]) : 16;
            return model_mode(argv[i + 1], np);
        }
    bool quick = false, cpu = true, clblast = true;
    const char *filter = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-r") && i + 1 < argc)
            reps = atoi(argv[++i]) > 0 ? atoi(argv[i]) : 5;
        else if (!strcmp(argv[i], "--quick"))
            quick = true;
        else if (!strcmp(argv[i], "--no-cpu"))
            cpu = false;
        else if (!strcmp(argv[i], "--no-clblast"))
            clblast = false;
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc)
            filter = argv[++i];
        else {
            fprintf(stderr, "usage: idefics-opencl-ops [-r REPS] [--quick] [--no-cpu] [--no-clblast] [--filter TEXT]\n");
            return 2;
        }
    }
    idf_err err;
    idf_ocl_device *dev = NULL;
    idf_backend *ob = NULL, *ref = NULL, *fast = NULL;
    if (idf_ocl_device_open(NULL, false, NULL, NULL, &dev, &err) != IDEFICS_OK ||
        idf_backend_opencl_create(dev, NULL, &ob, &err) != IDEFICS_OK) {
        printf("no OpenCL device: %s\n", err.msg);
        return 1;
    }
    if (cpu) {
        idf_backend_ref_create(0, NULL, &ref, &err);
        if (idf_backend_cpu_create(0, NULL, &fast, &err) != IDEFICS_OK)
            fast = NULL;
    }
    const idf_ocl_probe *p = idf_ocl_device_probe(dev);
    printf("device: %s (%s, driver %s), %u compute units, tuning %s, program %s in %.0f ms\n", p->device, p->platform,
           p->driver, p->compute_units, idf_ocl_device_tuning(dev)->file,
           dev->from_cache ? "loaded from cache" : "built", dev->build_ms);
    printf("median of %d calls, ms; 'read/w' = buffer bytes the kernels read / weight bytes\n\n", reps);
    const bcase cases[] = {
        {.what = "decode q4 attn proj", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_Q4, .n = 1, .m = 4096, .k = 4096},
        {.what = "decode q4 mlp up", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_Q4, .n = 1, .m = 11008, .k = 4096},
        {.what = "decode q4 mlp down", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_Q4, .n = 1, .m = 4096, .k = 11008},
        {.what = "decode q4 lm_head", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_Q4, .n = 1, .m = 32000, .k = 4096},
        {.what = "decode q8 attn proj", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_Q8, .n = 1, .m = 4096, .k = 4096},
        {.what = "prefill64 q4 attn proj", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_Q4, .n = 64, .m = 4096, .k = 4096},
        {.what = "prefill64 q4 mlp up", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_Q4, .n = 64, .m = 11008, .k = 4096},
        {.what = "vision f16 qkvo", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_F16, .n = 257, .m = 1280, .k = 1280},
        {.what = "vision f16 fc1", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_F16, .n = 257, .m = 5120, .k = 1280},
        {.what = "vision q4 fc1", .op = IDF_OP_MATMUL, .type = IDFX_TYPE_Q4, .n = 257, .m = 5120, .k = 1280},
        {.what = "rmsnorm 1x4096", .op = IDF_OP_RMSNORM, .type = 0, .n = 1, .m = 0, .k = 4096},
        {.what = "layernorm 257x1280", .op = IDF_OP_LAYERNORM, .type = 0, .n = 257, .m = 0, .k = 1280},
        {.what = "rope 1x32x128", .op = IDF_OP_ROPE, .type = 0, .n = 1, .m = 0, .k = 128, .heads = 32},
        {.what = "attn decode kv512 f16", .op = IDF_OP_ATTENTION, .type = 0, .n = 1, .m = 512, .k = 128, .heads = 32, .kv_type = IDEFICS_KV_F16, .causal = true},
        {.what = "attn cross 1x64 f16", .op = IDF_OP_ATTENTION, .type = 0, .n = 1, .m = 64, .k = 128, .heads = 32, .kv_type = IDEFICS_KV_F16, .causal = false},
        {.what = "attn prefill 64x576 f16", .op = IDF_OP_ATTENTION, .type = 0, .n = 64, .m = 576, .k = 128, .heads = 32, .kv_type = IDEFICS_KV_F16, .causal = true},
        {.what = "attn vision 257x257", .op = IDF_OP_ATTENTION, .type = 0, .n = 257, .m = 257, .k = 80, .heads = 16, .kv_type = IDEFICS_KV_F32, .causal = false},
        {.what = "silu_mul 11008", .op = IDF_OP_SILU_MUL, .type = 0, .n = 1, .m = 0, .k = 11008},
        {.what = "add 4096", .op = IDF_OP_ADD, .type = 0, .n = 1, .m = 0, .k = 4096},
        {.what = "gelu 257x5120", .op = IDF_OP_GELU, .type = 0, .n = 257, .m = 0, .k = 5120},
    };
    printf("%-24s %10s %10s %10s %10s %9s %8s %9s\n", "op", "opencl", "resident", "cpu", "cpu-ref", "w MiB", "read/w",
           "GB/s");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const bcase *c = &cases[i];
        if ((quick && c->op == IDF_OP_MATMUL && c->n > 1 && c->type != IDFX_TYPE_F16) ||
            (filter && !strstr(c->what, filter)))
            continue;
        wt w = {0};
        if (c->op == IDF_OP_MATMUL)
            w = make_w(c->type, c->m, c->k);
        const int64_t row = c->op == IDF_OP_ATTENTION ? (int64_t)c->heads * c->k : c->k;
        const size_t nx = (size_t)(c->n * (c->op == IDF_OP_ROPE ? (int64_t)c->heads * c->k : row));
        const size_t ny = c->op == IDF_OP_MATMUL ? (size_t)(c->n * c->m) : nx;
        float *x = rnd(nx, 1.0f), *y = rnd(ny, 1.0f), *g = rnd((size_t)c->k, 1.0f);
        void *kv = NULL;
        if (c->op == IDF_OP_ATTENTION) {
            const size_t ne = (size_t)(2 * c->m * row);
            float *f = rnd(ne, 1.0f);
            if (c->kv_type == IDEFICS_KV_F16) {
                uint16_t *h = malloc(ne * 2);
                for (size_t j = 0; j < ne; j++)
                    h[j] = idfx_fp32_to_fp16(f[j]);
                free(f);
                kv = h;
            } else {
                kv = f;
            }
        }
        idf_ocl_backend_stats_reset(ob);
        const double to = time_case(ob, c, &w, x, y, kv, g);
        const idf_ocl_op_stats *s = &idf_ocl_backend_stats(ob)[c->op];
        /* the same call with x, y, g and kv registered (device-resident, as the
         * forward pass runs): a fresh backend per case, freed before the buffers */
        double tres = NAN;
        idf_backend *rb = NULL;
        idf_err rerr;
        if (idf_backend_opencl_create(dev, NULL, &rb, &rerr) == IDEFICS_OK) {
            const size_t kvb = c->op == IDF_OP_ATTENTION
                                   ? (size_t)(2 * c->m * row) * (c->kv_type == IDEFICS_KV_F32 ? 4 : 2)
                                   : 0;
            if (rb->register_host(rb->ctx, x, nx * 4) == IDEFICS_OK && rb->register_host(rb->ctx, y, ny * 4) == IDEFICS_OK &&
                rb->register_host(rb->ctx, g, (size_t)c->k * 4) == IDEFICS_OK &&
                (!kv || rb->register_host(rb->ctx, kv, kvb) == IDEFICS_OK))
                tres = time_case_out(rb, c, &w, x, y, kv, g, ny);
            rb->free(rb);
        }
        const double tf = time_case(fast, c, &w, x, y, kv, g);
        const double tr = quick && c->op == IDF_OP_MATMUL ? NAN : time_case(ref, c, &w, x, y, kv, g);
        const double per_call_rd = s->calls ? (double)s->bytes_rd / (double)s->calls : 0;
        const double per_call_w = s->calls ? (double)s->w_bytes / (double)s->calls : 0;
        char ratio[16] = "-";
        if (w.nbytes)
            snprintf(ratio, sizeof ratio, "%.3f", per_call_w / (double)w.nbytes);
        printf("%-24s %10.3f %10.3f %10.3f %10.3f %9.2f %8s %9.2f\n", c->what, to, tres, tf, tr,
               (double)w.nbytes / 1048576.0, ratio, per_call_rd / (to * 1e6));
        free(w.bytes);
        free(x);
        free(y);
        free(g);
        free(kv);
    }
    if (clblast)
        clblast_vs_ours(dev, ob);
    ob->free(ob);
    if (ref)
        ref->free(ref);
    if (fast)
        fast->free(fast);
    idf_ocl_device_free(dev);
    return 0;
}
