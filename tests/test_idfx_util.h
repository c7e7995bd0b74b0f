/*
 * test_idfx_util.h - small helpers shared by the IDFX tests: a check macro that
 * counts failures, a seeded RNG, scratch directories, and "map + open" of a file.
 * Header-only (static functions) so each test stays a single translation unit.
 */
#ifndef TEST_IDFX_UTIL_H
#define TEST_IDFX_UTIL_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "idfx_reader.h"

static int g_failures; /* test programs only: counts failed CHECKs */

#define CHECK(cond, ...)                                               \
    do {                                                               \
        if (!(cond)) {                                                 \
            g_failures++;                                              \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                              \
            fprintf(stderr, "\n");                                     \
        }                                                              \
    } while (0)

/* xorshift64*: deterministic across hosts */
static inline uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}
static inline float rng_normal(uint64_t *s) {
    /* sum of 4 uniforms: cheap, roughly Gaussian; enough for weight-like bytes */
    float v = 0;
    for (int i = 0; i < 4; i++) v += (float)(rng_next(s) >> 40) / (float)(1ull << 24);
    return (v - 2.0f) * 1.7f;
}

/* A fresh scratch directory under $TMPDIR (or /tmp); path written to out. */
static inline int make_scratch(char *out, size_t n, const char *tag) {
    const char *tmp = getenv("TMPDIR");
    snprintf(out, n, "%s/%s_XXXXXX", tmp && *tmp ? tmp : "/tmp", tag);
    return mkdtemp(out) ? 0 : -1;
}

/* Remove the files of a scratch directory (flat) and the directory. */
static inline void remove_scratch(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[4400]; /* dir (< 4096) + "/" + a 255-byte name */
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static inline int count_dir_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

/* Map and open; on failure prints the message and returns the status. */
static inline idefics_status map_open(const char *path, idf_mapping *m, idfx_file *f, idf_err *e) {
    int r = idf_map_file(path, m);
    if (r != 0) {
        fprintf(stderr, "%s: cannot map (errno %d)\n", path, r);
        return IDEFICS_ERR_IO;
    }
    idefics_status st = idfx_open(f, m->data, m->size, NULL, e);
    if (st != IDEFICS_OK) idf_unmap_file(m);
    return st;
}

static inline int finish(const char *name) {
    if (g_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, g_failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

#endif /* TEST_IDFX_UTIL_H */
