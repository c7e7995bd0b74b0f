/*
 * bench_main.c - idefics-bench: how fast one .idfx model runs on this machine.
 *
 * Reports load time, image encode time (vision tower + perceiver + cross K/V;
 * skipped for text-only models), prefill tok/s for each --pp size, decode tok/s
 * (--tg tokens, one at a time), time to first token for one image plus a
 * 20-token question, peak and anonymous RSS, and the effective bandwidth of
 * decode (weight bytes read per token x tok/s) next to this machine's memory
 * bandwidth from its own copy test (in a child process right before and right
 * after each decode run, so its buffers do not count in the RSS figures and
 * it sees the machine decode saw). Token ids and pixels are random: speed does not depend on
 * them. Each measurement is repeated -r times; the median is reported, with the
 * range. Uses runtime internals (forward.h) to evaluate exact token counts.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "forward.h"
#include "images.h"
#include "parallel.h"
#include "sched.h"
#include "idefics.h"
#include "model.h"
#include "platform.h"
#include "quant.h"

typedef struct opts {
    const char *model;
    int threads, ctx, reps, tg;
    int pp[8], n_pp;
    idefics_backend backend;
    idefics_kv_type kv;
    bool json;
    bool no_mmap;  /* --no-mmap: idefics_model_params.use_mmap = false (llama-bench -mmp 0) */
    bool no_image; /* --no-image: skip image encode and TTFT (decode profiling) */
    int par[BENCH_MAX_PAR], n_par; /* --parallel 1,2,4,8: batched decode widths (issue 11) */
    bool par_only;                 /* --parallel-only: skip image, prefill and the single decode */
    int sched_prompt;              /* --sched P: prefill scheduling through idefics_batch, P-token prompts */
    int depth[8], n_depth; /* -d: context depths (tokens already in the cache) for the depth runs */
    int images[8], n_images; /* --images 1,2,4: batched vs one-by-one image encode, and nothing else */
} opts;

static void usage(FILE *f) {
    fprintf(f, "usage: idefics-bench -m MODEL.idfx [-t THREADS] [--backend cpu|cpu-ref|auto] [--ctx N (default 2048 or the model's maximum)]\n"
               "                     [-p 64,512] [-n 64] [-r REPS] [--kv f16|f32|q8] [--no-image] [--no-mmap] [--json]\n"
               "                     [--parallel 1,2,4,8 (aggregate decode of B sequences stepped together)] [--parallel-only]\n"
               "                     [--sched PROMPT_TOKENS (2 x width requests joining a batch of the largest --parallel width)]\n"
               "                     [--images 1,2,4 (encode N images batched vs one by one; only this)]\n"
               "                     [-d 0,512,1700 (depths: prefill and decode after that many tokens)]\n");
}

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct stat3 {
    double med, lo, hi;
} stat3;

static stat3 stats(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return (stat3){n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]), v[0], v[n - 1]};
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 16);
}

static uint64_t wbytes(const idf_weight *w) {
    if (!w->data)
        return 0;
    const uint64_t dims[2] = {(uint64_t)w->rows, (uint64_t)w->cols};
    uint64_t n = 0, unit = 0;
    return idfx_tensor_nbytes(w->type, w->layout, w->tile_rows, 2, dims, &n, &unit) ? n : 0;
}

/* Bytes of weights one decode step reads without images in context: every
 * decoder layer, the dense half of each gated block, the heads. */
static uint64_t decode_bytes(const idefics_model *m) {
    const idf_config *c = &m->cfg;
    const idf_weights *w = m->w;
    uint64_t b = wbytes(&w->lm_head) + (c->additional_vocab ? wbytes(&w->lm_add) : 0);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const idf_decoder_layer *L = &w->dl[l];
        b += wbytes(&L->q) + wbytes(&L->k) + wbytes(&L->v) + wbytes(&L->o) + wbytes(&L->gate) + wbytes(&L->up) +
             wbytes(&L->down);
    }
    for (uint32_t j = 0; w->xb && j < c->n_cross; j++)
        b += wbytes(&w->xb[j].gate) + wbytes(&w->xb[j].up) + wbytes(&w->xb[j].down);
    return b;
}

