/*
 * board.c - board and memory profiles as data (boards/README.md):
 * idefics_board_apply() reads boards/NAME/board.ini, follows its [defaults]
 * "profile = ..." to a section of boards/memory-profiles.ini, and applies
 * that section, then the board's own [defaults] keys, to model and session
 * params. The files are untrusted text: size-capped, every key and value
 * checked, unknown keys are errors (a typo must not silently change nothing).
 *
 * Format: "[section]" lines, "key = value" lines, '#' starts a comment
 * anywhere on a line. Keys: n_ctx, kv_type (f32|f16|q8), low_memory (0|1), use_mmap (0|1),
 * n_threads, backend (auto|cpu|opencl|cpu-ref), parallel (1..64: sessions of a
 * batch, idefics_board_apply_batch; issue 11); in board.ini [defaults] also
 * profile. Other sections (build flags, notes) are for people, not parsed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_INI_BYTES (64 * 1024)

/* Read a whole small text file; NUL-terminated, caller frees. */
static idefics_status read_text(const idf_alloc *al, const char *path, char **out, idf_err *err) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return idf_errf(err, IDEFICS_ERR_IO, "board profile: cannot open %s: %s", path, strerror(errno));
    char *buf = idf_malloc(al, MAX_INI_BYTES + 1);
    if (!buf) {
        fclose(f);
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "board profile: out of memory reading %s", path);
    }
    size_t n = fread(buf, 1, MAX_INI_BYTES + 1, f);
    const bool bad = ferror(f);
    fclose(f);
    if (bad || n > MAX_INI_BYTES) {
        idf_free(al, buf);
        return idf_errf(err, bad ? IDEFICS_ERR_IO : IDEFICS_ERR_BAD_CONFIG, "board profile: %s %s", path,
                        bad ? "cannot be read" : "is larger than 64 KiB");
    }
    buf[n] = '\0';
    if (memchr(buf, '\0', n)) {
        idf_free(al, buf);
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "board profile: %s holds a NUL byte", path);
    }
    *out = buf;
    return IDEFICS_OK;
}

static char *trim(char *s) {
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) *--e = '\0';
    return s;
}

static bool parse_int(const char *v, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) return false;
    *out = (int)x;
    return true;
}

/* Apply one key. profile (board.ini only) is returned through *profile. */
static idefics_status apply_key(const char *file, int line, const char *k, const char *v, idefics_model_params *mp,
                                idefics_session_params *sp, char *profile, size_t profile_size, int *parallel,
                                idf_err *err) {
    int x;
    if (!strcmp(k, "parallel")) {
        if (!parse_int(v, 1, 64, &x)) goto bad;
        if (parallel) *parallel = x;
    } else if (!strcmp(k, "n_ctx")) {
        if (!parse_int(v, 0, 1 << 20, &x)) goto bad;
        if (sp) sp->n_ctx = x;
    } else if (!strcmp(k, "n_threads")) {
        if (!parse_int(v, 0, 4096, &x)) goto bad;
        if (sp) sp->n_threads = x;
        if (mp) mp->n_threads = x;
    } else if (!strcmp(k, "kv_type")) {
        idefics_kv_type t;
        if (!strcmp(v, "f32")) t = IDEFICS_KV_F32;
        else if (!strcmp(v, "f16")) t = IDEFICS_KV_F16;
        else if (!strcmp(v, "q8")) t = IDEFICS_KV_Q8;
        else goto bad;
        if (sp) sp->kv_type = t;
    } else if (!strcmp(k, "low_memory")) {
        if (!parse_int(v, 0, 1, &x)) goto bad;
        if (mp) mp->low_memory = x != 0;
    } else if (!strcmp(k, "use_mmap")) {
        if (!parse_int(v, 0, 1, &x)) goto bad;
        if (mp) mp->use_mmap = x != 0;
    } else if (!strcmp(k, "backend")) {
        idefics_backend b;
        if (!strcmp(v, "auto")) b = IDEFICS_BACKEND_AUTO;
        else if (!strcmp(v, "cpu")) b = IDEFICS_BACKEND_CPU;
        else if (!strcmp(v, "opencl")) b = IDEFICS_BACKEND_OPENCL;
        else if (!strcmp(v, "cpu-ref")) b = IDEFICS_BACKEND_CPU_REF;
        else goto bad;
        if (mp) mp->backend = b;
    } else if (!strcmp(k, "max_image_pixels")) { /* decode limit by memory (issue 15, point 5) */
        if (!parse_int(v, 1, 1 << 28, &x)) goto bad;
        if (sp) sp->max_image_pixels = x;
    } else if (profile && !strcmp(k, "profile")) {
        if (!*v || strlen(v) >= profile_size || strspn(v, "abcdefghijklmnopqrstuvwxyz0123456789-_.") != strlen(v))
            goto bad;
        memcpy(profile, v, strlen(v) + 1);
    } else {
        return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "board profile %s:%d: unknown key '%s'", file, line, k);
    }
    return IDEFICS_OK;
bad:
    return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "board profile %s:%d: bad value '%s' for %s", file, line, v, k);
}

/* Apply the keys of [section] in text (modified in place). *found tells
 * whether the section exists. */
