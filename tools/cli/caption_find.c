/*
 * caption_find.c - which files `idefics caption` reads.
 *
 * Arguments keep their order. A folder contributes its entries sorted
 * bytewise (strcmp, independent of the locale), files by image extension;
 * with -r its subfolders are entered in place. A folder is identified by
 * (st_dev, st_ino): one already visited (a symlink loop, or the same folder
 * named twice) is skipped and counted, so recursion always ends. Hidden
 * entries (leading '.') are skipped unless --hidden. A folder entry that is
 * neither a folder nor a regular file (FIFO, socket, device) but has an image
 * name is kept, so the caption loop gives it an error record; opening is left
 * to that loop (O_NONBLOCK + fstat), never done here. Files named explicitly,
 * on the command line or in --files-from, are always tried.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "caption.h"

bool cap_is_image_name(const char *name) {
    static const char *exts[] = {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pnm",
                                 ".webp", ".heic", ".heif", ".hif", ".tif", ".tiff"};
    const char *dot = strrchr(name, '.');
    if (!dot || dot == name) return false;
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
        if (!strcasecmp(dot, exts[i])) return true;
    return false;
}

static bool push(cap_inputs *in, const char *a, size_t an, const char *b) {
    if (in->n == in->cap) {
        size_t cap = in->cap ? in->cap * 2 : 64;
        cap_input *v = realloc(in->v, cap * sizeof *v);
        if (!v) return false;
        in->v = v;
        in->cap = cap;
    }
    size_t bn = b ? strlen(b) : 0;
    bool slash = b && an > 0 && a[an - 1] != '/';
    char *p = malloc(an + slash + bn + 1);
    if (!p) return false;
    memcpy(p, a, an);
    if (slash) p[an] = '/';
    if (b) memcpy(p + an + slash, b, bn);
    p[an + slash + bn] = '\0';
    in->v[in->n++] = (cap_input){p, an + slash + bn};
    return true;
}

void cap_inputs_free(cap_inputs *in) {
    for (size_t i = 0; i < in->n; i++) free(in->v[i].path);
    free(in->v);
    memset(in, 0, sizeof *in);
}

typedef struct dev_ino {
    dev_t dev;
    ino_t ino;
} dev_ino;

typedef struct walker {
    const cap_find_opts *o;
    cap_inputs *in;
    dev_ino *seen;
    size_t n_seen, cap_seen;
} walker;

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* false only when out of memory */
static bool walk(walker *w, const char *dir, int depth) {
    struct stat ds;
    if (stat(dir, &ds) != 0) {
        fprintf(stderr, "idefics caption: cannot read folder %s: %s\n", dir, strerror(errno));
        w->in->n_unreadable++;
        return true;
    }
    for (size_t i = 0; i < w->n_seen; i++)
        if (w->seen[i].dev == ds.st_dev && w->seen[i].ino == ds.st_ino) {
            if (w->o->verbose) fprintf(stderr, "idefics caption: %s: folder already visited (symlink loop?)\n", dir);
            w->in->n_loops++;
            return true;
        }
    if (w->n_seen == w->cap_seen) {
        size_t cap = w->cap_seen ? w->cap_seen * 2 : 32;
        dev_ino *v = realloc(w->seen, cap * sizeof *v);
        if (!v) return false;
        w->seen = v;
        w->cap_seen = cap;
    }
    w->seen[w->n_seen++] = (dev_ino){ds.st_dev, ds.st_ino};

    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "idefics caption: cannot read folder %s: %s\n", dir, strerror(errno));
        w->in->n_unreadable++;
        return true;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    bool ok = true;
    struct dirent *e;
    while (ok && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (e->d_name[0] == '.' && !w->o->hidden) {
            w->in->n_hidden++;
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **v = realloc(names, cap * sizeof *v);
            if (!v) {
                ok = false;
                break;
            }
            names = v;
        }
        if (!(names[n] = strdup(e->d_name))) ok = false;
        else n++;
    }
    closedir(d);
    if (ok && n) qsort(names, n, sizeof *names, cmp_name);
    size_t dl = strlen(dir);
    cap_inputs sub = {0};
    for (size_t i = 0; ok && i < n; i++) {
        /* stat (not lstat): a symlink to a folder is followed, the loop check above ends cycles */
        if (!push(&sub, dir, dl, names[i])) {
            ok = false;
            break;
        }
        char *full = sub.v[--sub.n].path;
        struct stat st;
        bool have = stat(full, &st) == 0;
        if (have && S_ISDIR(st.st_mode)) {
            if (w->o->recursive) ok = walk(w, full, depth + 1);
            else if (w->o->verbose) fprintf(stderr, "idefics caption: %s: a folder (use -r)\n", full);
            free(full);
        } else if (cap_is_image_name(names[i])) {
            if (!push(w->in, full, strlen(full), NULL)) ok = false;
            free(full);
        } else {
            w->in->n_non_images++;
            if (w->o->verbose) fprintf(stderr, "idefics caption: %s: not an image name, not read\n", full);
            free(full);
        }
    }
    free(sub.v);
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return ok;
}

/* Reads names from LIST ("-" = stdin), newline- or NUL-separated. */
static bool files_from(const cap_find_opts *o, walker *w) {
    FILE *f = strcmp(o->files_from, "-") ? fopen(o->files_from, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "idefics caption: cannot open --files-from %s: %s\n", o->files_from, strerror(errno));
        return false;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    bool ok = true;
    int sep = o->null_sep ? '\0' : '\n';
    while (ok && (len = getdelim(&line, &cap, sep, f)) >= 0) {
        if (len > 0 && line[len - 1] == sep) line[--len] = '\0';
        if (!o->null_sep && len > 0 && line[len - 1] == '\r') line[--len] = '\0';
        if (len == 0) continue;
        if (strlen(line) != (size_t)len) { /* a NUL inside a newline-separated name */
            fprintf(stderr, "idefics caption: --files-from: a name holds a NUL byte (use -0)\n");
            continue;
        }
        struct stat st;
        if (stat(line, &st) == 0 && S_ISDIR(st.st_mode)) ok = walk(w, line, 0);
        else ok = push(w->in, line, (size_t)len, NULL);
    }
    if (ferror(f)) {
        fprintf(stderr, "idefics caption: error reading --files-from %s\n", o->files_from);
        ok = false;
    }
    free(line);
    if (f != stdin) fclose(f);
    return ok;
}

bool cap_find(char **args, int n_args, const cap_find_opts *o, cap_inputs *out) {
    memset(out, 0, sizeof *out);
    walker w = {.o = o, .in = out};
    bool ok = true;
    for (int i = 0; ok && i < n_args; i++) {
        struct stat st;
        if (stat(args[i], &st) == 0 && S_ISDIR(st.st_mode)) ok = walk(&w, args[i], 0);
        else ok = push(out, args[i], strlen(args[i]), NULL); /* missing or special: an error record later */
    }
    if (ok && o->files_from) ok = files_from(o, &w);
    free(w.seen);
    if (!ok && !o->files_from) fprintf(stderr, "idefics caption: out of memory listing the inputs\n");
    return ok;
}
