/*
 * cmd_caption.c - `idefics caption`: alt text for images and folders of images.
 *
 * Each argument is an image file or a folder; a folder contributes its image
 * files (by extension, not recursive, sorted by name). Every image is
 * captioned in a fresh conversation (the session is reset in between) with
 * the model's caption prompt: the chat.caption_prompt metadata when the file
 * has it, else "Describe the image."; -p overrides both. Results go to stdout,
 * one line per image ("PATH: CAPTION", or with --json one JSON object per line:
 * {"path", "caption", "ms"}). An image that cannot be read or captioned is
 * skipped with a message on stderr and the batch goes on. On a terminal,
 * stderr shows a progress bar. Exit status: 0 when at least one image was
 * captioned, 1 when none was, 2 on a usage error, 130 after Ctrl-C.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "idefics.h"
#include "idfx_keys.h"
#include "idfx_reader.h"
#include "model.h" /* the open file's metadata, for chat.caption_prompt */

#define CAPTION_DEFAULT_PROMPT "Describe the image."
#define CAPTION_DEFAULT_TOKENS 48

typedef struct caption_opts {
    const char *model;
    const char *prompt; /* NULL = from the model */
    char **inputs;
    int n_inputs;
    int n_predict, n_threads;
    idefics_backend backend;
    bool json, verbose;
} caption_opts;

/* A growable list of owned path strings. */
typedef struct path_list {
    char **v;
    size_t n, cap;
} path_list;

static idefics_session *volatile g_captioning; /* Ctrl-C target; see cmd_ask.c */
static volatile sig_atomic_t g_stop;

static void on_sigint(int sig) {
    (void)sig;
    g_stop = 1;
    idefics_session *s = g_captioning;
    if (s) idefics_session_cancel(s);
}

static void log_stderr(void *ud, idefics_log_level level, const char *msg) {
    (void)ud;
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "idefics: %s: %s\n", names[level >= 0 && level <= 3 ? level : 0], msg);
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: idefics caption -m MODEL [options] IMAGE|DIR [IMAGE|DIR ...]\n\n"
            "Writes alt text for each image; a folder means its image files (not recursive,\n"
            "sorted by name). Unreadable files are skipped with a message on stderr.\n\n"
            "  -m, --model PATH        model file (.idfx)\n"
            "  -p, --prompt TEXT       the caption question (default: the model's caption\n"
            "                          prompt, else \"" CAPTION_DEFAULT_PROMPT "\")\n"
            "  -n, --n-predict N       most tokens per caption (default %d)\n"
            "  -t, --threads N         compute threads (default: all cores)\n"
            "      --backend NAME      auto | cpu | cpu-ref | opencl (default auto)\n"
            "      --json              JSON Lines: {\"path\", \"caption\", \"ms\"} per image\n"
            "  -v, --verbose           log progress and timings to stderr\n\n"
            "Exit status: 0 if at least one image was captioned, 1 if none, 2 on usage errors.\n",
            CAPTION_DEFAULT_TOKENS);
}

static bool parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

/* Returns 0 when parsed, 1 when help was printed, 2 on a usage error. */
static int parse_opts(int argc, char **argv, caption_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_predict = CAPTION_DEFAULT_TOKENS;
    o->backend = IDEFICS_BACKEND_AUTO;
    o->inputs = calloc((size_t)argc, sizeof *o->inputs);
    if (!o->inputs) {
        fprintf(stderr, "idefics caption: out of memory\n");
        return 2;
    }
    bool only_paths = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true;
        if (only_paths || a[0] != '-' || !a[1]) {
            o->inputs[o->n_inputs++] = argv[i];
            continue;
        }
        if (!strcmp(a, "--")) {
            only_paths = true;
            continue;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(a, "--json")) {
            o->json = true;
            continue;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = true;
            continue;
        } else if (!v) {
            fprintf(stderr, "idefics caption: %s needs a value (or is unknown)\n", a);
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            o->model = v;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            o->prompt = v;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            ok = parse_int(v, 1, INT_MAX, &o->n_predict);
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            ok = parse_int(v, 0, 4096, &o->n_threads);
        } else if (!strcmp(a, "--backend")) {
            if (!strcmp(v, "auto")) o->backend = IDEFICS_BACKEND_AUTO;
            else if (!strcmp(v, "cpu")) o->backend = IDEFICS_BACKEND_CPU;
            else if (!strcmp(v, "cpu-ref")) o->backend = IDEFICS_BACKEND_CPU_REF;
            else if (!strcmp(v, "opencl")) o->backend = IDEFICS_BACKEND_OPENCL;
            else ok = false;
        } else {
            fprintf(stderr, "idefics caption: unknown option %s\n\n", a);
            usage(stderr);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "idefics caption: bad value for %s: '%s'\n", a, v);
            return 2;
        }
        i++;
    }
    if (!o->model) {
        fprintf(stderr, "idefics caption: -m MODEL is required\n\n");
        usage(stderr);
        return 2;
    }
    if (o->n_inputs == 0) {
        fprintf(stderr, "idefics caption: give at least one image or folder\n\n");
        usage(stderr);
        return 2;
    }
    return 0;
}