/* Copy bandwidth: `threads` threads each memcpy their slice of a 256 MiB
 * buffer; bytes counted = read + written. Also a read-only pass. */
typedef struct bw_job {
    uint8_t *src, *dst;
    size_t slice;
    int64_t sink[64];
} bw_job;

static void copy_task(void *ctx, int64_t i, int tid) {
    (void)tid;
    bw_job *j = ctx;
    memcpy(j->dst + (size_t)i * j->slice, j->src + (size_t)i * j->slice, j->slice);
}

static void read_task(void *ctx, int64_t i, int tid) {
    (void)tid;
    bw_job *j = ctx;
    const uint64_t *p = (const uint64_t *)(j->src + (size_t)i * j->slice);
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t e = 0; e + 4 <= j->slice / 8; e += 4) {
        s0 += p[e];
        s1 += p[e + 1];
        s2 += p[e + 2];
        s3 += p[e + 3];
    }
    j->sink[i % 64] = (int64_t)(s0 + s1 + s2 + s3);
}

static void mem_bw(int threads, int reps, double *copy_gbs, double *read_gbs) {
    const size_t total = (size_t)256 << 20;
    bw_job j = {malloc(total), malloc(total), total / (size_t)threads, {0}};
    *copy_gbs = *read_gbs = 0;
    if (!j.src || !j.dst) {
        free(j.src);
        free(j.dst);
        return;
    }
    memset(j.src, 1, total);
    memset(j.dst, 2, total);
    idf_pool *pool = idf_pool_create(threads, NULL, NULL, NULL);
    for (int r = 0; r < reps + 1; r++) {
        double t0 = idf_time_ms();
        idf_pool_run(pool, threads, copy_task, &j);
        double t1 = idf_time_ms();
        idf_pool_run(pool, threads, read_task, &j);
        double t2 = idf_time_ms();
        const double c = 2.0 * (double)total / ((t1 - t0) * 1e6), rd = (double)total / ((t2 - t1) * 1e6);
        if (c > *copy_gbs)
            *copy_gbs = c;
        if (rd > *read_gbs)
            *read_gbs = rd;
    }
    idf_pool_free(pool);
    free(j.src);
    free(j.dst);
}

/* The copy test in a child process, so that its 512 MiB of buffers never count
 * in this process's peak RSS and it can run next to each decode measurement:
 * on a shared machine the bandwidth left to us moves by 1.5x from minute to
 * minute (measured here: copy 40-74 GB/s within an hour), so decode is
 * compared with the copy test taken right before and right after it. Falls
 * back to running in-process where fork fails. */
static void mem_bw_isolated(int threads, int reps, double *copy_gbs, double *read_gbs) {
    int fd[2];
    if (pipe(fd) == 0) {
        fflush(stdout);
        fflush(stderr);
        const pid_t pid = fork();
        if (pid == 0) {
            double r[2];
            close(fd[0]);
            mem_bw(threads, reps, &r[0], &r[1]);
            _exit(write(fd[1], r, sizeof r) == (ssize_t)sizeof r ? 0 : 1);
        }
        close(fd[1]);
        double r[2] = {0, 0};
        const bool ok = pid > 0 && read(fd[0], r, sizeof r) == (ssize_t)sizeof r;
        close(fd[0]);
        if (pid > 0)
            waitpid(pid, NULL, 0);
        if (ok) {
            *copy_gbs = r[0];
            *read_gbs = r[1];
            return;
        }
    }
    mem_bw(threads, reps, copy_gbs, read_gbs);
}

