/*
 * options.h - the command line of `idefics serve` (docs/SERVER.md lists every flag).
 */
#ifndef IDEFICS_SERVER_OPTIONS_H
#define IDEFICS_SERVER_OPTIONS_H

#include <stdbool.h>
#include <stdio.h>

#define MAX_SLOTS 64

typedef struct srv_opts {
    const char *model_path, *host, *api_key, *cors, *board, *allow_dir_arg;
    int port, parallel, queue, n_ctx, n_threads, max_tokens, max_images, slow_ms;
    long long max_body, max_pixels, cache_mb;
    float temperature;
    bool verbose, set_ctx, set_threads, no_batch, no_mmap;
} srv_opts;

void srv_usage(FILE *f);
/* 0 parsed, 1 help printed, 2 usage error (message on stderr) */
int srv_parse_args(int argc, char **argv, srv_opts *o);

#endif
