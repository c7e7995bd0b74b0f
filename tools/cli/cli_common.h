/*
 * cli_common.h - what `idefics ask` and `idefics chat` share: option parsing,
 * loading the model (board profiles included), streaming generation with
 * Ctrl-C wired to idefics_session_cancel, and small JSON writers.
 *
 * These files (cli_common.c, cmd_ask.c, cmd_chat.c) are built with the public
 * include folder only (tools/cli/meson.build), so they can use nothing an
 * integrator could not: idefics.h and libc.
 */
#ifndef IDEFICS_CLI_COMMON_H
#define IDEFICS_CLI_COMMON_H

#include <stdbool.h>
#include <stdio.h>

#include "idefics.h"

/* One -i or -p (or -f) in the order given on the command line. */
typedef struct cli_item {
    bool is_image;
    const char *value; /* image path, or the text */
    bool owned;        /* value was read from a file (-f) and must be freed */
} cli_item;

#define CLI_MAX_ITEMS 256

typedef struct cli_opts {
    const char *cmd; /* "ask" or "chat" */
    const char *model;
    cli_item items[CLI_MAX_ITEMS];
    int n_items, n_images, n_texts;
    idefics_generate_params gen;
    bool seed_set;
    int n_threads, n_ctx;
    idefics_backend backend;
    idefics_kv_type kv_type;
    const char *device; /* --device: OpenCL device index or name substring */
    const char *board;  /* --board / IDEFICS_BOARD: defaults from boards/ (boards/README.md) */
    bool json, verbose, raw, dry_run;
    bool low_memory, no_mmap, set_ctx, set_threads, set_backend, set_kv;
    int64_t max_image_pixels; /* --max-image-pixels; 0 = the board's or library's default */
    bool no_exif;             /* --no-exif-orientation */
    int verify;               /* --verify / --no-verify (cli_faults.h); -1 = the library's default */
} cli_opts;

/* Returns 0 when parsed, 1 when help was printed, 2 on a usage error (message printed). */
int cli_parse(int argc, char **argv, const char *cmd, void (*usage)(FILE *), cli_opts *o);
void cli_opts_free(cli_opts *o);

/* The option lines ask and chat share, for their usage(). */
void cli_usage_common(FILE *f, bool ask);

/* Load the model and create the session; prints its own errors. 0 on success. */
int cli_open(const cli_opts *o, idefics_model **model, idefics_session **session);

/* Add an image file; prints the error (once, with the path once) and returns nonzero on failure. */
int cli_add_image(idefics_session *s, const char *cmd, const char *path);

/* The answer being streamed: to stdout as it comes, or collected for --json. */
typedef struct cli_answer {
    bool collect;
    char *text;
    size_t len, cap;
    bool oom;
} cli_answer;

/* idefics_generate with SIGINT cancelling the session while it runs. Sets
 * *interrupted when a Ctrl-C arrived during the run. */
idefics_status cli_generate(idefics_session *s, const idefics_generate_params *gen, cli_answer *a,
                            bool *interrupted);

/* Install the Ctrl-C handler for the whole command: outside a generation it
 * exits at once with status 130 (the shell's 128 + SIGINT). */
void cli_install_sigint(void);

/* The conversation as text (idefics_session_render_prompt), malloc'ed; NULL on failure. */
char *cli_render_prompt(const idefics_session *s);

void cli_print_timings(const idefics_session *s);

void cli_json_string(FILE *f, const char *s, size_t n);
void cli_json_ids(FILE *f, const int32_t *ids, int n);

/* --raw text: split at <img:PATH> markers, in order: on_text for each non-empty
 * stretch of text (len bytes, not NUL-terminated), on_image for each marker's
 * PATH (NUL-terminated, non-empty). "<img:" without a closing '>' and "<img:>"
 * are text. Stops at the first nonzero callback result and returns it; -1 when
 * out of memory. A pure function (tests/fuzz/fuzz_cli_markers.c). */
int cli_split_markers(const char *text, int (*on_text)(void *ud, const char *p, size_t n),
                      int (*on_image)(void *ud, const char *path), void *ud);

/* Read a whole file (for -f); NUL bytes are refused. malloc'ed, NULL on error (printed). */
char *cli_read_text_file(const char *cmd, const char *path);

#endif
