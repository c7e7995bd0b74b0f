/*
 * options.c - parsing the command line of `idefics serve` (options.h).
 */
#include "options.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void srv_usage(FILE *f) {
    fprintf(f,
            "usage: idefics serve -m MODEL [options]   (docs/SERVER.md)\n\n"
            "  -m, --model PATH          model file (.idfx)\n"
            "      --host ADDR           address to listen on (default 127.0.0.1; ::1 for IPv6)\n"
            "      --port N              port (default 8080; 0 = any free port, printed at start)\n"
            "  -np, --parallel N         slots: requests generated at once (default 1)\n"
            "      --queue N             requests that may wait for a slot; more get 429 (default 16)\n"
            "  -c, --ctx-size N          context per slot in tokens (default: the model's)\n"
            "  -t, --threads N           compute threads (of the batch, or per slot with --no-batch; default: all)\n"
            "      --board NAME          defaults for a board or memory profile (boards/; env IDEFICS_BOARD)\n"
            "      --api-key KEY         require Authorization: Bearer KEY on /v1/* and /metrics\n"
            "                            (env IDEFICS_API_KEY; the flag wins)\n"
            "      --cors ORIGIN         send Access-Control-Allow-Origin: ORIGIN (default: none)\n"
            "      --max-body BYTES      largest request body (default 20 MiB)\n"
            "      --max-images N        images in one request (default 8)\n"
            "      --max-image-pixels N  decoded width*height of one image (default 16777216)\n"
            "      --max-tokens N        most tokens one answer may ask for and the default (default 256)\n"
            "      --temp T              temperature when a request gives none (default 0 = greedy)\n"
            "      --allow-local-files DIR  accept file:// image URLs inside DIR (after resolving symlinks)\n"
            "      --cache-mb N          memory for cached conversation snapshots (default 256; 0 = off)\n"
            "      --slow-tokens MS      sleep MS after each token (tests and demos of streaming only)\n"
            "      --no-batch            slots generate on their own threads, not in one batch\n"
            "      --no-mmap             read the weights into memory instead of mapping the file\n"
            "  -v, --verbose             log each request and the library's progress\n");
}

static bool parse_ll(const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* 0 parsed, 1 help printed, 2 usage error */
int srv_parse_args(int argc, char **argv, srv_opts *o) {
    *o = (srv_opts){.host = "127.0.0.1", .port = 8080, .parallel = 1, .queue = 16, .max_tokens = 256,
                    .max_images = 8, .max_body = 20LL << 20, .max_pixels = 16LL << 20, .cache_mb = 256};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            srv_usage(stdout);
            return 1;
        }
        if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = true;
            continue;
        }
        if (!strcmp(a, "--no-batch")) {
            o->no_batch = true;
            continue;
        }
        if (!strcmp(a, "--no-mmap")) {
            o->no_mmap = true;
            continue;
        }
        static const char *valued[] = {"-m", "--model", "--host", "--port", "-np", "--parallel", "--queue", "-c",
                                       "--ctx-size", "-t", "--threads", "--board", "--api-key", "--cors",
                                       "--max-body", "--max-images", "--max-image-pixels", "--max-tokens", "--temp",
                                       "--allow-local-files", "--cache-mb", "--slow-tokens"};
        bool known = false;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++) known |= !strcmp(a, valued[k]);
        if (!known) {
            fprintf(stderr, "idefics serve: unknown option '%s' (idefics serve --help lists them)\n", a);
            return 2;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "idefics serve: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        long long n = 0;
        bool ok = true;
#define NUM(lo, hi) (ok = parse_ll(v, lo, hi, &n))
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) o->model_path = v;
        else if (!strcmp(a, "--host")) o->host = v;
        else if (!strcmp(a, "--port")) NUM(0, 65535), o->port = (int)n;
        else if (!strcmp(a, "-np") || !strcmp(a, "--parallel")) NUM(1, MAX_SLOTS), o->parallel = (int)n;
        else if (!strcmp(a, "--queue")) NUM(0, 1024), o->queue = (int)n;
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) NUM(0, 1 << 24), o->n_ctx = (int)n, o->set_ctx = true;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) NUM(0, 1024), o->n_threads = (int)n, o->set_threads = true;
        else if (!strcmp(a, "--board")) o->board = v;
        else if (!strcmp(a, "--api-key")) o->api_key = v;
        else if (!strcmp(a, "--cors")) o->cors = v;
        else if (!strcmp(a, "--max-body")) NUM(1024, 1LL << 32), o->max_body = n;
        else if (!strcmp(a, "--max-images")) NUM(0, 1024), o->max_images = (int)n;
        else if (!strcmp(a, "--max-image-pixels")) NUM(1, 1LL << 32), o->max_pixels = n;
        else if (!strcmp(a, "--max-tokens")) NUM(1, 1 << 24), o->max_tokens = (int)n;
        else if (!strcmp(a, "--allow-local-files")) o->allow_dir_arg = v;
        else if (!strcmp(a, "--cache-mb")) NUM(0, 1 << 20), o->cache_mb = n;
        else if (!strcmp(a, "--slow-tokens")) NUM(0, 10000), o->slow_ms = (int)n;
        else if (!strcmp(a, "--temp")) {
            char *end;
            double t = strtod(v, &end);
            ok = end != v && !*end && t >= 0 && t <= 2;
            o->temperature = (float)t;
        }
#undef NUM
        if (!ok) {
            fprintf(stderr, "idefics serve: bad value '%s' for %s\n", v, a);
            return 2;
        }
    }
    if (!o->model_path) {
        fprintf(stderr, "idefics serve: -m MODEL is required\n");
        return 2;
    }
    if (strchr(o->host, '\n') || strchr(o->host, '\r')) return 2;
    return 0;
}

