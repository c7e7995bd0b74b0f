/*
 * test_opencl.c - the OpenCL backend end to end, and its fallbacks.
 *
 *   test_opencl e2e CONVERTER FIXTURE_MODELS_DIR OUT_DIR
 *     Converts tiny-base, tiny-instruct and tiny-noresampler (F32 and Q4) and
 *     asks each the same question about an image with --backend opencl and with
 *     the reference CPU backend (greedy, 12 tokens, F32 and F16 KV cache).
 *     Requires the same tokens and, at every generated step, logits within
 *     1e-3 * max|logit| (fp32 sums on the device vs double on the CPU; the
 *     measured differences are printed). The same for tiny-instruct with a
 *     4 KiB max alloc from a tuning file (every matrix split along rows). Also:
 *     AUTO skips a CPU OpenCL device
 *     (PoCL) unless it is named, and takes it when named (params.device).
 *     Skips (77) when OpenCL is not built or no device is usable here.
 *   test_opencl nolib MODEL.idfx
 *     With IDEFICS_OPENCL_LIB pointing at a missing library: AUTO loads on the
 *     CPU with exactly one INFO line about OpenCL; --backend opencl fails with
 *     IDEFICS_ERR_NO_DEVICE and a message naming the library.
 *   test_opencl cache DIR
 *     The program binary cache: a first open writes one entry into DIR; a second
 *     open loads it; an entry with a flipped byte, and one cut short, are
 *     ignored (the program is rebuilt and the entry rewritten).
 *   test_opencl clblast TUNING.ini
 *     With a tuning file that turns CLBlast on: an F32 matmul (bias, strided
 *     output) goes through CLBlast (counted) and matches the reference backend,
 *     leaving the row gaps untouched. Skips (77) without libclblast.so.1.
 *   test_opencl selftest TUNING.ini MODEL.idfx
 *     With a tuning file that makes the start-up self-test unpassable: AUTO
 *     falls back to the CPU with one INFO line naming the self-test, and
 *     --backend opencl fails with NO_DEVICE. Skips (77) without a device.
 *   test_opencl noicd MODEL.idfx
 *     Run with OCL_ICD_VENDORS=an empty folder (the ICD loader finds no
 *     driver): the same two checks.
 *   test_opencl auto MODEL.idfx
 *     With two OpenCL implementations present, PoCL and Mesa Rusticl's
 *     llvmpipe (RUSTICL_ENABLE=llvmpipe; skips 77 when either is missing):
 *     idefics_list_devices lists the CPU backend first (with its kernel set)
 *     and both devices as CPU type that AUTO skips, with a reason; AUTO (no
 *     device named) loads on the CPU backend with one INFO line; naming each
 *     device takes OpenCL on that device; the list's argument checks.
 * The OpenCL modes run on whichever device IDEFICS_DEVICE names (unset: the
 * first one); tests/meson.build runs them on PoCL and on Rusticl, and the op
 * table and e2e again under IDEFICS_OPENCL_CLAMP (GPU-sized limits).
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "idefics.h"
#ifdef IDF_HAVE_OPENCL
#include <dirent.h>
#include <dlfcn.h>
#include "backend_opencl.h"
#include "model.h"
#include "quant.h"
#endif

#ifdef IDF_HAVE_OPENCL /* everything up to main(); without OpenCL the test skips */
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

/* path on --backend opencl against cpu-ref: same greedy tokens, logits close.
 * 77 when the first open finds no device and may_skip. */
