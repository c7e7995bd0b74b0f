/*
 * load_bench.c - idefics-load-bench, a benchmark program (not a test): load
 * times of one model file with load-time verification (issue 15):
 *   first load   (no stamp: every chunk checksum and Q4/Q8 scale is checked)
 *   later loads  (the stamp matches: nothing is read up front)
 *   --no-verify  and  --verify (forced) for comparison
 * The stamps go to a fresh folder under $TMPDIR, so "first" really is first.
 * Run it twice or `cat MODEL > /dev/null` first to measure from the page cache.
 *
 *   idefics-load-bench -m MODEL.idfx [-t THREADS] [-r LATER_RUNS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "idefics.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static char g_verify_line[256];

static void on_log(void *ud, idefics_log_level level, const char *msg) {
    (void)ud, (void)level;
    if (!strncmp(msg, "verify: ", 8)) snprintf(g_verify_line, sizeof g_verify_line, "%s", msg);
}

static double load(const char *path, int threads, int verify, const char *cache) {
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = IDEFICS_BACKEND_CPU;
    mp.n_threads = threads;
    mp.verify = verify;
    mp.verify_cache_dir = cache;
    mp.log = on_log;
    mp.log_level = IDEFICS_LOG_INFO;
    g_verify_line[0] = '\0';
    idefics_model *m = NULL;
    char err[512];
    const double t0 = now_ms();
    idefics_status st = idefics_model_load(path, &mp, &m, err, sizeof err);
    const double ms = now_ms() - t0;
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics-load-bench: %s: %s\n", path, err);
        exit(1);
    }
    idefics_model_free(m);
    return ms;
}

int main(int argc, char **argv) {
    const char *path = NULL;
    int threads = 2, runs = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-m") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) runs = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: idefics-load-bench -m MODEL.idfx [-t THREADS] [-r LATER_RUNS]\n");
            return 2;
        }
    }
    if (!path || runs < 1) {
        fprintf(stderr, "usage: idefics-load-bench -m MODEL.idfx [-t THREADS] [-r LATER_RUNS]\n");
        return 2;
    }
    char cache[256];
    snprintf(cache, sizeof cache, "%s/idefics-load-bench.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(cache)) {
        perror("mkdtemp");
        return 1;
    }
    printf("model %s, %d threads, stamps in %s\n", path, threads, cache);
    double ms = load(path, threads, IDEFICS_VERIFY_AUTO, cache);
    printf("first load (verifies)   %9.1f ms   %s\n", ms, g_verify_line);
    for (int r = 0; r < runs; r++) {
        ms = load(path, threads, IDEFICS_VERIFY_AUTO, cache);
        printf("later load (stamp)      %9.1f ms   %s\n", ms, strstr(g_verify_line, "chunks") ? "verified again?!" : g_verify_line);
    }
    ms = load(path, threads, IDEFICS_VERIFY_NEVER, cache);
    printf("--no-verify             %9.1f ms\n", ms);
    ms = load(path, threads, IDEFICS_VERIFY_ALWAYS, cache);
    printf("--verify (forced)       %9.1f ms   %s\n", ms, g_verify_line);
    return 0;
}
