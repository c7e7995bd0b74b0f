/*
 * test_opencl.c - the OpenCL backend end to end, and its fallbacks.
 *
 *   test_opencl e2e CONVERTER FIXTURE_MODELS_DIR OUT_DIR
 *     Converts tiny-base, tiny-instruct and tiny-noresampler (F32 and Q4) and
 *     asks each the same question about an image with --backend opencl and with
 *     the reference CPU backend (greedy, 12 tokens, F32 and F16 KV cache).
 *     Requires the same tokens and, at every generated step, logits within
 *     1e-3 * max|logit| (fp32 sums on the device vs double on the CPU; the
 *     measured differences are printed). Also: AUTO skips a CPU OpenCL device
 *     (PoCL) unless it is named, and takes it when named (params.device).
 *     Skips (77) when OpenCL is not built or no device is usable here.
 *   test_opencl nolib MODEL.idfx
 *     With IDEFICS_OPENCL_LIB pointing at a missing library: AUTO loads on the
 *     CPU with exactly one INFO line about OpenCL; --backend opencl fails with
 *     IDEFICS_ERR_NO_DEVICE and a message naming the library.
 *   test_opencl noicd MODEL.idfx
 *     Run with OCL_ICD_VENDORS=an empty folder (the ICD loader finds no
 *     driver): the same two checks.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "idefics.h"

static int n_fail = 0, n_pass = 0;

static void check(bool ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void check(bool ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "PASS" : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    ok ? n_pass++ : n_fail++;
}

/* Log lines that mention OpenCL, counted per level. */
typedef struct log_rec {
    int n_info_opencl, n_other_opencl;
    char last[512];
} log_rec;

static void log_cb(void *ud, idefics_log_level level, const char *msg) {
    log_rec *r = ud;
    if (strncmp(msg, "opencl:", 7) == 0) { /* the backend's lines start so */
        if (level == IDEFICS_LOG_INFO)
            r->n_info_opencl++;
        else if (level < IDEFICS_LOG_INFO)
            r->n_other_opencl++;
        snprintf(r->last, sizeof r->last, "%s", msg);
    }
}

static idefics_model *load(const char *path, idefics_backend be, const char *device, log_rec *rec,
                           idefics_status *st, char *err, size_t err_size) {
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = be;
    mp.device = device;
    mp.log = log_cb;
    mp.log_user_data = rec;
    mp.log_level = IDEFICS_LOG_INFO;
    idefics_model *m = NULL;
    *st = idefics_model_load(path, &mp, &m, err, err_size);
    return m;
}

/* ------------------------------------------------------------------ e2e */

#define N_GEN 12

typedef struct run_out {
    int n;
    int32_t tok[N_GEN];
    float *logits; /* [N_GEN, n_vocab] */
    int n_vocab;
    idefics_session *s;
} run_out;

static bool on_token(void *ud, int32_t token, const char *piece) {
    (void)piece;
    run_out *r = ud;
    if (r->n >= N_GEN)
        return false;
    const float *l = idefics_session_get_logits(r->s);
    if (l)
        memcpy(r->logits + (size_t)r->n * r->n_vocab, l, (size_t)r->n_vocab * sizeof(float));
    r->tok[r->n++] = token;
    return true;
}

static bool ask(idefics_model *m, const char *image, idefics_kv_type kv, run_out *r) {
    idefics_model_info info;
    idefics_model_get_info(m, &info);
    memset(r, 0, sizeof *r);
    r->n_vocab = info.n_vocab;
    r->logits = calloc((size_t)N_GEN * info.n_vocab, sizeof(float));
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = 256;
    sp.n_threads = 2;
    sp.kv_type = kv;
    char err[512];
    if (idefics_session_create(m, &sp, &r->s, err, sizeof err) != IDEFICS_OK) {
        printf("session: %s\n", err);
        return false;
    }
    idefics_generate_params gp = idefics_generate_default_params();
    gp.max_new_tokens = N_GEN;
    gp.stop_at_eos = false;
    idefics_status st = idefics_add_image_file(r->s, image);
    if (st == IDEFICS_OK)
        st = idefics_add_user_turn(r->s, "What is in this image?");
    if (st == IDEFICS_OK)
        st = idefics_generate(r->s, &gp, on_token, r);
    if (st != IDEFICS_OK)
        printf("generate: %s: %s\n", idefics_status_str(st), idefics_session_last_error(r->s));
    idefics_session_free(r->s);
    r->s = NULL;
    return st == IDEFICS_OK;
}