/* ---- collecting the inputs */

static bool list_push(path_list *l, const char *a, const char *b) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        char **v = realloc(l->v, cap * sizeof *v);
        if (!v) return false;
        l->v = v;
        l->cap = cap;
    }
    size_t na = strlen(a), nb = b ? strlen(b) : 0;
    bool slash = b && na > 0 && a[na - 1] != '/';
    char *p = malloc(na + slash + nb + 1);
    if (!p) return false;
    memcpy(p, a, na);
    if (slash) p[na] = '/';
    if (b) memcpy(p + na + slash, b, nb);
    p[na + slash + nb] = '\0';
    l->v[l->n++] = p;
    return true;
}

static void list_free(path_list *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
}

static bool is_image_name(const char *name) {
    static const char *exts[] = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".pnm", ".pbm"};
    if (name[0] == '.') return false; /* hidden files */
    const char *dot = strrchr(name, '.');
    if (!dot) return false;
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
        if (!strcasecmp(dot, exts[i])) return true;
    return false;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Appends the folder's image files, sorted. Returns false only when out of memory. */
static bool add_folder(path_list *l, const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "idefics caption: skipping %s: %s\n", dir, strerror(errno));
        return true;
    }
    path_list names = {0};
    bool ok = true;
    struct dirent *e;
    while (ok && (e = readdir(d))) {
        if (!is_image_name(e->d_name)) continue;
        ok = list_push(&names, e->d_name, NULL);
    }
    closedir(d);
    if (ok && names.n == 0) fprintf(stderr, "idefics caption: no image files in %s\n", dir);
    if (ok && names.n) qsort(names.v, names.n, sizeof *names.v, cmp_str);
    for (size_t i = 0; ok && i < names.n; i++) ok = list_push(l, dir, names.v[i]);
    list_free(&names);
    return ok;
}

/* ---- output */

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if (*p == '\r') fputs("\\r", f);
        else if (*p == '\t') fputs("\\t", f);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

typedef struct progress {
    bool on;
    size_t total;
} progress;

static void progress_clear(const progress *p) {
    if (p->on) fputs("\r\033[K", stderr);
}

static void progress_draw(const progress *p, size_t done, const char *path) {
    if (!p->on) return;
    enum { WIDTH = 24 };
    size_t fill = p->total ? done * WIDTH / p->total : WIDTH;
    char bar[WIDTH + 1];
    for (size_t i = 0; i < WIDTH; i++) bar[i] = i < fill ? '#' : '.';
    bar[WIDTH] = '\0';
    const char *base = path ? strrchr(path, '/') : NULL;
    base = base ? base + 1 : path;
    fprintf(stderr, "\r\033[K[%s] %zu/%zu%s%.40s", bar, done, p->total, base ? " " : "", base ? base : "");
    fflush(stderr);
}

/* ---- captioning */

typedef struct text_buf {
    char *s;
    size_t len, cap;
    bool oom;
} text_buf;

