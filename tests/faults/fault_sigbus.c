/*
 * fault_sigbus.c - a model file truncated while it is mapped (issue 15).
 * Loads MODEL (a raw, zero-copy conversion: the weights live in the mapping),
 * installs the CLI's SIGBUS handler (tools/cli/cli_faults.c), truncates the
 * file, then generates: the first weight read raises SIGBUS in the mapping,
 * and the handler must exit CLI_EXIT_MODEL_CHANGED with its message. Reaching
 * the end is a failure (exit 1). Public API only, like the CLI.
 * Usage: fault_sigbus MODEL.idfx   (the file is destroyed)
 */
#include <stdio.h>
#include <unistd.h>

#include "cli_faults.h"
#include "idefics.h"

static bool on_token(void *ud, int32_t token, const char *piece) {
    (void)ud, (void)token, (void)piece;
    return true;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: fault_sigbus MODEL.idfx\n");
        return 2;
    }
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = IDEFICS_BACKEND_CPU;
    mp.verify = IDEFICS_VERIFY_NEVER;
    idefics_model *m = NULL;
    idefics_session *s = NULL;
    char err[512];
    if (idefics_model_load(argv[1], &mp, &m, err, sizeof err) != IDEFICS_OK) {
        fprintf(stderr, "fault_sigbus: %s\n", err);
        return 1;
    }
    cli_sigbus_watch(m);
    idefics_session_params sp = idefics_session_default_params();
    sp.n_ctx = 64;
    if (idefics_session_create(m, &sp, &s, err, sizeof err) != IDEFICS_OK ||
        idefics_add_user_turn(s, "What is in the image?") != IDEFICS_OK) {
        fprintf(stderr, "fault_sigbus: session: %s\n", err);
        return 1;
    }
    if (truncate(argv[1], 4096) != 0) {
        perror("fault_sigbus: truncate");
        return 1;
    }
    idefics_generate_params gp = idefics_generate_default_params();
    gp.max_new_tokens = 2;
    idefics_status st = idefics_generate(s, &gp, on_token, NULL);
    fprintf(stderr, "fault_sigbus: no SIGBUS: generate returned %s\n", idefics_status_str(st));
    return 1;
}
