/*
 * kl_main.c - idefics-perplexity: how far one model file's next-token
 * distributions are from a reference's, like llama.cpp's
 * `llama-perplexity --kl-divergence` (issue 11, point 6).
 *
 *   idefics-perplexity -m MODEL.idfx [--backend cpu|cpu-ref|opencl]
 *                      [--ref REF.idfx] [--ref-backend cpu-ref|cpu|opencl]
 *                      --questions FILE.tsv [--images DIR] [-t THREADS] [--json]
 *                      [--fixture-format]
 *
 * The reference is REF.idfx (e.g. the F32 file of the same checkpoint) on
 * --ref-backend, default: the same MODEL file on cpu-ref (the exact path for
 * the stored weights). FILE.tsv holds held-out questions, one per line:
 *   image \t type \t question \t answer [\t ...]     ('#' lines are comments)
 * (tests/fixtures/demo/questions.tsv's format). Each becomes one conversation
 * through the public prompt calls (image, user turn, then the answer as text;
 * --fixture-format: "User:" image question<EOU> "\nAssistant: " answer<EOU>,
 * the format tests/fixtures/models/tiny-trained was trained on),
 * evaluated by both models with logits at every position (teacher forcing, so
 * both see the same tokens). Per text position (not predicting or inside the
 * image placeholders): KL(ref || model) of the softmaxed
 * logits, and whether the argmaxes agree. Printed: positions, mean, median,
 * p99 and max KL, top-1 agreement, and each model's mean negative
 * log-likelihood of the next token (its perplexity).
 * Uses runtime internals (forward.h, image.h) for all-position logits.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "forward.h"
#include "idefics.h"
#include "image.h"
#include "model.h"
#include "prompt.h"

typedef struct side {
    idefics_model *m;
    idf_state *st;
    const char *path, *backend;
} side;

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static idefics_backend parse_backend(const char *s) {
    return !strcmp(s, "cpu-ref") ? IDEFICS_BACKEND_CPU_REF
           : !strcmp(s, "cpu")   ? IDEFICS_BACKEND_CPU
           : !strcmp(s, "opencl") ? IDEFICS_BACKEND_OPENCL
                                  : (idefics_backend)-1;
}

static int open_side(side *sd, int threads, int n_ctx) {
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = parse_backend(sd->backend);
    mp.n_threads = threads;
    char err[512];
    if ((int)mp.backend < 0) return fprintf(stderr, "idefics-perplexity: unknown backend %s\n", sd->backend), 1;
    if (idefics_model_load(sd->path, &mp, &sd->m, err, sizeof err) != IDEFICS_OK)
        return fprintf(stderr, "idefics-perplexity: %s: %s\n", sd->path, err), 1;
    idf_err e;
    idf_err_clear(&e);
    if (idf_state_create(sd->m, n_ctx, IDEFICS_KV_F32, threads, &sd->st, &e) != IDEFICS_OK)
        return fprintf(stderr, "idefics-perplexity: %s\n", e.msg), 1;
    return 0;
}

/* log-softmax of n logits into out (double) */
static void log_softmax(const float *l, int n, double *out) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < n; i++) s += exp((double)l[i] - mx);
    const double lse = mx + log(s);
    for (int i = 0; i < n; i++) out[i] = (double)l[i] - lse;
}