static int compare(const char *path, const char *name, const char *quant, const char *image, bool may_skip) {
    char err[512];
    log_rec rec = {0};
    idefics_status st;
    idefics_model *mo = load(path, IDEFICS_BACKEND_OPENCL, NULL, &rec, &st, err, sizeof err);
    if (!mo && st == IDEFICS_ERR_NO_DEVICE && may_skip) {
        printf("SKIP: no usable OpenCL device here: %s\n", err);
        return 77;
    }
    check(mo != NULL, "%s-%s loads with --backend opencl (%s)", name, quant, mo ? "ok" : err);
    idefics_model *mr = load(path, IDEFICS_BACKEND_CPU_REF, NULL, &rec, &st, err, sizeof err);
    check(mr != NULL, "%s-%s loads with cpu-ref", name, quant);
    if (!mo || !mr) {
        idefics_model_free(mo);
        idefics_model_free(mr);
        return 1;
    }
    idefics_model_info info;
    idefics_model_get_info(mo, &info);
    check(strcmp(info.backend, "opencl") == 0, "%s-%s reports backend %s", name, quant, info.backend);
    check(info.device && info.device[0] && info.mmap, "%s-%s: device \"%s\", mmap %d", name, quant,
          info.device ? info.device : "(null)", (int)info.mmap);
    for (int kv = 0; kv < 2; kv++) {
        const idefics_kv_type kt = kv ? IDEFICS_KV_F16 : IDEFICS_KV_F32;
        const char *kvn = kv ? "f16" : "f32";
        run_out a, b;
        const bool ok_a = ask(mo, image, kt, &a), ok_b = ask(mr, image, kt, &b);
        check(ok_a && ok_b, "%s-%s kv %s: both backends generate", name, quant, kvn);
        if (ok_a && ok_b) {
            bool same = a.n == b.n;
            for (int i = 0; same && i < a.n; i++)
                same = a.tok[i] == b.tok[i];
            double worst = 0;
            for (int i = 0; i < a.n && i < b.n; i++) {
                double d = 0, mx = 0;
                for (int v = 0; v < a.n_vocab; v++) {
                    const size_t at = (size_t)i * a.n_vocab + v;
                    const double e = fabs((double)a.logits[at] - b.logits[at]);
                    if (!(e <= d))
                        d = e; /* NaN propagates as a failure */
                    mx = fmax(mx, fabs(b.logits[at]));
                }
                const double rel = mx > 0 ? d / mx : d;
                if (!(rel <= worst))
                    worst = rel;
            }
            check(same, "%s-%s kv %s: same %d greedy tokens as cpu-ref", name, quant, kvn, a.n);
            check(worst <= 1e-3, "%s-%s kv %s: logits max|diff| / max|logit| = %.3g (<= 1e-3)", name, quant, kvn,
                  worst);
        }
        free(a.logits);
        free(b.logits);
    }
    idefics_model_free(mo);
    idefics_model_free(mr);
    return 0;
}

/* Weights over a (lowered) max alloc: matmuls run chunk by chunk. The tuning
 * file sets max_alloc_kb so that the tiny models' matrices split. */
static int run_split(const char *out_dir) {
    char ini[1024], path[1024], image[1024];
    snprintf(ini, sizeof ini, "%s/split.ini", out_dir);
    FILE *f = fopen(ini, "w");
    if (!f) {
        check(false, "write %s", ini);
        return 1;
    }
    fprintf(f, "# test_opencl split: a tiny max alloc so every matrix of the tiny models splits\n[tuning]\n"
               "mm_lanes = 2\nmax_alloc_kb = 4\n");
    fclose(f);
    setenv("IDEFICS_OPENCL_TUNING", ini, 1);
    const char *models = getenv("IDEFICS_TEST_MODELS");
    snprintf(image, sizeof image, "%s/images/dots_rgba.png", models ? models : ".");
    const char *q[] = {"q4", "f32"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/tiny-instruct-%s.idfx", out_dir, q[i]);
        char err[512];
        log_rec rec = {0};
        idefics_status st;
        idefics_model *m = load(path, IDEFICS_BACKEND_OPENCL, NULL, &rec, &st, err, sizeof err);
        if (!m && st == IDEFICS_ERR_NO_DEVICE) {
            printf("SKIP: no usable OpenCL device here: %s\n", err);
            return 77;
        }
        check(m && m->ocl && m->ocl->w_split > 0, "%s: %u weights split over a 4 KiB max alloc", q[i],
              m && m->ocl ? m->ocl->w_split : 0);
        idefics_model_free(m);
        compare(path, "split tiny-instruct", q[i], image, false);
    }
    unsetenv("IDEFICS_OPENCL_TUNING");
    return n_fail ? 1 : 0;
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
            char in[1024], path[1024];
            snprintf(in, sizeof in, "%s/%s", models, names[mi]);
            snprintf(path, sizeof path, "%s/%s-%s.idfx", out_dir, names[mi], quants[qi]);
            if (convert(converter, in, path, quants[qi]) != 0) {
                check(false, "convert %s at %s (log: %s.log)", names[mi], quants[qi], path);
                continue;
            }
            const int r = compare(path, names[mi], quants[qi], image, !device_checked);
            if (r == 77)
                return 77;
            device_checked = true;
        }

    setenv("IDEFICS_TEST_MODELS", models, 1);
    if (run_split(out_dir) == 77)
        return 77;

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