static int convert(const char *converter, const char *in_dir, const char *out, const char *quant) {
    struct stat sb;
    if (stat(out, &sb) == 0 && sb.st_size > 0)
        return 0;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' '%s' -o '%s' --quant %s -j 1 -q > '%s.log' 2>&1", converter, in_dir, out, quant,
             out);
    return system(cmd);
}

static int run_e2e(const char *converter, const char *models, const char *out_dir) {
    mkdir(out_dir, 0755);
    const char *names[] = {"tiny-base", "tiny-instruct", "tiny-noresampler"};
    const char *quants[] = {"f32", "q4"};
    char image[1024];
    snprintf(image, sizeof image, "%s/images/dots_rgba.png", models);
    bool device_checked = false;
    for (size_t mi = 0; mi < sizeof names / sizeof names[0]; mi++)
        for (size_t qi = 0; qi < 2; qi++) {
            char in[1024], path[1024], err[512];
            snprintf(in, sizeof in, "%s/%s", models, names[mi]);
            snprintf(path, sizeof path, "%s/%s-%s.idfx", out_dir, names[mi], quants[qi]);
            if (convert(converter, in, path, quants[qi]) != 0) {
                check(false, "convert %s at %s (log: %s.log)", names[mi], quants[qi], path);
                continue;
            }
            log_rec rec = {0};
            idefics_status st;
            idefics_model *mo = load(path, IDEFICS_BACKEND_OPENCL, NULL, &rec, &st, err, sizeof err);
            if (!mo && st == IDEFICS_ERR_NO_DEVICE && !device_checked) {
                printf("SKIP: no usable OpenCL device here: %s\n", err);
                return 77;
            }
            device_checked = true;
            check(mo != NULL, "%s-%s loads with --backend opencl (%s)", names[mi], quants[qi], mo ? "ok" : err);
            idefics_model *mr = load(path, IDEFICS_BACKEND_CPU_REF, NULL, &rec, &st, err, sizeof err);
            check(mr != NULL, "%s-%s loads with cpu-ref", names[mi], quants[qi]);
            if (!mo || !mr) {
                idefics_model_free(mo);
                idefics_model_free(mr);
                continue;
            }
            idefics_model_info info;
            idefics_model_get_info(mo, &info);
            check(strcmp(info.backend, "opencl") == 0, "%s-%s reports backend %s", names[mi], quants[qi],
                  info.backend);
            for (int kv = 0; kv < 2; kv++) {
                const idefics_kv_type kt = kv ? IDEFICS_KV_F16 : IDEFICS_KV_F32;
                run_out a, b;
                const bool ok_a = ask(mo, image, kt, &a), ok_b = ask(mr, image, kt, &b);
                check(ok_a && ok_b, "%s-%s kv %s: both backends generate", names[mi], quants[qi], kv ? "f16" : "f32");
                if (ok_a && ok_b) {
                    bool same = a.n == b.n;
                    for (int i = 0; same && i < a.n; i++)
                        same = a.tok[i] == b.tok[i];
                    double worst = 0;
                    for (int i = 0; i < a.n && i < b.n; i++) {
                        double d = 0, mx = 0;
                        for (int v = 0; v < a.n_vocab; v++) {
                            const double e = fabs((double)a.logits[(size_t)i * a.n_vocab + v] -
                                                  b.logits[(size_t)i * b.n_vocab + v]);
                            if (!(e <= d))
                                d = e;
                            mx = fmax(mx, fabs(b.logits[(size_t)i * b.n_vocab + v]));
                        }
                        const double rel = mx > 0 ? d / mx : d;
                        if (!(rel <= worst))
                            worst = rel;
                    }
                    check(same, "%s-%s kv %s: same %d greedy tokens as cpu-ref", names[mi], quants[qi],
                          kv ? "f16" : "f32", a.n);
                    check(worst <= 1e-3, "%s-%s kv %s: logits max|diff| / max|logit| = %.3g (<= 1e-3)", names[mi],
                          quants[qi], kv ? "f16" : "f32", worst);
                }
                free(a.logits);
                free(b.logits);
            }
            idefics_model_free(mo);
            idefics_model_free(mr);
        }

    /* AUTO and a CPU OpenCL device: skipped unless named, taken when named. */
    char path[1024], err[512];
    snprintf(path, sizeof path, "%s/tiny-instruct-q4.idfx", out_dir);
    log_rec rec = {0};
    idefics_status st;
    idefics_model *m = load(path, IDEFICS_BACKEND_AUTO, NULL, &rec, &st, err, sizeof err);
    if (m) {
        idefics_model_info info;
        idefics_model_get_info(m, &info);
        /* on a machine with a real GPU AUTO takes it; this check is about PoCL */
        if (strcmp(info.backend, "opencl") != 0)
            check(rec.n_info_opencl == 1, "AUTO without a named device: backend %s, one INFO line: \"%s\"",
                  info.backend, rec.last);
        idefics_model_free(m);
    } else {
        check(false, "AUTO load: %s", err);
    }
    memset(&rec, 0, sizeof rec);
    m = load(path, IDEFICS_BACKEND_AUTO, "0", &rec, &st, err, sizeof err);
    if (m) {
        idefics_model_info info;
        idefics_model_get_info(m, &info);
        check(strcmp(info.backend, "opencl") == 0, "AUTO with device \"0\" takes OpenCL (%s)", info.backend);
        idefics_model_free(m);
    } else {
        check(false, "AUTO load with device 0: %s", err);
    }
    m = load(path, IDEFICS_BACKEND_OPENCL, "no-such-device-name", &rec, &st, err, sizeof err);
    check(!m && st == IDEFICS_ERR_NO_DEVICE && strstr(err, "no-such-device-name"),
          "--backend opencl --device no-such-device-name: NO_DEVICE (\"%s\")", err);
    idefics_model_free(m);
    return n_fail ? 1 : 0;
}