static int argmax(const float *l, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

int main(int argc, char **argv) {
    side a = {.backend = "cpu"}, r = {.backend = "cpu-ref"};
    const char *tsv = NULL, *imgdir = NULL;
    int threads = 2;
    bool json = false, fixture_fmt = false;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--json")) { json = true; continue; }
        if (!strcmp(k, "--fixture-format")) { fixture_fmt = true; continue; }
        if (!v) return fprintf(stderr, "idefics-perplexity: %s needs a value (see the comment atop kl_main.c)\n", k), 2;
        i++;
        if (!strcmp(k, "-m")) a.path = v;
        else if (!strcmp(k, "--backend")) a.backend = v;
        else if (!strcmp(k, "--ref")) r.path = v;
        else if (!strcmp(k, "--ref-backend")) r.backend = v;
        else if (!strcmp(k, "--questions")) tsv = v;
        else if (!strcmp(k, "--images")) imgdir = v;
        else if (!strcmp(k, "-t")) threads = atoi(v);
        else return fprintf(stderr, "idefics-perplexity: unknown option %s\n", k), 2;
    }
    if (!a.path || !tsv) {
        fprintf(stderr, "usage: idefics-perplexity -m MODEL.idfx [--backend cpu|cpu-ref|opencl] [--ref REF.idfx] "
                        "[--ref-backend cpu-ref] --questions FILE.tsv [--images DIR] [-t N] [--json]\n");
        return 2;
    }
    if (!r.path) r.path = a.path;
    char dirbuf[4096];
    if (!imgdir) {
        snprintf(dirbuf, sizeof dirbuf, "%s", tsv);
        char *slash = strrchr(dirbuf, '/');
        if (slash) *slash = '\0';
        else snprintf(dirbuf, sizeof dirbuf, ".");
        imgdir = dirbuf;
    }
    int n_ctx = 512;
    {   /* the model's context, when shorter */
        idefics_model_params mp = idefics_model_default_params();
        mp.backend = IDEFICS_BACKEND_CPU_REF;
        idefics_model *probe = NULL;
        char perr[512];
        if (idefics_model_load(a.path, &mp, &probe, perr, sizeof perr) != IDEFICS_OK)
            return fprintf(stderr, "idefics-perplexity: %s: %s\n", a.path, perr), 1;
        idefics_model_info pi;
        idefics_model_get_info(probe, &pi);
        if (pi.n_ctx_max > 0 && pi.n_ctx_max < n_ctx) n_ctx = pi.n_ctx_max;
        idefics_model_free(probe);
    }
    if (open_side(&a, threads, n_ctx) || open_side(&r, threads, n_ctx)) return 1;
    const idf_config *c = &a.m->cfg;
    if (r.m->cfg.n_vocab != c->n_vocab || r.m->cfg.v_image_size != c->v_image_size)
        return fprintf(stderr, "idefics-perplexity: the reference is another model (vocabulary or image size)\n"), 1;
    const int V = (int)c->n_vocab;
    FILE *f = fopen(tsv, "r");
    if (!f) return fprintf(stderr, "idefics-perplexity: cannot open %s\n", tsv), 1;

    float *la = malloc((size_t)n_ctx * V * sizeof(float)), *lr = malloc((size_t)n_ctx * V * sizeof(float));
    double *pa = malloc((size_t)V * sizeof(double)), *pr = malloc((size_t)V * sizeof(double));
    size_t cap = 1 << 16, n_kl = 0;
    double *kl = malloc(cap * sizeof(double));
    int32_t *img = malloc((size_t)n_ctx * sizeof(int32_t));
    const int S = (int)c->v_image_size;
    float *chw = malloc((size_t)3 * S * S * sizeof(float));
    if (!la || !lr || !pa || !pr || !kl || !img || !chw) return fprintf(stderr, "idefics-perplexity: out of memory\n"), 1;
    double nll_a = 0, nll_r = 0;
    long agree = 0, n_conv = 0;
    char line[4096];
    int rc = 0;
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = 1;
    idefics_session *sess = NULL;
    char err[512];
    if (idefics_session_create(a.m, &sp, &sess, err, sizeof err) != IDEFICS_OK)
        return fprintf(stderr, "idefics-perplexity: %s\n", err), 1;
    idf_err e;
    idf_err_clear(&e);
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0] || line[0] == '#') continue;
        char *fld[5] = {0};
        int nf = 0;
        for (char *p = line; p && nf < 5; nf++) {
            fld[nf] = p;
            p = strchr(p, '\t');
            if (p) *p++ = '\0';
        }
        if (nf < 4) {
            fprintf(stderr, "idefics-perplexity: %s: a line with fewer than 4 tab-separated fields\n", tsv);
            rc = 1;
            break;
        }
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", imgdir, fld[0]);
        idefics_session_reset(sess);
        idefics_status ps;
        if (fixture_fmt) { /* the fixture models' training format (tools/reference/train_tiny_fixture.py) */
            char q[2048], ans[2048];
            snprintf(q, sizeof q, "%s<end_of_utterance>", fld[2]);
            snprintf(ans, sizeof ans, "\nAssistant: %s<end_of_utterance>", fld[3]);
            ps = idefics_add_text(sess, "User:");
            if (!ps) ps = idefics_add_image_file(sess, path);
            /* raw prompt text: <end_of_utterance> is the special token */
            if (!ps) ps = idefics_add_text_n(sess, q, strlen(q), IDEFICS_TEXT_SPECIAL);
            if (!ps) ps = idefics_add_text_n(sess, ans, strlen(ans), IDEFICS_TEXT_SPECIAL);
        } else {
            ps = idefics_add_image_file(sess, path);
            if (!ps) ps = idefics_add_user_turn(sess, fld[2]);
            if (!ps) ps = idefics_add_text(sess, fld[3]);
        }
        if (ps) {
            fprintf(stderr, "idefics-perplexity: %s: %s\n", path, idefics_session_last_error(sess));
            rc = 1;
            break;
        }
        const int32_t *ids;
        const int n = idefics_session_get_tokens(sess, &ids);
        idf_scan_state sc;
        idf_image_scan_init(&sc);
        idf_image_scan(&sc, ids, n, c->tok_image, c->tok_eos, 1, img);
        /* the image as the session preprocesses it */
        const idf_alloc al = {{0}};
        idf_image_limits lim = {.max_pixels = 40000000, .max_bytes = 64 << 20};
        idf_image im = {0}, rs = {0};
        if (idf_image_load_file(path, &lim, &al, &im, &e) || idf_image_resize_bicubic(&im, S, S, &al, &rs, &e)) {
            fprintf(stderr, "idefics-perplexity: %s: %s\n", path, e.msg);
            rc = 1;
            break;
        }
        idf_image_normalize(&rs, c->image_mean, c->image_std, chw);
        idf_image_free(&im, &al);
        idf_image_free(&rs, &al);
        side *sides[2] = {&a, &r};
        float *outs[2] = {la, lr};
        for (int k = 0; k < 2 && !rc; k++) {
            idf_state_reset(sides[k]->st);
            if (idf_state_add_image(sides[k]->st, chw, NULL, &e) ||
                idf_state_eval(sides[k]->st, ids, img, n, outs[k], true, &e)) {
                fprintf(stderr, "idefics-perplexity: %s: %s\n", sides[k]->path, e.msg);
                rc = 1;
            }
        }
        if (rc) break;
        for (int t = 0; t + 1 < n; t++) {
            /* text positions only: predicting the image placeholders says nothing */
            const int32_t nx = ids[t + 1], cur = ids[t];
            if (nx == c->tok_image || nx == c->tok_fake_image || cur == c->tok_image) continue;
            const float *x = la + (size_t)t * V, *y = lr + (size_t)t * V;
            log_softmax(x, V, pa);
            log_softmax(y, V, pr);
            double d = 0;
            for (int i = 0; i < V; i++) d += exp(pr[i]) * (pr[i] - pa[i]);
            if (n_kl == cap) {
                cap *= 2;
                double *nk = realloc(kl, cap * sizeof(double));
                if (!nk) return fprintf(stderr, "idefics-perplexity: out of memory\n"), 1;
                kl = nk;
            }
            kl[n_kl++] = d > 0 ? d : 0;
            agree += argmax(x, V) == argmax(y, V);
            nll_a -= pa[ids[t + 1]];
            nll_r -= pr[ids[t + 1]];
        }
        n_conv++;
    }
    fclose(f);
    if (!rc && n_kl == 0) rc = fprintf(stderr, "idefics-perplexity: %s holds no questions\n", tsv) > 0;
    if (!rc) {
        double sum = 0;
        for (size_t i = 0; i < n_kl; i++) sum += kl[i];
        qsort(kl, n_kl, sizeof *kl, cmp_d);
        const double mean = sum / (double)n_kl, med = kl[n_kl / 2], p99 = kl[(size_t)(0.99 * (double)(n_kl - 1))],
                     mx = kl[n_kl - 1], top1 = (double)agree / (double)n_kl;
        idefics_model_info ia, ir;
        idefics_model_get_info(a.m, &ia);
        idefics_model_get_info(r.m, &ir);
        if (json)
            printf("{\"model\": \"%s\", \"backend\": \"%s\", \"kernels\": \"%s\", \"ref\": \"%s\", \"ref_backend\": \"%s\", "
                   "\"questions\": %ld, \"positions\": %zu, \"kl_mean\": %.6g, \"kl_median\": %.6g, \"kl_p99\": %.6g, "
                   "\"kl_max\": %.6g, \"top1_agreement\": %.5f, \"ppl\": %.5f, \"ref_ppl\": %.5f}\n",
                   a.path, ia.backend, idf_state_backend_name(a.st), r.path, ir.backend, n_conv, n_kl, mean, med, p99,
                   mx, top1, exp(nll_a / (double)n_kl), exp(nll_r / (double)n_kl));
        else
            printf("model %s on %s (%s) vs reference %s on %s: %ld conversations, %zu positions\n"
                   "KL divergence: mean %.6g, median %.6g, p99 %.6g, max %.6g\n"
                   "top-1 agreement %.2f%%; perplexity %.4f (reference %.4f)\n",
                   a.path, ia.backend, idf_state_backend_name(a.st), r.path, ir.backend, n_conv, n_kl, mean, med, p99,
                   mx, 100.0 * top1, exp(nll_a / (double)n_kl), exp(nll_r / (double)n_kl));
    }
    idefics_session_free(sess);
    idf_state_free(a.st);
    idf_state_free(r.st);
    idefics_model_free(a.m);
    idefics_model_free(r.m);
    free(la), free(lr), free(pa), free(pr), free(kl), free(img), free(chw);
    return rc;
}