static char last_err[512]; /* run_fallback's --backend opencl message */

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
    snprintf(last_err, sizeof last_err, "%s", err);
    idefics_model_free(m);
    return n_fail ? 1 : 0;
}

#ifdef IDF_HAVE_OPENCL
/* The one cache entry in dir (path into buf); false when there is not exactly one. */
static bool cache_entry(const char *dir, char *buf, size_t size) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        if (strncmp(e->d_name, "idefics-cl-", 11) == 0 && strstr(e->d_name, ".bin") && !strstr(e->d_name, ".tmp")) {
            snprintf(buf, size, "%s/%s", dir, e->d_name);
            n++;
        }
    if (d)
        closedir(d);
    return n == 1;
}

static long file_size(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0 ? (long)sb.st_size : -1;
}

static int run_cache(const char *dir) {
    mkdir(dir, 0755);
    char entry[1024];
    if (cache_entry(dir, entry, sizeof entry))
        remove(entry);
    setenv("IDEFICS_CACHE_DIR", dir, 1);
    idf_err err;
    idf_ocl_device *dev = NULL;
    if (idf_ocl_device_open(NULL, false, NULL, NULL, &dev, &err) != IDEFICS_OK) {
        printf("SKIP: no usable OpenCL device here: %s\n", err.msg);
        return 77;
    }
    check(!dev->from_cache, "first open builds the program (%.0f ms)", dev->build_ms);
    idf_ocl_device_free(dev);
    const bool one = cache_entry(dir, entry, sizeof entry);
    check(one, "one cache entry written: %s", one ? entry : "(none)");
    if (!one)
        return 1;
    const long size = file_size(entry);
    dev = NULL;
    const idefics_status st2 = idf_ocl_device_open(NULL, false, NULL, NULL, &dev, &err);
    check(st2 == IDEFICS_OK && dev->from_cache, "second open loads it from the cache (%.0f ms)",
          dev ? dev->build_ms : -1.0);
    idf_ocl_device_free(dev);
    for (int damage = 0; damage < 2; damage++) {
        FILE *f = fopen(entry, "r+b");
        if (f && damage == 0) { /* flip a byte in the middle of the binary */
            fseek(f, size / 2, SEEK_SET);
            const int c = fgetc(f);
            fseek(f, size / 2, SEEK_SET);
            fputc(c ^ 0x5a, f);
        }
        if (f)
            fclose(f);
        if (damage == 1 && truncate(entry, size / 3) != 0)
            check(false, "truncate %s", entry);
        dev = NULL;
        const idefics_status st = idf_ocl_device_open(NULL, false, NULL, NULL, &dev, &err);
        check(st == IDEFICS_OK && !dev->from_cache, "a %s entry is ignored and the program rebuilt (%s)",
              damage ? "truncated" : "corrupted", st ? err.msg : "ok");
        idf_ocl_device_free(dev);
        check(file_size(entry) == size, "the entry is rewritten whole (%ld bytes)", file_size(entry));
    }
    return n_fail ? 1 : 0;
}
#endif