static idefics_status apply_section(char *text, const char *file, const char *section, idefics_model_params *mp,
                                    idefics_session_params *sp, char *profile, size_t profile_size, int *parallel,
                                    bool *found, idf_err *err) {
    bool in = false;
    *found = false;
    int line = 0;
    for (char *p = text; p && *p;) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = '\0';
        line++;
        char *hash = strchr(p, '#');
        if (hash) *hash = '\0';
        char *s = trim(p);
        p = nl ? nl + 1 : NULL;
        if (!*s) continue;
        if (*s == '[') {
            char *close = strchr(s, ']');
            if (!close || close[1])
                return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "board profile %s:%d: bad section line", file, line);
            *close = '\0';
            in = !strcmp(trim(s + 1), section);
            *found = *found || in;
            continue;
        }
        if (!in) continue;
        char *eq = strchr(s, '=');
        if (!eq) return idf_errf(err, IDEFICS_ERR_BAD_CONFIG, "board profile %s:%d: expected key = value", file, line);
        *eq = '\0';
        IDF_FORWARD(apply_key(file, line, trim(s), trim(eq + 1), mp, sp, profile, profile_size, parallel, err));
    }
    return IDEFICS_OK;
}

static bool safe_name(const char *s) {
    return s && *s && strlen(s) < 64 && s[0] != '.' &&
           strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") == strlen(s);
}

/* par: receives the parallel key (left alone when the files have none). */
static idefics_status board_apply(const char *boards_dir, const char *name, idefics_model_params *mp,
                                  idefics_session_params *sp, int *par, char *errbuf, size_t errbuf_size) {
    idf_err err;
    idf_err_clear(&err);
    if (errbuf && errbuf_size) errbuf[0] = '\0';
    const idf_alloc al = {mp ? mp->allocator : (idefics_allocator){0}};
    idefics_status st = IDEFICS_OK;
    char path[4096], profile[64] = "";
    char *board_text = NULL, *prof_text = NULL;
    if (!boards_dir || !safe_name(name)) {
        st = idf_errf(&err, IDEFICS_ERR_INVALID_ARG, "board profile: need a boards folder and a plain name (got '%s')",
                      name ? name : "(null)");
        goto done;
    }
    /* NAME is a board (boards/NAME/board.ini) or directly a memory profile. */
    if (snprintf(path, sizeof path, "%s/%s/board.ini", boards_dir, name) >= (int)sizeof path) {
        st = idf_errf(&err, IDEFICS_ERR_INVALID_ARG, "board profile: path too long");
        goto done;
    }
    FILE *probe = fopen(path, "rb");
    if (probe) {
        fclose(probe);
        if ((st = read_text(&al, path, &board_text, &err))) goto done;
        /* first pass: find the profile name only (no params touched) */
        char *copy = idf_malloc(&al, strlen(board_text) + 1);
        if (!copy) {
            st = idf_errf(&err, IDEFICS_ERR_OUT_OF_MEMORY, "board profile: out of memory");
            goto done;
        }
        strcpy(copy, board_text);
        bool found;
        st = apply_section(copy, path, "defaults", NULL, NULL, profile, sizeof profile, NULL, &found, &err);
        idf_free(&al, copy);
        if (st) goto done;
        if (!found || !profile[0]) {
            st = idf_errf(&err, IDEFICS_ERR_BAD_CONFIG, "board profile %s: no [defaults] profile = ...", path);
            goto done;
        }
    } else {
        snprintf(profile, sizeof profile, "%s", name);
    }
    char ppath[4096];
    if (snprintf(ppath, sizeof ppath, "%s/memory-profiles.ini", boards_dir) >= (int)sizeof ppath) {
        st = idf_errf(&err, IDEFICS_ERR_INVALID_ARG, "board profile: path too long");
        goto done;
    }
    if ((st = read_text(&al, ppath, &prof_text, &err))) goto done;
    /* Validate both before touching the caller's params: apply to copies. */
    idefics_model_params m2 = mp ? *mp : idefics_model_default_params();
    idefics_session_params s2 = sp ? *sp : idefics_session_default_params();
    int p2 = par ? *par : 0;
    bool found;
    if ((st = apply_section(prof_text, ppath, profile, &m2, &s2, NULL, 0, &p2, &found, &err))) goto done;
    if (!found) {
        st = idf_errf(&err, board_text ? IDEFICS_ERR_BAD_CONFIG : IDEFICS_ERR_INVALID_ARG,
                      "board profile: '%s' is neither a board in %s nor a section of %s", profile, boards_dir, ppath);
        goto done;
    }
    if (board_text &&
        (st = apply_section(board_text, path, "defaults", &m2, &s2, profile, sizeof profile, &p2, &found, &err)))
        goto done;
    if (mp) *mp = m2;
    if (sp) *sp = s2;
    if (par) *par = p2;
done:
    idf_free(&al, board_text);
    idf_free(&al, prof_text);
    if (st) idf_err_copy(&err, errbuf, errbuf_size);
    return st;
}

idefics_status idefics_board_apply(const char *boards_dir, const char *name, idefics_model_params *mp,
                                   idefics_session_params *sp, char *errbuf, size_t errbuf_size) {
    return board_apply(boards_dir, name, mp, sp, NULL, errbuf, errbuf_size);
}

idefics_status idefics_board_apply_batch(const char *boards_dir, const char *name, idefics_batch_params *bp,
                                         char *errbuf, size_t errbuf_size) {
    int par = bp ? bp->max_sessions : 0;
    const idefics_status st = board_apply(boards_dir, name, NULL, NULL, &par, errbuf, errbuf_size);
    if (st == IDEFICS_OK && bp) bp->max_sessions = par;
    return st;
}
