/*
 * tmpfiles.c - see tmpfiles.h. The signal handler needs the path in static
 * storage (a handler can reach nothing else); this is a program, not the library.
 */
#define _GNU_SOURCE
#include "tmpfiles.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_tmp[PATH_MAX + 32];

static void on_signal(int sig) {
    if (g_tmp[0]) unlink(g_tmp); /* async-signal-safe */
    signal(sig, SIG_DFL);
    raise(sig); /* the usual exit status: 130 for SIGINT, 143 for SIGTERM */
}

void conv_tmp_guard(const char *out) {
    /* the writer's name: "%s.tmp.%ld", path, getpid() (idfx_writer.c) */
    if (snprintf(g_tmp, sizeof g_tmp, "%s.tmp.%ld", out, (long)getpid()) >= (int)sizeof g_tmp) g_tmp[0] = '\0';
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaction(sigs[i], &sa, NULL);
}

/* "<prefix>.tmp.<digits>": the pid, else 0. */
static long tmp_pid(const char *name, const char *prefix, size_t plen) {
    if (strncmp(name, prefix, plen) || strncmp(name + plen, ".tmp.", 5)) return 0;
    const char *d = name + plen + 5;
    if (!*d) return 0;
    char *end;
    errno = 0;
    long pid = strtol(d, &end, 10);
    return (!errno && !*end && pid > 0) ? pid : 0;
}

int conv_clean_stale(const char *out, bool quiet) {
    char dir[PATH_MAX], base[PATH_MAX];
    const char *slash = strrchr(out, '/');
    if (slash) {
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - out) ? (int)(slash - out) : 1, out);
        snprintf(base, sizeof base, "%s", slash + 1);
    } else {
        snprintf(dir, sizeof dir, ".");
        snprintf(base, sizeof base, "%s", out);
    }
    DIR *d = opendir(dir);
    if (!d) return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid = tmp_pid(e->d_name, base, strlen(base));
        if (!pid) {
            /* any other converter output in the folder: NAME.idfx.tmp.<pid> */
            const char *t = strstr(e->d_name, ".idfx.tmp.");
            if (t) pid = tmp_pid(e->d_name, e->d_name, (size_t)(t - e->d_name) + 5);
        }
        if (!pid || pid == (long)getpid()) continue;
        /* alive (or not ours to ask): leave it; only ESRCH means the process is gone */
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        char path[PATH_MAX * 2 + 2];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (unlink(path) == 0) {
            removed++;
            if (!quiet)
                fprintf(stderr, "idefics-convert: removed %s, left by process %ld, which no longer exists\n", path,
                        pid);
        }
    }
    closedir(d);
    return removed;
}