static int run_clblast(const char *ini) {
    void *lib = dlopen("libclblast.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("SKIP: libclblast.so.1 is not installed\n");
        return 77;
    }
    dlclose(lib);
    setenv("IDEFICS_OPENCL_TUNING", ini, 1);
    idf_err err;
    idf_backend *cl = NULL, *ref = NULL;
    if (idf_backend_opencl_create_standalone(1, NULL, &cl, &err) != IDEFICS_OK) {
        printf("SKIP: no usable OpenCL device here: %s\n", err.msg);
        return 77;
    }
    idf_backend_ref_create(1, NULL, &ref, &err);
    enum { N = 33, M = 70, K = 129, LDY = 75 };
    float *w = malloc(sizeof(float) * M * K), *x = malloc(sizeof(float) * N * K), *b = malloc(sizeof(float) * M);
    float *y1 = malloc(sizeof(float) * N * LDY), *y2 = malloc(sizeof(float) * N * LDY);
    uint64_t sd = 5;
    for (int i = 0; i < M * K; i++)
        w[i] = (float)((sd = sd * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
    for (int i = 0; i < N * K; i++)
        x[i] = (float)((sd = sd * 6364136223846793005ull + 1) >> 40) / 16777216.0f - 0.5f;
    for (int i = 0; i < M; i++)
        b[i] = (float)i * 0.01f;
    for (int i = 0; i < N * LDY; i++)
        y1[i] = y2[i] = -7.0f; /* the gaps between rows must keep this */
    const idf_weight wt = {.name = "clblast-test", .data = w, .type = IDFX_TYPE_F32, .layout = IDFX_LAYOUT_ROWMAJOR,
                           .rows = M, .cols = K};
    const idefics_status s1 = cl->matmul(cl->ctx, &wt, b, x, N, y1, LDY);
    ref->matmul(ref->ctx, &wt, b, x, N, y2, LDY);
    double num = 0, den = 0;
    bool gaps = true;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < LDY; j++) {
            const double d = (double)y1[i * LDY + j] - y2[i * LDY + j];
            if (j < M) {
                num += d * d;
                den += (double)y2[i * LDY + j] * y2[i * LDY + j];
            } else {
                gaps = gaps && y1[i * LDY + j] == -7.0f;
            }
        }
    const idf_ocl_op_stats *st = idf_ocl_backend_stats(cl);
    check(s1 == IDEFICS_OK && st[IDF_OP_MATMUL].lib_calls == 1, "F32 matmul n=%d ran in CLBlast (%llu call)", N,
          (unsigned long long)st[IDF_OP_MATMUL].lib_calls);
    check(num / den <= 1e-10, "CLBlast matmul matches cpu-ref: nmse %.3g (<= 1e-10)", num / den);
    check(gaps, "CLBlast matmul leaves the row gaps of a strided output untouched");
    free(w), free(x), free(b), free(y1), free(y2);
    cl->free(cl);
    ref->free(ref);
    unsetenv("IDEFICS_OPENCL_TUNING");
    return n_fail ? 1 : 0;
}
/* AUTO with PoCL and llvmpipe both present: never a CPU-type device unless named. */
static int run_auto(const char *model) {
    unsetenv("IDEFICS_DEVICE");
    int n = 0;
    char note[512];
    idefics_status st = idefics_list_devices(NULL, 0, &n, note, sizeof note);
    check(st == IDEFICS_OK && n >= 1, "idefics_list_devices counts %d device(s) (%s)", n, idefics_status_str(st));
    check(idefics_list_devices(NULL, 0, NULL, NULL, 0) == IDEFICS_ERR_INVALID_ARG,
          "idefics_list_devices without n_devices: IDEFICS_ERR_INVALID_ARG");
    idefics_device_info *d = calloc((size_t)(n > 0 ? n : 1), sizeof *d);
    int n2 = 0;
    st = idefics_list_devices(d, n, &n2, note, sizeof note);
    int pocl = -1, pipe = -1;
    for (int i = 0; i < n2 && i < n; i++) {
        if (d[i].backend == IDEFICS_BACKEND_OPENCL && strstr(d[i].platform, "Portable Computing Language"))
            pocl = d[i].index;
        if (d[i].backend == IDEFICS_BACKEND_OPENCL && strstr(d[i].name, "llvmpipe"))
            pipe = d[i].index;
    }
    if (pocl < 0 || pipe < 0) {
        printf("SKIP: needs PoCL (pocl-opencl-icd) and Rusticl's llvmpipe (mesa-opencl-icd, RUSTICL_ENABLE=llvmpipe); "
               "found %s%s%s\n",
               pocl >= 0 ? "PoCL" : "", pipe >= 0 ? " llvmpipe" : "", pocl < 0 && pipe < 0 ? "neither" : "");
        free(d);
        return 77;
    }
    check(n2 == n && d[0].backend == IDEFICS_BACKEND_CPU && d[0].kernels[0] && d[0].auto_ok,
          "entry 0 is the CPU backend, kernels \"%s\"", d[0].kernels);
    bool any_gpu = false;
    for (int i = 1; i < n; i++) {
        if (d[i].type == IDEFICS_DEVICE_CPU)
            check(!d[i].auto_ok && d[i].auto_why[0], "[%d] %s (cpu type): AUTO skips it: %s", d[i].index, d[i].name,
                  d[i].auto_why);
        any_gpu = any_gpu || d[i].auto_ok;
        check(d[i].local_memory_bytes > 0 && d[i].max_work_group > 0 && d[i].max_alloc_bytes > 0,
              "[%d] limits: local %llu, wg %u, max alloc %llu", d[i].index, (unsigned long long)d[i].local_memory_bytes,
              d[i].max_work_group, (unsigned long long)d[i].max_alloc_bytes);
    }
    char err[512];
    log_rec rec = {0};
    idefics_model *m = load(model, IDEFICS_BACKEND_AUTO, NULL, &rec, &st, err, sizeof err);
    if (m) {
        idefics_model_info info;
        idefics_model_get_info(m, &info);
        if (!any_gpu) /* on a machine with a real GPU AUTO may take it */
            check(strcmp(info.backend, "cpu") == 0 && rec.n_info_opencl == 1,
                  "AUTO with only CPU-type OpenCL devices: backend %s, INFO \"%s\"", info.backend, rec.last);
        idefics_model_free(m);
    } else {
        check(false, "AUTO load: %s", err);
    }
    const int named[2] = {pocl, pipe};
    const char *want[2] = {"pthread", "llvmpipe"};
    for (int i = 0; i < 2; i++) {
        char idx[16];
        snprintf(idx, sizeof idx, "%d", named[i]);
        memset(&rec, 0, sizeof rec);
        m = load(model, IDEFICS_BACKEND_AUTO, idx, &rec, &st, err, sizeof err);
        idefics_model_info info = {0};
        if (m)
            idefics_model_get_info(m, &info);
        check(m && strcmp(info.backend, "opencl") == 0 && strstr(rec.last, want[i]),
              "AUTO with device \"%s\" named takes it: %s", idx, m ? rec.last : err);
        idefics_model_free(m);
    }
    free(d);
    return n_fail ? 1 : 0;
}
#endif /* IDF_HAVE_OPENCL */

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
    } else if (argc == 3 && strcmp(argv[1], "cache") == 0) {
        rc = run_cache(argv[2]);
    } else if (argc == 3 && strcmp(argv[1], "clblast") == 0) {
        rc = run_clblast(argv[2]);
    } else if (argc == 3 && strcmp(argv[1], "auto") == 0) {
        rc = run_auto(argv[2]);
    } else if (argc == 4 && strcmp(argv[1], "selftest") == 0) {
        setenv("IDEFICS_OPENCL_TUNING", argv[2], 1);
        /* AUTO takes a CPU-type device only when named: name the first one
         * (PoCL) when the run names none, so AUTO meets the failing self-test */
        if (!getenv("IDEFICS_DEVICE"))
            setenv("IDEFICS_DEVICE", "0", 1);
        char err[512];
        log_rec rec = {0};
        idefics_status st;
        idefics_model *m = load(argv[3], IDEFICS_BACKEND_OPENCL, NULL, &rec, &st, err, sizeof err);
        if (!m && !strstr(err, "self-test")) {
            printf("SKIP: no usable OpenCL device here: %s\n", err);
            return 77;
        }
        idefics_model_free(m);
        rc = run_fallback(argv[3], "self-test mismatch");
        check(strstr(last_err, "self-test") != NULL, "the NO_DEVICE message names the self-test");
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
        fprintf(stderr, "usage: test_opencl e2e CONVERTER MODELS_DIR OUT_DIR | cache DIR | clblast INI | selftest INI MODEL | nolib MODEL | noicd MODEL | auto MODEL\n");
        return 2;
    }
    if (rc == 77)
        return rc;
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail ? 1 : 0;
#endif
}