/* ------------------------------------------------------------- fallbacks */

static int run_fallback(const char *model, const char *what) {
    char err[512];
    log_rec rec = {0};
    idefics_status st;
    idefics_model *m = load(model, IDEFICS_BACKEND_AUTO, NULL, &rec, &st, err, sizeof err);
    check(m != NULL, "%s: AUTO loads (%s)", what, m ? "ok" : err);
    if (m) {
        idefics_model_info info;
        idefics_model_get_info(m, &info);
        check(strcmp(info.backend, "opencl") != 0, "%s: AUTO runs on the CPU (backend %s)", what, info.backend);
        check(rec.n_info_opencl == 1 && rec.n_other_opencl == 0, "%s: exactly one INFO line about OpenCL: \"%s\"",
              what, rec.last);
        /* and it computes: one short answer */
        idefics_session *s = NULL;
        idefics_session_params sp = idefics_session_default_params();
        sp.n_ctx = 128;
        sp.n_threads = 1;
        idefics_generate_params gp = idefics_generate_default_params();
        gp.max_new_tokens = 3;
        st = idefics_session_create(m, &sp, &s, err, sizeof err);
        if (st == IDEFICS_OK)
            st = idefics_add_user_turn(s, "Hello?");
        if (st == IDEFICS_OK)
            st = idefics_generate(s, &gp, NULL, NULL);
        check(st == IDEFICS_OK, "%s: generation on the CPU works (%s)", what, idefics_status_str(st));
        idefics_session_free(s);
        idefics_model_free(m);
    }
    memset(&rec, 0, sizeof rec);
    m = load(model, IDEFICS_BACKEND_OPENCL, NULL, &rec, &st, err, sizeof err);
    check(!m && st == IDEFICS_ERR_NO_DEVICE && err[0], "%s: --backend opencl gives IDEFICS_ERR_NO_DEVICE: \"%s\"",
          what, err);
    idefics_model_free(m);
    return n_fail ? 1 : 0;
}

int main(int argc, char **argv) {
#ifndef IDF_HAVE_OPENCL
    (void)argc;
    (void)argv;
    printf("SKIP: this build has no OpenCL backend (CL/cl.h was not found)\n");
    return 77;
#else
    int rc = 2;
    if (argc == 5 && strcmp(argv[1], "e2e") == 0) {
        rc = run_e2e(argv[2], argv[3], argv[4]);
    } else if (argc == 3 && strcmp(argv[1], "nolib") == 0) {
        setenv("IDEFICS_OPENCL_LIB", "/nonexistent/libOpenCL-missing.so", 1);
        rc = run_fallback(argv[2], "missing library");
    } else if (argc == 3 && strcmp(argv[1], "noicd") == 0) {
        const char *v = getenv("OCL_ICD_VENDORS");
        if (!v || !v[0]) {
            printf("SKIP: run with OCL_ICD_VENDORS set to an empty folder\n");
            return 77;
        }
        mkdir(v, 0755); /* the ICD loader reads it at the first OpenCL call, after this */
        unsetenv("IDEFICS_OPENCL_LIB");
        rc = run_fallback(argv[2], "ICD loader without drivers");
    } else {
        fprintf(stderr, "usage: test_opencl e2e CONVERTER MODELS_DIR OUT_DIR | nolib MODEL | noicd MODEL\n");
        return 2;
    }
    if (rc == 77)
        return rc;
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
#endif
}