static int parse(int argc, char **argv, opts *o) {
    *o = (opts){.threads = 0, .ctx = 0, .reps = 3, .tg = 64, .pp = {64, 512}, .n_pp = 2,
                .backend = IDEFICS_BACKEND_AUTO, .kv = IDEFICS_KV_F16};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            o->json = true;
        } else if (!strcmp(a, "--parallel-only")) {
            o->par_only = true;
        } else if (!strcmp(a, "--no-image")) {
            o->no_image = true;
        } else if (!strcmp(a, "--no-mmap")) {
            o->no_mmap = true;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!v) {
            if (!o->model && a[0] != '-') {
                o->model = a;
                continue;
            }
            fprintf(stderr, "idefics-bench: %s needs a value\n", a);
            return 2;
        } else if (!strcmp(a, "--sched")) {
            o->sched_prompt = atoi(v), i++;
        } else if (!strcmp(a, "-m")) {
            o->model = v, i++;
        } else if (!strcmp(a, "-t")) {
            o->threads = atoi(v), i++;
        } else if (!strcmp(a, "--ctx")) {
            o->ctx = atoi(v), i++;
        } else if (!strcmp(a, "-r")) {
            o->reps = atoi(v), i++;
        } else if (!strcmp(a, "-n")) {
            o->tg = atoi(v), i++;
        } else if (!strcmp(a, "-p")) {
            o->n_pp = 0;
            for (char *s = argv[++i]; *s && o->n_pp < 8;) {
                o->pp[o->n_pp++] = (int)strtol(s, &s, 10);
                if (*s == ',')
                    s++;
                else if (*s)
                    return fprintf(stderr, "idefics-bench: bad -p list\n"), 2;
            }
        } else if (!strcmp(a, "--parallel")) {
            o->n_par = 0;
            for (char *s = argv[++i]; *s;) {
                const long b = strtol(s, &s, 10);
                if (b < 1 || b > 64 || o->n_par == BENCH_MAX_PAR || (*s && *s != ','))
                    return fprintf(stderr, "idefics-bench: bad --parallel list (up to %d widths in 1..64)\n",
                                   BENCH_MAX_PAR), 2;
                o->par[o->n_par++] = (int)b;
                if (*s == ',')
                    s++;
            }
        } else if (!strcmp(a, "--images")) {
            o->n_images = 0;
            for (char *s = argv[++i]; *s;) {
                const long n = strtol(s, &s, 10);
                if (n < 1 || n > BENCH_MAX_IMAGES || o->n_images == 8 || (*s && *s != ','))
                    return fprintf(stderr, "idefics-bench: bad --images list (up to 8 counts in 1..%d)\n",
                                   BENCH_MAX_IMAGES), 2;
                o->images[o->n_images++] = (int)n;
                if (*s == ',')
                    s++;
            }
        } else if (!strcmp(a, "-d")) {
            /* as llama-bench -d: each -p prefill and the -n decode run again
             * after this many tokens are already in the context */
            o->n_depth = 0;
            for (char *s = argv[++i]; *s && o->n_depth < 8;) {
                o->depth[o->n_depth++] = (int)strtol(s, &s, 10);
                if (o->depth[o->n_depth - 1] < 0)
                    return fprintf(stderr, "idefics-bench: bad -d list\n"), 2;
                if (*s == ',')
                    s++;
                else if (*s)
                    return fprintf(stderr, "idefics-bench: bad -d list\n"), 2;
            }
        } else if (!strcmp(a, "--backend")) {
            i++;
            if (!strcmp(v, "cpu"))
                o->backend = IDEFICS_BACKEND_CPU;
            else if (!strcmp(v, "cpu-ref"))
                o->backend = IDEFICS_BACKEND_CPU_REF;
            else if (!strcmp(v, "opencl"))
                o->backend = IDEFICS_BACKEND_OPENCL;
            else if (!strcmp(v, "auto"))
                o->backend = IDEFICS_BACKEND_AUTO;
            else
                return fprintf(stderr, "idefics-bench: unknown backend %s\n", v), 2;
        } else if (!strcmp(a, "--kv")) {
            i++;
            o->kv = !strcmp(v, "f32") ? IDEFICS_KV_F32 : !strcmp(v, "q8") ? IDEFICS_KV_Q8 : IDEFICS_KV_F16;
        } else if (!o->model && a[0] != '-') {
            o->model = a;
        } else {
            fprintf(stderr, "idefics-bench: unknown option %s\n", a);
            return 2;
        }
    }
    if (!o->model || o->reps < 1 || o->tg < 0 || o->ctx < 0) {
        usage(stderr);
        return 2;
    }
    if (o->threads <= 0)
        o->threads = idf_cpu_count();
    if (o->par_only) {
        o->no_image = true;
        o->n_pp = 0;
    }
    return 0;
}