static bool on_token(void *ud, int32_t token, const char *piece) {
    (void)token;
    text_buf *t = ud;
    size_t n = strlen(piece);
    if (t->len + n + 1 > t->cap) {
        size_t cap = (t->cap ? t->cap * 2 : 128) + n;
        char *s = realloc(t->s, cap);
        if (!s) {
            t->oom = true;
            return false;
        }
        t->s = s;
        t->cap = cap;
    }
    memcpy(t->s + t->len, piece, n + 1);
    t->len += n;
    return true;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The prompt: -p, else the model's chat.caption_prompt, else the default. The
 * returned string is owned by the caller. */
static char *caption_prompt(const caption_opts *o, const idefics_model *model) {
    if (o->prompt) return strdup(o->prompt);
    const char *s;
    uint32_t len;
    if (idfx_find_kv(&model->file, IDFX_KEY_CHAT_CAPTION) &&
        idfx_get_str(&model->file, IDFX_KEY_CHAT_CAPTION, &s, &len, NULL) == IDEFICS_OK && len > 0) {
        char *p = malloc((size_t)len + 1);
        if (p) {
            memcpy(p, s, len);
            p[len] = '\0';
        }
        return p;
    }
    return strdup(CAPTION_DEFAULT_PROMPT);
}

/* Captions one image into t (trimmed). Returns IDEFICS_OK or the failing status,
 * with the message printed. */
static idefics_status caption_one(idefics_session *s, const char *path, const char *prompt,
                                  const idefics_generate_params *gen, text_buf *t) {
    t->len = 0;
    t->oom = false;
    if (t->s) t->s[0] = '\0';
    idefics_session_reset(s);
    idefics_status st = idefics_add_image_file(s, path);
    if (st == IDEFICS_OK) st = idefics_add_user_turn(s, prompt);
    if (st == IDEFICS_OK) {
        g_captioning = s;
        st = idefics_generate(s, gen, on_token, t);
        g_captioning = NULL;
        if (st == IDEFICS_OK && t->oom) st = IDEFICS_ERR_OUT_OF_MEMORY;
    }
    if (st != IDEFICS_OK) return st;
    size_t a = 0, b = t->len;
    while (a < b && (t->s[a] == ' ' || t->s[a] == '\n' || t->s[a] == '\t')) a++;
    while (b > a && (t->s[b - 1] == ' ' || t->s[b - 1] == '\n' || t->s[b - 1] == '\t')) b--;
    if (t->s) {
        memmove(t->s, t->s + a, b - a);
        t->s[b - a] = '\0';
        t->len = b - a;
    }
    return IDEFICS_OK;
}

int cmd_caption(int argc, char **argv) {
    caption_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc) {
        free(o.inputs);
        return rc == 1 ? 0 : rc;
    }

    path_list paths = {0};
    bool ok = true;
    for (int i = 0; ok && i < o.n_inputs; i++) {
        struct stat st;
        if (stat(o.inputs[i], &st) == 0 && S_ISDIR(st.st_mode)) ok = add_folder(&paths, o.inputs[i]);
        else ok = list_push(&paths, o.inputs[i], NULL); /* files, and missing paths: reported when read */
    }
    free(o.inputs);
    if (!ok) {
        fprintf(stderr, "idefics caption: out of memory\n");
        list_free(&paths);
        return 1;
    }
    if (paths.n == 0) {
        fprintf(stderr, "idefics caption: nothing to caption\n");
        list_free(&paths);
        return 1;
    }

    idefics_model_params mp = idefics_model_default_params();
    mp.log = log_stderr;
    mp.log_level = o.verbose ? IDEFICS_LOG_INFO : IDEFICS_LOG_WARN;
    mp.n_threads = o.n_threads;
    mp.backend = o.backend;
    char err[512];
    idefics_model *model = NULL;
    idefics_status st = idefics_model_load(o.model, &mp, &model, err, sizeof err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics caption: cannot load %s: %s (%s)\n", o.model, err, idefics_status_str(st));
        list_free(&paths);
        return 1;
    }
    idefics_session_params sp = idefics_session_default_params();
    sp.n_threads = o.n_threads;
    idefics_session *s = NULL;
    st = idefics_session_create(model, &sp, &s, err, sizeof err);
    char *prompt = st == IDEFICS_OK ? caption_prompt(&o, model) : NULL;
    if (st != IDEFICS_OK || !prompt) {
        if (st != IDEFICS_OK)
            fprintf(stderr, "idefics caption: cannot create a session: %s (%s)\n", err, idefics_status_str(st));
        else fprintf(stderr, "idefics caption: out of memory\n");
        idefics_session_free(s);
        idefics_model_free(model);
        list_free(&paths);
        return 1;
    }
    if (o.verbose) fprintf(stderr, "idefics caption: prompt \"%s\", %zu image(s)\n", prompt, paths.n);

    idefics_generate_params gen = idefics_generate_default_params();
    gen.max_new_tokens = o.n_predict;
    progress bar = {.on = isatty(STDERR_FILENO) && !o.verbose, .total = paths.n};
    text_buf t = {0};
    size_t n_ok = 0, n_skipped = 0;
    g_stop = 0;
    void (*old)(int) = signal(SIGINT, on_sigint);
    for (size_t i = 0; i < paths.n && !g_stop; i++) {
        progress_draw(&bar, i, paths.v[i]);
        double t0 = now_ms();
        st = caption_one(s, paths.v[i], prompt, &gen, &t);
        double ms = now_ms() - t0;
        progress_clear(&bar);
        if (st == IDEFICS_ERR_CANCELLED || g_stop) break;
        if (st != IDEFICS_OK) {
            fprintf(stderr, "idefics caption: skipping %s: %s (%s)\n", paths.v[i], idefics_session_last_error(s),
                    idefics_status_str(st));
            n_skipped++;
            continue;
        }
        if (o.json) {
            printf("{\"path\":");
            json_string(stdout, paths.v[i]);
            printf(",\"caption\":");
            json_string(stdout, t.s ? t.s : "");
            printf(",\"ms\":%.1f}\n", ms);
        } else {
            printf("%s: %s\n", paths.v[i], t.s ? t.s : "");
        }
        fflush(stdout);
        n_ok++;
        if (o.verbose) fprintf(stderr, "idefics caption: %s in %.1f ms\n", paths.v[i], ms);
    }
    signal(SIGINT, old == SIG_ERR ? SIG_DFL : old);
    progress_clear(&bar);
    if (g_stop) fprintf(stderr, "idefics caption: interrupted after %zu image(s)\n", n_ok);
    else if (n_skipped || o.verbose)
        fprintf(stderr, "idefics caption: %zu captioned, %zu skipped\n", n_ok, n_skipped);

    free(t.s);
    free(prompt);
    idefics_session_free(s);
    idefics_model_free(model);
    list_free(&paths);
    if (g_stop) return 130;
    return n_ok > 0 ? 0 : 1;
}
