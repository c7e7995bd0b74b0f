/*
 * cli_faults.c - see cli_faults.h. The SIGBUS handler is the one place that
 * needs a static: a signal handler can reach the model no other way (the
 * library keeps no such state and installs no handler).
 */
#define _POSIX_C_SOURCE 200809L
#include "cli_faults.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

static const idefics_model *volatile g_watched;

static void on_sigbus(int sig, siginfo_t *info, void *uctx) {
    (void)uctx;
    const idefics_model *m = g_watched;
    if (m && info && idefics_model_contains_address(m, info->si_addr)) {
        static const char msg[] = "idefics: the model file changed or was truncated while in use\n";
        ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)r;
        _exit(CLI_EXIT_MODEL_CHANGED);
    }
    /* not ours: let the default action run when the instruction faults again */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

void cli_sigbus_watch(const idefics_model *model) {
    g_watched = model;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    if (model) {
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO;
    } else {
        sa.sa_handler = SIG_DFL;
    }
    sigaction(SIGBUS, &sa, NULL);
}

int cli_check_stdout(const char *cmd) {
    errno = 0;
    int bad = fflush(stdout) != 0 || ferror(stdout);
    if (!bad) return 0;
    const int e = errno;
    fprintf(stderr, "idefics %s: cannot write the output: %s\n", cmd, e ? strerror(e) : "write error");
    return 1;
}

const char *cli_escape(char *buf, size_t size, const char *s) {
    size_t o = 0;
    if (!size) return buf;
    for (; s && *s; s++) {
        const unsigned char c = (unsigned char)*s;
        char tmp[8];
        size_t n;
        if (c == '\n') n = (size_t)snprintf(tmp, sizeof tmp, "\\n");
        else if (c == '\t') n = (size_t)snprintf(tmp, sizeof tmp, "\\t");
        else if (c == '\r') n = (size_t)snprintf(tmp, sizeof tmp, "\\r");
        else if (c == '\\') n = (size_t)snprintf(tmp, sizeof tmp, "\\\\");
        else if (c < 0x20 || c == 0x7f) n = (size_t)snprintf(tmp, sizeof tmp, "\\x%02x", c);
        else tmp[0] = (char)c, n = 1;
        if (o + n >= size) break;
        memcpy(buf + o, tmp, n);
        o += n;
    }
    buf[o] = '\0';
    return buf;
}

void cli_put_escaped(FILE *f, const char *s) {
    char buf[64];
    for (; s && *s; s++) {
        const char one[2] = {*s, '\0'};
        fputs(cli_escape(buf, sizeof buf, one), f);
    }
}

int cli_verify_flag(const char *arg) {
    if (!strcmp(arg, "--verify")) return IDEFICS_VERIFY_ALWAYS;
    if (!strcmp(arg, "--no-verify")) return IDEFICS_VERIFY_NEVER;
    return -1;
}