int main(int argc, char **argv) {
    opts o;
    const int pr = parse(argc, argv, &o);
    if (pr)
        return pr;
    char err[512];
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = o.backend;
    mp.n_threads = o.threads;
    mp.use_mmap = !o.no_mmap;
    idefics_model *m = NULL;
    double t0 = idf_time_ms();
    if (idefics_model_load(o.model, &mp, &m, err, sizeof err) != IDEFICS_OK) {
        fprintf(stderr, "idefics-bench: %s\n", err);
        return 1;
    }
    if (o.ctx == 0) { /* default: 2048, or the model's maximum when smaller */
        idefics_model_info mi;
        idefics_model_get_info(m, &mi);
        o.ctx = mi.n_ctx_max > 0 && mi.n_ctx_max < 2048 ? mi.n_ctx_max : 2048;
    }
    idf_state *st = NULL;
    idf_err e;
    idf_err_clear(&e);
    if (idf_state_create(m, o.ctx, o.kv, o.threads, &st, &e) != IDEFICS_OK) {
        fprintf(stderr, "idefics-bench: %s\n", e.msg);
        idefics_model_free(m);
        return 1;
    }
    const double load_ms = idf_time_ms() - t0;
    const idf_config *c = &m->cfg;
    if (o.n_images) {
        if (!m->w->vl || c->v_layers == 0) {
            fprintf(stderr, "idefics-bench: --images: the model has no vision tower\n");
            idf_state_free(st);
            idefics_model_free(m);
            return 1;
        }
        printf("model %s, backend %s, %d threads, vision batch %d (IDF_VISION_BATCH; 1 with low_memory)\n", o.model,
               idf_state_backend_name(st), o.threads, IDF_VISION_BATCH);
        const int rc = bench_images(m, st, o.images, o.n_images, o.reps);
        idf_state_free(st);
        idefics_model_free(m);
        return rc;
    }
    const bool vision = m->w->vl && c->v_layers > 0 && !o.no_image;
    float *logits = malloc((size_t)c->n_vocab * sizeof(float) * 1);
    int max_pp = 1;
    for (int i = 0; i < o.n_pp; i++)
        max_pp = o.pp[i] > max_pp ? o.pp[i] : max_pp;
    int32_t *ids = malloc((size_t)(max_pp + o.tg + 256) * sizeof(int32_t));
    int32_t *img = malloc((size_t)(max_pp + o.tg + 256) * sizeof(int32_t));
    double *v = malloc((size_t)o.reps * sizeof(double));
    /* per decode run: the copy and read tests next to it, and effective / copy */
    double *vcopy = malloc((size_t)o.reps * sizeof(double));
    double *vread = malloc((size_t)o.reps * sizeof(double));
    double *vfrac = malloc((size_t)o.reps * sizeof(double));
    if (!logits || !ids || !img || !v || !vcopy || !vread || !vfrac)
        return fprintf(stderr, "idefics-bench: out of memory\n"), 1;
    for (int i = 0; i < max_pp + o.tg + 256; i++)
        ids[i] = (int32_t)(rnd() % c->vocab_size);
    int rc = 0;
#define CHECK(x)                                                                                                       \
    do {                                                                                                               \
        if ((x) != IDEFICS_OK) {                                                                                       \
            fprintf(stderr, "idefics-bench: %s\n", e.msg);                                                             \
            rc = 1;                                                                                                    \
            goto done;                                                                                                 \
        }                                                                                                              \
    } while (0)

    /* warm-up: one token touches every decode weight once */
    CHECK(idf_state_eval(st, ids, NULL, 1, logits, false, &e));
    idf_state_reset(st);

    stat3 enc = {0}, ttft = {0}, pp[8] = {{0}}, tg = {0}, copy3 = {0}, read3 = {0}, frac3 = {0};
    if (vision) {
        const size_t np = (size_t)c->v_channels * c->v_image_size * c->v_image_size;
        float *pix = malloc(np * sizeof(float));
        for (size_t i = 0; i < np; i++)
            pix[i] = (float)(rnd() % 2001) / 1000.0f - 1.0f;
        for (int r = 0; r < o.reps; r++) {
            idf_state_reset(st);
            double a = idf_time_ms();
            CHECK(idf_state_add_image(st, pix, NULL, &e));
            v[r] = idf_time_ms() - a;
        }
        enc = stats(v, o.reps);
        /* TTFT: image + its tokens (<fake_image> <image>*n <fake_image>) + a 20-token question */
        const int n_q = (int)m->n_img_tokens + 2 + 20;
        if (n_q <= o.ctx) {
            for (int i = 0; i < n_q; i++)
                img[i] = 0;
            for (int r = 0; r < o.reps; r++) {
                idf_state_reset(st);
                double a = idf_time_ms();
                CHECK(idf_state_add_image(st, pix, NULL, &e));
                CHECK(idf_state_eval(st, ids, img, n_q, logits, false, &e));
                v[r] = idf_time_ms() - a;
            }
            ttft = stats(v, o.reps);
        }
        free(pix);
        idf_state_reset(st);
    }
    for (int p = 0; p < o.n_pp; p++) {
        if (o.pp[p] > o.ctx)
            continue;
        for (int r = 0; r < o.reps; r++) {
            idf_state_reset(st);
            double a = idf_time_ms();
            CHECK(idf_state_eval(st, ids, NULL, o.pp[p], logits, false, &e));
            v[r] = o.pp[p] / ((idf_time_ms() - a) / 1e3);
        }
        pp[p] = stats(v, o.reps);
    }
    const double wb = (double)decode_bytes(m);
    if (o.tg > 0 && o.tg + 1 <= o.ctx && !o.par_only) {
        for (int r = 0; r < o.reps; r++) {
            double c0, r0, c1, r1;
            mem_bw_isolated(o.threads, 2, &c0, &r0);
            idf_state_reset(st);
            CHECK(idf_state_eval(st, ids, NULL, 1, logits, false, &e));
            double a = idf_time_ms();
            for (int t = 0; t < o.tg; t++)
                CHECK(idf_state_eval(st, ids + 1 + t, NULL, 1, logits, false, &e));
            v[r] = o.tg / ((idf_time_ms() - a) / 1e3);
            mem_bw_isolated(o.threads, 2, &c1, &r1);
            vcopy[r] = (c0 + c1) / 2;
            vread[r] = (r0 + r1) / 2;
            vfrac[r] = vcopy[r] > 0 ? wb * v[r] / 1e9 / vcopy[r] : 0;
        }
        tg = stats(v, o.reps);
        copy3 = stats(vcopy, o.reps);
        read3 = stats(vread, o.reps);
        frac3 = stats(vfrac, o.reps);
    }
    par_result par[BENCH_MAX_PAR];
    if (o.n_par) { /* after the single-sequence figures, so their peak RSS is not raised by B states */
        char perr[512] = "";
        if (bench_parallel(m, o.ctx, o.kv, o.threads, o.tg, o.reps, o.par, o.n_par, par, perr, sizeof perr)) {
            fprintf(stderr, "idefics-bench: %s\n", perr);
            rc = 1;
            goto done;
        }
    }
    static const int sched_chunks[] = {0, 8, 32};
    sched_result sch[3];
    const int n_sch = o.sched_prompt > 0 ? 3 : 0;
    if (n_sch) {
        int wmax = 1;
        for (int k = 0; k < o.n_par; k++)
            wmax = o.par[k] > wmax ? o.par[k] : wmax;
        char serr[512] = "";
        if (bench_sched(m, o.threads, o.ctx, wmax, 2 * wmax, o.sched_prompt, o.tg, sched_chunks, n_sch, sch, serr,
                        sizeof serr)) {
            fprintf(stderr, "idefics-bench: %s\n", serr);
            rc = 1;
            goto done;
        }
        for (int k = 0; k < n_sch; k++)
            fprintf(o.json ? stderr : stdout,
                    "sched width %d, %d requests of ~%d prompt + %d new tokens, prefill_chunk %2d: %.2f s, %.3f gen "
                    "tok/s, TTFT mean %.0f ms max %.0f ms, token gap mean %.0f ms max %.0f ms\n",
                    wmax, 2 * wmax, o.sched_prompt, o.tg, sch[k].chunk, sch[k].wall_s, sch[k].gen_tok_s,
                    sch[k].ttft_mean_ms, sch[k].ttft_max_ms, sch[k].gap_mean_ms, sch[k].gap_max_ms);
    }
    /* Depth runs (-d): the context is filled with D tokens once (untimed);
     * each repetition truncates back to D and times a -p prefill, or -n
     * single-token decode steps, on top of it. */
    stat3 dpp[8][8] = {{{0}}}, dtg[8] = {{0}};
    for (int d = 0; d < o.n_depth; d++) {
        const int D = o.depth[d];
        int32_t *fill = malloc((size_t)(D + 1) * sizeof(int32_t));
        if (!fill)
            return fprintf(stderr, "idefics-bench: out of memory\n"), 1;
        for (int i = 0; i < D; i++)
            fill[i] = (int32_t)(rnd() % c->vocab_size);
        idf_state_reset(st);
        const bool fits_tg = o.tg > 0 && D + o.tg <= o.ctx;
        const idefics_status fst = D > 0 && D < o.ctx ? idf_state_eval(st, fill, NULL, D, logits, false, &e) : IDEFICS_OK;
        free(fill);
        CHECK(fst);
        for (int p = 0; p < o.n_pp && D < o.ctx; p++) {
            if (D + o.pp[p] > o.ctx)
                continue;
            for (int r = 0; r < o.reps; r++) {
                idf_state_truncate(st, D);
                double a = idf_time_ms();
                CHECK(idf_state_eval(st, ids, NULL, o.pp[p], logits, false, &e));
                v[r] = o.pp[p] / ((idf_time_ms() - a) / 1e3);
            }
            dpp[d][p] = stats(v, o.reps);
        }
        if (fits_tg) {
            for (int r = 0; r < o.reps; r++) {
                idf_state_truncate(st, D);
                double a = idf_time_ms();
                for (int t = 0; t < o.tg; t++)
                    CHECK(idf_state_eval(st, ids + 1 + t, NULL, 1, logits, false, &e));
                v[r] = o.tg / ((idf_time_ms() - a) / 1e3);
            }
            dtg[d] = stats(v, o.reps);
        }
    }
    {
        const double peak_mb = (double)idf_peak_rss_bytes() / 1048576.0;
        const double anon_mb = (double)idf_anon_rss_bytes() / 1048576.0;
        double copy_bw = copy3.med, read_bw = read3.med;
        if (!(o.tg > 0 && o.tg + 1 <= o.ctx) && !o.par_only)
            mem_bw_isolated(o.threads, 3, &copy_bw, &read_bw);
        const double eff = wb * tg.med / 1e9;
        idefics_model_info info;
        idefics_model_get_info(m, &info);
        if (o.json)
            printf("{\"model\": \"%s\", \"backend\": \"%s\", \"kernels\": \"%s\", \"threads\": %d, "
                   "\"ctx\": %d, \"reps\": %d, \"file_bytes\": %lld,\n \"mmap\": %s, \"load_ms\": %.1f,",
                   o.model, info.backend, idf_state_backend_name(st), o.threads, o.ctx, o.reps,
                   (long long)info.file_bytes, info.mmap ? "true" : "false", load_ms);
        char enc_s[32] = "null", ttft_s[32] = "null";
        if (vision) {
            snprintf(enc_s, sizeof enc_s, "%.1f", enc.med);
            snprintf(ttft_s, sizeof ttft_s, "%.1f", ttft.med);
        }
        if (o.json) {
            printf(" \"image_encode_ms\": %s, \"ttft_ms\": %s,\n \"prefill_tok_s\": {", enc_s, ttft_s);
            for (int p = 0; p < o.n_pp; p++)
                printf("%s\"pp%d\": {\"median\": %.2f, \"min\": %.2f, \"max\": %.2f}", p ? ", " : "", o.pp[p],
                       pp[p].med, pp[p].lo, pp[p].hi);
            printf("},\n \"decode_tok_s\": {\"tg%d\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}},\n", o.tg,
                   tg.med, tg.lo, tg.hi);
            if (o.n_par) {
                printf(" \"decode_tok_s_parallel\": {");
                for (int k = 0; k < o.n_par; k++)
                    printf("%s\"%d\": %.3f", k ? ", " : "", par[k].width, par[k].agg_tok_s);
                printf("},\n \"decode_parallel\": {");
                for (int k = 0; k < o.n_par; k++)
                    printf("%s\n  \"%d\": {\"aggregate_tok_s\": %.3f, \"aggregate_range\": [%.3f, %.3f], "
                           "\"per_seq_tok_s\": %.3f, \"step_ms\": %.1f, \"peak_rss_mb\": %.1f, "
                           "\"anon_rss_mb\": %.1f, \"kv_written_mb\": %.1f, \"speedup\": %.3f, \"cpu_ms_per_tok\": %.1f}",
                           k ? "," : "", par[k].width, par[k].agg_tok_s, par[k].agg_lo, par[k].agg_hi,
                           par[k].per_seq_tok_s, par[k].step_ms, par[k].peak_rss_mb, par[k].anon_rss_mb, par[k].kv_mb,
                           par[k].agg_tok_s / par[0].agg_tok_s, par[k].cpu_ms_per_tok);
                printf("},\n");
            }
            if (o.n_depth > 0) { /* -d: per depth, {"d512": {"pp512": {...}}} and {"d512": {"tg32": {...}}} */
                printf(" \"prefill_tok_s_depth\": {");
                for (int d = 0; d < o.n_depth; d++) {
                    printf("%s\"d%d\": {", d ? ", " : "", o.depth[d]);
                    bool first = true;
                    for (int p = 0; p < o.n_pp; p++)
                        if (dpp[d][p].med > 0) {
                            printf("%s\"pp%d\": {\"median\": %.2f, \"min\": %.2f, \"max\": %.2f}", first ? "" : ", ",
                                   o.pp[p], dpp[d][p].med, dpp[d][p].lo, dpp[d][p].hi);
                            first = false;
                        }
                    printf("}");
                }
                printf("},\n \"decode_tok_s_depth\": {");
                for (int d = 0; d < o.n_depth; d++) {
                    printf("%s\"d%d\": {", d ? ", " : "", o.depth[d]);
                    if (dtg[d].med > 0)
                        printf("\"tg%d\": {\"median\": %.3f, \"min\": %.3f, \"max\": %.3f}", o.tg, dtg[d].med,
                               dtg[d].lo, dtg[d].hi);
                    printf("}");
                }
                printf("},\n");
            }
            printf(" \"peak_rss_mb\": %.1f, \"anon_rss_mb\": %.1f, \"decode_weight_bytes\": %.0f, "
                   "\"effective_gb_s\": %.2f, \"mem_bw_gb_s\": %.2f, \"read_bw_gb_s\": %.2f, "
                   "\"mem_bw_gb_s_range\": [%.2f, %.2f],\n \"effective_over_copy\": %.3f, "
                   "\"effective_over_copy_range\": [%.3f, %.3f]}\n",
                   peak_mb, anon_mb, wb, eff, copy_bw, read_bw, copy3.lo, copy3.hi, frac3.med, frac3.lo, frac3.hi);
        } else {
            printf("model        %s (%.2f GB, backend %s, kernels %s, %d threads, ctx %d, %d reps)\n", o.model,
                   (double)info.file_bytes / 1e9, info.backend, idf_state_backend_name(st), o.threads, o.ctx, o.reps);
            printf("load         %.1f ms (to a ready session)\n", load_ms);
            if (vision) {
                printf("image encode %.1f ms (range %.1f .. %.1f)\n", enc.med, enc.lo, enc.hi);
                printf("ttft         %.1f ms (image + %u image tokens + 22 text tokens)\n", ttft.med,
                       m->n_img_tokens);
            } else {
                printf("image encode skipped (text-only model)\n");
            }
            for (int p = 0; p < o.n_pp; p++)
                printf("pp%-10d %.2f tok/s (range %.2f .. %.2f)\n", o.pp[p], pp[p].med, pp[p].lo, pp[p].hi);
            printf("tg%-10d %.3f tok/s (range %.3f .. %.3f)\n", o.tg, tg.med, tg.lo, tg.hi);
            for (int d = 0; d < o.n_depth; d++) {
                for (int p = 0; p < o.n_pp; p++)
                    if (dpp[d][p].med > 0)
                        printf("pp%-5d @ d%-5d %.2f tok/s (range %.2f .. %.2f)\n", o.pp[p], o.depth[d], dpp[d][p].med,
                               dpp[d][p].lo, dpp[d][p].hi);
                if (dtg[d].med > 0)
                    printf("tg%-5d @ d%-5d %.3f tok/s (range %.3f .. %.3f)\n", o.tg, o.depth[d], dtg[d].med, dtg[d].lo,
                           dtg[d].hi);
            }
            printf("memory       peak RSS %.1f MB, anonymous RSS %.1f MB\n", peak_mb, anon_mb);
            printf("bandwidth    decode reads %.2f GB/token -> %.2f GB/s effective; copy test %.2f GB/s "
                   "(range %.2f .. %.2f), read test %.2f GB/s\n",
                   wb / 1e9, eff, copy_bw, copy3.lo, copy3.hi, read_bw);
            printf("             effective / copy test next to each decode run: %.0f%% (range %.0f%% .. %.0f%%)\n",
                   100.0 * frac3.med, 100.0 * frac3.lo, 100.0 * frac3.hi);
            for (int k = 0; k < o.n_par; k++)
                printf("parallel %-3d aggregate %.3f tok/s (range %.3f .. %.3f, x%.2f of width %d), per sequence "
                       "%.3f tok/s, step %.1f ms, peak RSS %.1f MB, anon RSS %.1f MB, KV written %.1f MB, CPU %.1f ms/token\n",
                       par[k].width, par[k].agg_tok_s, par[k].agg_lo, par[k].agg_hi,
                       par[k].agg_tok_s / par[0].agg_tok_s, par[0].width, par[k].per_seq_tok_s, par[k].step_ms,
                       par[k].peak_rss_mb, par[k].anon_rss_mb, par[k].kv_mb, par[k].cpu_ms_per_tok);
        }
    }
done:
    free(v);
    free(vcopy);
    free(vread);
    free(vfrac);
    free(ids);
    free(img);
    free(logits);
    idf_state_free(st);
    idefics_model_free(m);
    return rc;
}
