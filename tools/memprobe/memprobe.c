/*
 * memprobe.c - idefics-memprobe, a benchmark program (not a test): loads a
 * model, encodes one image, generates a few tokens, and prints resident
 * memory after each step plus the peak (VmHWM), anonymous RSS and page
 * faults, so low_memory and normal mode can be compared on a board, or here
 * under a cgroup memory cap (boards/README.md, "Measuring memory").
 *
 *   idefics-memprobe -m MODEL.idfx -i IMAGE [-n TOKENS] [-c N_CTX] [-t THREADS]
 *                    [--low-memory] [--backend cpu|cpu-ref|opencl|auto]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "idefics.h"
#include "platform.h"

static void report(const char *step, double ms) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%-10s rss %8.1f MiB  anon %8.1f MiB  peak %8.1f MiB  major faults %7ld  minor %8ld  %9.1f ms\n", step,
           (double)idf_rss_bytes() / 1048576.0, (double)idf_anon_rss_bytes() / 1048576.0,
           (double)idf_peak_rss_bytes() / 1048576.0, ru.ru_majflt, ru.ru_minflt, ms);
    fflush(stdout);
}

static bool on_token(void *ud, int32_t tok, const char *piece) {
    (void)ud, (void)tok, (void)piece;
    return true;
}

int main(int argc, char **argv) {
    const char *model = NULL, *image = NULL, *backend = "cpu";
    int n_tokens = 4, n_ctx = 512, n_threads = 0;
    bool low = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--low-memory")) {
            low = true;
            continue;
        }
        if (!v) {
            fprintf(stderr, "idefics-memprobe: %s needs a value (or is unknown)\n", a);
            return 2;
        }
        if (!strcmp(a, "-m")) model = v;
        else if (!strcmp(a, "-i")) image = v;
        else if (!strcmp(a, "-n")) n_tokens = atoi(v);
        else if (!strcmp(a, "-c")) n_ctx = atoi(v);
        else if (!strcmp(a, "-t")) n_threads = atoi(v);
        else if (!strcmp(a, "--backend")) backend = v;
        else {
            fprintf(stderr, "idefics-memprobe: unknown option %s\n", a);
            return 2;
        }
        i++;
    }
    if (!model || !image) {
        fprintf(stderr, "usage: idefics-memprobe -m MODEL -i IMAGE [-n TOKENS] [-c N_CTX] [-t THREADS] "
                        "[--low-memory] [--backend cpu|cpu-ref|opencl|auto]\n");
        return 2;
    }
    idefics_model_params mp = idefics_model_default_params();
    mp.low_memory = low;
    mp.n_threads = n_threads;
    mp.backend = !strcmp(backend, "cpu-ref")  ? IDEFICS_BACKEND_CPU_REF
                 : !strcmp(backend, "opencl") ? IDEFICS_BACKEND_OPENCL
                 : !strcmp(backend, "auto")   ? IDEFICS_BACKEND_AUTO
                                              : IDEFICS_BACKEND_CPU;
    printf("model %s, low_memory %s, backend %s, n_ctx %d, %d tokens\n", model, low ? "on" : "off", backend, n_ctx,
           n_tokens);
    report("start", 0);
    char err[512];
    idefics_model *m = NULL;
    double t0 = idf_time_ms();
    idefics_status st = idefics_model_load(model, &mp, &m, err, sizeof err);
    if (st) {
        fprintf(stderr, "idefics-memprobe: load: %s (%s)\n", err, idefics_status_str(st));
        return 1;
    }
    report("load", idf_time_ms() - t0);
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = n_ctx;
    sp.n_threads = n_threads;
    idefics_session *s = NULL;
    t0 = idf_time_ms();
    st = idefics_session_create(m, &sp, &s, err, sizeof err);
    if (st) {
        fprintf(stderr, "idefics-memprobe: session: %s (%s)\n", err, idefics_status_str(st));
        idefics_model_free(m);
        return 1;
    }
    report("session", idf_time_ms() - t0);
    int rc = 0;
    if ((st = idefics_add_image_file(s, image)) || (st = idefics_add_user_turn(s, "What is in this image?"))) {
        fprintf(stderr, "idefics-memprobe: prompt: %s (%s)\n", idefics_session_last_error(s), idefics_status_str(st));
        rc = 1;
    } else {
        idefics_generate_params gp = idefics_generate_default_params();
        gp.max_new_tokens = n_tokens;
        gp.stop_at_eos = false;
        t0 = idf_time_ms();
        st = idefics_generate(s, &gp, on_token, NULL);
        if (st) {
            fprintf(stderr, "idefics-memprobe: generate: %s (%s)\n", idefics_session_last_error(s),
                    idefics_status_str(st));
            rc = 1;
        }
        idefics_timings tm;
        idefics_session_get_timings(s, &tm);
        report("generate", idf_time_ms() - t0);
        printf("timings: image %.1f ms, prefill %.1f ms (%d tokens), decode %.1f ms (%d tokens)\n",
               tm.image_encode_ms, tm.prefill_ms, tm.n_prompt_tokens, tm.decode_ms, tm.n_generated);
    }
    idefics_session_free(s);
    idefics_model_free(m);
    printf("peak RSS (VmHWM): %.1f MiB\n", (double)idf_peak_rss_bytes() / 1048576.0);
    return rc;
}
