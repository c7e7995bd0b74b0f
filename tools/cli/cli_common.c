/*
 * cli_common.c - the parts of `idefics ask` and `idefics chat` they share
 * (cli_common.h). Public API only: this file is compiled without the
 * runtime's include folder.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli_common.h"
#include "cli_faults.h"

/* ------------------------------------------------------------ logging */

/* The load error is printed once, by the CLI from errbuf: while loading, the
 * library's ERROR lines (the same text) are dropped. */
typedef struct log_state {
    bool loading;
} log_state;

static void log_stderr(void *ud, idefics_log_level level, const char *msg) {
    const log_state *ls = ud;
    if (ls && ls->loading && level == IDEFICS_LOG_ERROR) return;
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "idefics: %s: ", names[level >= 0 && level <= 3 ? level : 0]);
    cli_put_escaped(stderr, msg); /* messages quote model names and paths: no raw escape codes */
    fputc('\n', stderr);
}

/* ------------------------------------------------------------ options */

void cli_usage_common(FILE *f, bool ask) {
    fprintf(f,
            "  -n, --n-predict N       most tokens to generate (default 64%s)\n"
            "      --temp T            temperature; 0 = greedy (default 0)\n"
            "      --top-k K           keep the K most likely tokens; 0 = off\n"
            "      --top-p P           nucleus sampling mass; 1 = off\n"
            "      --seed S            sampling seed (default: random, printed when sampling so a run\n"
            "                          can be repeated)\n"
            "      --repeat-penalty R  HF repetition penalty; 1 = off\n"
            "  -t, --threads N         compute threads (default: all cores)\n"
            "  -c, --ctx-size N        context length in tokens (default: the model's)\n"
            "      --kv-type T         KV cache element type: f32 | f16 | q8 (default f16; f32 follows\n"
            "                          transformers most closely at near-ties)\n"
            "      --backend NAME      auto | cpu | cpu-ref | opencl (default auto)\n"
            "      --board NAME        defaults for a board or memory profile (boards/; env IDEFICS_BOARD):\n"
            "                          n_ctx (clamped to the model's maximum), KV type, low_memory,\n"
            "                          threads, backend; flags given override them\n"
            "      --low-memory        let the OS page weights in and out of the model file per layer\n"
            "      --no-mmap           read the weights into memory instead of mapping the file (faster\n"
            "                          decode where the page cache uses 4 KB pages; RSS = file size)\n"
            "      --device D          OpenCL device: index or name substring (idefics devices lists them)\n"
            "      --max-image-pixels N  image decode limit (default: the board's, else the library's)\n"
            "      --no-exif-orientation  do not turn images upright by their EXIF tag\n"
            "      --verify            check the whole model file at load (default: first load of a file only)\n"
            "      --no-verify         skip that check\n"
            "  -v, --verbose           log progress, the prompt and timings to stderr\n"
            "  -h, --help              this text\n",
            ask ? "" : " per answer");
}

static bool parse_int(const char *s, long lo, long hi, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return false;
    *out = (int)v;
    return true;
}

static bool parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v != v) return false;
    *out = (float)v;
    return true;
}

/* Every option, so that "unknown" and "needs a value" can be told apart. */
typedef struct flag {
    const char *s, *l;
    bool takes;
    bool ask_only;
} flag;

static const flag flags[] = {
    {"-h", "--help", false, false},        {NULL, "--json", false, true},
    {"-v", "--verbose", false, false},     {NULL, "--low-memory", false, false},
    {NULL, "--no-mmap", false, false},
    {NULL, "--raw", false, true},          {NULL, "--dry-run", false, true},
    {"-m", "--model", true, false},        {"-i", "--image", true, false},
    {"-p", "--prompt", true, true},        {"-f", "--prompt-file", true, true},
    {"-n", "--n-predict", true, false},    {NULL, "--temp", true, false},
    {NULL, "--top-k", true, false},        {NULL, "--top-p", true, false},
    {NULL, "--seed", true, false},         {NULL, "--repeat-penalty", true, false},
    {"-t", "--threads", true, false},      {"-c", "--ctx-size", true, false},
    {NULL, "--board", true, false},        {NULL, "--backend", true, false},
    {NULL, "--device", true, false},       {NULL, "--kv-type", true, false},
    {NULL, "--max-image-pixels", true, false}, {NULL, "--no-exif-orientation", false, false},
    {NULL, "--verify", false, false},      {NULL, "--no-verify", false, false},
};

static const flag *find_flag(const char *a) {
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if ((flags[i].s && !strcmp(a, flags[i].s)) || !strcmp(a, flags[i].l)) return &flags[i];
    return NULL;
}

/* A seed nobody chose: from the kernel's entropy, else the clock and pid. */
static uint64_t random_seed(void) {
    uint64_t s = 0;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, &s, sizeof s);
        close(fd);
        if (n == (ssize_t)sizeof s) return s & 0xffffffffu; /* short enough to retype */
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid()) & 0xffffffffu;
}

static bool add_item(cli_opts *o, bool is_image, const char *v, bool owned) {
    if (o->n_items == CLI_MAX_ITEMS) {
        fprintf(stderr, "idefics %s: more than %d -i/-p items\n", o->cmd, CLI_MAX_ITEMS);
        return false;
    }
    o->items[o->n_items++] = (cli_item){is_image, v, owned};
    if (is_image) o->n_images++;
    else o->n_texts++;
    return true;
}

char *cli_read_text_file(const char *cmd, const char *path) {
    FILE *f = !strcmp(path, "-") ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "idefics %s: cannot open %s: %s\n", cmd, path, strerror(errno));
        return NULL;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 >= cap) {
            if (cap > ((size_t)64 << 20)) {
                fprintf(stderr, "idefics %s: %s: over 64 MiB of text\n", cmd, path);
                free(buf);
                buf = NULL;
                break;
            }
            char *t = realloc(buf, cap * 2);
            if (!t) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = t, cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - 1 - len, f);
        len += n;
        if (n == 0) break;
    }
    bool err = ferror(f);
    if (f != stdin) fclose(f);
    if (!buf) {
        fprintf(stderr, "idefics %s: %s: out of memory\n", cmd, path);
        return NULL;
    }
    if (err) {
        fprintf(stderr, "idefics %s: cannot read %s\n", cmd, path);
        free(buf);
        return NULL;
    }
    /* an editor's final line break is not part of the prompt ("...Assistant:" must end it) */
    if (len && buf[len - 1] == '\n') len--;
    if (len && buf[len - 1] == '\r') len--;
    buf[len] = '\0';
    if (strlen(buf) != len) {
        fprintf(stderr, "idefics %s: %s: holds a NUL byte; a prompt is text\n", cmd, path);
        free(buf);
        return NULL;
    }
    return buf;
}

void cli_opts_free(cli_opts *o) {
    for (int i = 0; i < o->n_items; i++)
        if (o->items[i].owned) free((char *)o->items[i].value);
    o->n_items = 0;
}

int cli_parse(int argc, char **argv, const char *cmd, void (*usage)(FILE *), cli_opts *o) {
    memset(o, 0, sizeof *o);
    o->cmd = cmd;
    o->gen = idefics_generate_default_params();
    o->backend = IDEFICS_BACKEND_AUTO;
    o->kv_type = idefics_session_default_params().kv_type;
    o->verify = -1;
    bool ask = !strcmp(cmd, "ask");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const flag *fl = find_flag(a);
        if (!fl || (fl->ask_only && !ask)) {
            if (fl) fprintf(stderr, "idefics %s: %s belongs to `idefics ask`\n", cmd, a);
            else if (a[0] == '-' && a[1]) fprintf(stderr, "idefics %s: unknown option %s\n", cmd, a);
            else fprintf(stderr, "idefics %s: unexpected argument '%s' (a question goes after -p)\n", cmd, a);
            fprintf(stderr, "run `idefics %s --help` for the options\n", cmd);
            cli_opts_free(o);
            return 2;
        }
        const char *v = NULL;
        if (fl->takes) {
            if (i + 1 >= argc) {
                fprintf(stderr, "idefics %s: %s needs a value\n", cmd, a);
                cli_opts_free(o);
                return 2;
            }
            v = argv[++i];
        }
        const char *l = fl->l;
        bool ok = true;
        if (!strcmp(l, "--help")) {
            usage(stdout);
            cli_opts_free(o);
            return 1;
        } else if (!strcmp(l, "--json")) o->json = true;
        else if (!strcmp(l, "--verbose")) o->verbose = true;
        else if (!strcmp(l, "--low-memory")) o->low_memory = true;
        else if (!strcmp(l, "--no-mmap")) o->no_mmap = true;
        else if (!strcmp(l, "--no-exif-orientation")) o->no_exif = true;
        else if (cli_verify_flag(l) >= 0) o->verify = cli_verify_flag(l);
        else if (!strcmp(l, "--max-image-pixels")) {
            char *end;
            errno = 0;
            long long px = strtoll(v, &end, 10);
            ok = !errno && end != v && !*end && px > 0;
            o->max_image_pixels = px;
        }
        else if (!strcmp(l, "--raw")) o->raw = true;
        else if (!strcmp(l, "--dry-run")) o->dry_run = true;
        else if (!strcmp(l, "--model")) o->model = v;
        else if (!strcmp(l, "--image")) ok = add_item(o, true, v, false) || (cli_opts_free(o), 0);
        else if (!strcmp(l, "--prompt")) ok = add_item(o, false, v, false) || (cli_opts_free(o), 0);
        else if (!strcmp(l, "--prompt-file")) {
            char *t = cli_read_text_file(cmd, v);
            if (!t || !add_item(o, false, t, true)) {
                free(t);
                cli_opts_free(o);
                return 2;
            }
        } else if (!strcmp(l, "--n-predict")) ok = parse_int(v, 0, INT_MAX, &o->gen.max_new_tokens);
        else if (!strcmp(l, "--temp")) ok = parse_float(v, &o->gen.temperature) && o->gen.temperature >= 0;
        else if (!strcmp(l, "--top-k")) ok = parse_int(v, 0, INT_MAX, &o->gen.top_k);
        else if (!strcmp(l, "--top-p")) ok = parse_float(v, &o->gen.top_p) && o->gen.top_p > 0 && o->gen.top_p <= 1;
        else if (!strcmp(l, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 0);
            ok = !errno && end != v && !*end && v[0] != '-';
            o->gen.seed = s;
            o->seed_set = true;
        } else if (!strcmp(l, "--repeat-penalty"))
            ok = parse_float(v, &o->gen.repetition_penalty) && o->gen.repetition_penalty > 0;
        else if (!strcmp(l, "--threads")) ok = parse_int(v, 0, 4096, &o->n_threads), o->set_threads = true;
        else if (!strcmp(l, "--ctx-size")) ok = parse_int(v, 0, 1 << 24, &o->n_ctx), o->set_ctx = true;
        else if (!strcmp(l, "--board")) o->board = v;
        else if (!strcmp(l, "--device")) o->device = v;
        else if (!strcmp(l, "--kv-type")) {
            if (!strcmp(v, "f32")) o->kv_type = IDEFICS_KV_F32;
            else if (!strcmp(v, "f16")) o->kv_type = IDEFICS_KV_F16;
            else if (!strcmp(v, "q8")) o->kv_type = IDEFICS_KV_Q8;
            else ok = false;
            o->set_kv = true;
        } else if (!strcmp(l, "--backend")) {
            if (!strcmp(v, "auto")) o->backend = IDEFICS_BACKEND_AUTO;
            else if (!strcmp(v, "cpu")) o->backend = IDEFICS_BACKEND_CPU;
            else if (!strcmp(v, "cpu-ref")) o->backend = IDEFICS_BACKEND_CPU_REF;
            else if (!strcmp(v, "opencl")) o->backend = IDEFICS_BACKEND_OPENCL;
            else ok = false;
            o->set_backend = true;
        }
        if (!ok) {
            if (o->n_items) cli_opts_free(o);
            fprintf(stderr, "idefics %s: bad value for %s: '%s'\n", cmd, a, v ? v : "");
            return 2;
        }
    }
    if (!o->model) {
        fprintf(stderr, "idefics %s: -m MODEL is required\n\n", cmd);
        usage(stderr);
        cli_opts_free(o);
        return 2;
    }
    if (!o->seed_set) o->gen.seed = random_seed();
    return 0;
}

int cli_split_markers(const char *text, int (*on_text)(void *ud, const char *p, size_t n),
                      int (*on_image)(void *ud, const char *path), void *ud) {
    const char *p = text, *run = text; /* run: start of the pending text */
    for (;;) {
        const char *m = strstr(p, "<img:");
        const char *end = m ? strchr(m + 5, '>') : NULL;
        if (!m || !end) break; /* no (complete) marker left: the rest is text */
        if (end == m + 5) {    /* "<img:>": no path, so text */
            p = m + 5;
            continue;
        }
        int rc = m > run ? on_text(ud, run, (size_t)(m - run)) : 0;
        if (rc) return rc;
        size_t plen = (size_t)(end - (m + 5));
        char *path = malloc(plen + 1);
        if (!path) return -1;
        memcpy(path, m + 5, plen);
        path[plen] = '\0';
        rc = on_image(ud, path);
        free(path);
        if (rc) return rc;
        p = run = end + 1;
    }
    size_t n = strlen(run);
    return n ? on_text(ud, run, n) : 0;
}

/* ------------------------------------------------------------ model */

/* The boards/ folder: $IDEFICS_BOARDS_DIR, else the installed copy, else the source tree's. */
static const char *boards_dir(void) {
    const char *e = getenv("IDEFICS_BOARDS_DIR");
    if (e && *e) return e;
    if (access(IDF_BOARDS_INSTALL_DIR "/memory-profiles.ini", R_OK) == 0) return IDF_BOARDS_INSTALL_DIR;
    return IDF_BOARDS_SOURCE_DIR;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* For an unknown --board: the boards (folders with a board.ini) and the memory
 * profiles ([sections] of memory-profiles.ini) that exist. */
static void list_boards(FILE *f, const char *dir) {
    char *names[128];
    int n = 0;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && n < 64) {
            if (e->d_name[0] == '.') continue;
            char p[4096];
            if (snprintf(p, sizeof p, "%s/%s/board.ini", dir, e->d_name) >= (int)sizeof p) continue;
            if (access(p, R_OK) == 0 && (names[n] = strdup(e->d_name))) n++;
        }
        closedir(d);
    }
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    fprintf(f, "  boards:");
    for (int i = 0; i < n; i++) fprintf(f, " %s", names[i]);
    fprintf(f, "%s\n  memory profiles:", n ? "" : " (none found)");
    for (int i = 0; i < n; i++) free(names[i]);
    char p[4096];
    snprintf(p, sizeof p, "%s/memory-profiles.ini", dir);
    FILE *pf = fopen(p, "r");
    char line[256];
    int np = 0;
    while (pf && fgets(line, sizeof line, pf)) {
        char *close = strchr(line, ']');
        if (line[0] == '[' && close) {
            *close = '\0';
            fprintf(f, " %s", line + 1);
            np++;
        }
    }
    if (pf) fclose(pf);
    fprintf(f, "%s\n", np ? "" : " (none found)");
}

int cli_open(const cli_opts *o, idefics_model **model, idefics_session **session) {
    idefics_model_params mp = idefics_model_default_params();
    idefics_session_params sp = idefics_session_default_params();
    const char *cmd = o->cmd;
    char err[512];
    const char *board = o->board ? o->board : getenv("IDEFICS_BOARD");
    if (board && *board) {
        idefics_status bs = idefics_board_apply(boards_dir(), board, &mp, &sp, err, sizeof err);
        if (bs != IDEFICS_OK) {
            fprintf(stderr, "idefics %s: --board %s: %s (%s)\n", cmd, board, err, idefics_status_str(bs));
            if (bs == IDEFICS_ERR_INVALID_ARG) {
                fprintf(stderr, "valid names (in %s):\n", boards_dir());
                list_boards(stderr, boards_dir());
            }
            return 1;
        }
    } else {
        board = NULL;
    }
    static log_state ls; /* the log callback's user data; one command per process */
    ls.loading = true;
    mp.log = log_stderr;
    mp.log_user_data = &ls;
    mp.log_level = o->verbose ? IDEFICS_LOG_INFO : IDEFICS_LOG_WARN;
    mp.device = o->device;
    /* explicit flags win over the board's defaults */
    if (o->set_threads || !board) mp.n_threads = sp.n_threads = o->n_threads;
    if (o->set_backend || !board) mp.backend = o->backend;
    if (o->set_ctx || !board) sp.n_ctx = o->n_ctx;
    if (o->set_kv || !board) sp.kv_type = o->kv_type;
    /* --low-memory pages through the mapping: it wins over a board's use_mmap = 0 */
    if (o->low_memory) mp.low_memory = mp.use_mmap = true;
    if (o->no_mmap) mp.use_mmap = false;
    if (o->max_image_pixels > 0) sp.max_image_pixels = o->max_image_pixels;
    sp.exif_orientation = !o->no_exif;
    if (o->verify >= 0) mp.verify = o->verify;
    idefics_status st = idefics_model_load(o->model, &mp, model, err, sizeof err);
    ls.loading = false;
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics %s: cannot load %s: %s (%s)\n", cmd, o->model, err, idefics_status_str(st));
        return 1;
    }
    idefics_model_info info;
    idefics_model_get_info(*model, &info);
    /* A board's n_ctx is a memory budget, not a demand: a model with a shorter
     * maximum context gets its maximum (an explicit -c is still checked). */
    if (board && !o->set_ctx && sp.n_ctx > info.n_ctx_max) {
        if (o->verbose)
            fprintf(stderr, "idefics: info: board %s: n_ctx %d clamped to the model's maximum %d\n", board,
                    sp.n_ctx, info.n_ctx_max);
        sp.n_ctx = info.n_ctx_max;
    }
    static const char *kv_names[] = {"f32", "f16", "q8"};
    if (o->verbose && board)
        fprintf(stderr, "idefics: board %s: n_ctx %d, kv_type %s, low_memory %d, threads %d, backend %d\n", board,
                sp.n_ctx, (unsigned)sp.kv_type < 3 ? kv_names[sp.kv_type] : "?", (int)mp.low_memory, sp.n_threads,
                (int)mp.backend);
    cli_sigbus_watch(*model); /* a model file truncated while mapped: a message, not a bare SIGBUS */
    st = idefics_session_create(*model, &sp, session, err, sizeof err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics %s: cannot create a session: %s (%s)\n", cmd, err, idefics_status_str(st));
        cli_sigbus_watch(NULL);
        idefics_model_free(*model);
        *model = NULL;
        return 1;
    }
    char name[256];
    if (o->verbose)
    {
        char dev[160];
        fprintf(stderr, "idefics: model %s, %s, backend %s%s%s, context %d tokens, KV %s, weights %s\n",
                cli_escape(name, sizeof name, info.name[0] ? info.name : o->model), info.is_instruct ? "instruct" : "base",
                info.backend ? info.backend : "?", info.device[0] ? " on " : "",
                info.device[0] ? cli_escape(dev, sizeof dev, info.device) : "", sp.n_ctx ? sp.n_ctx : info.n_ctx_max,
                (unsigned)sp.kv_type < 3 ? kv_names[sp.kv_type] : "?", info.mmap ? "mapped" : "in memory");
    }
    return 0;
}

int cli_add_image(idefics_session *s, const char *cmd, const char *path) {
    idefics_status st = idefics_add_image_file(s, path);
    if (st == IDEFICS_OK) return 0;
    /* the library's text usually names the file already: say the path once */
    const char *e = idefics_session_last_error(s);
    if (strstr(e, path)) fprintf(stderr, "idefics %s: %s (%s)\n", cmd, e, idefics_status_str(st));
    else fprintf(stderr, "idefics %s: %s: %s (%s)\n", cmd, path, e, idefics_status_str(st));
    return 1;
}

/* ------------------------------------------------------------ generation */

/* The session a Ctrl-C should cancel. A signal handler can only reach it
 * through a static; the library itself keeps no such state. */
static idefics_session *volatile g_running;
static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    idefics_session *s = g_running;
    if (s) {
        g_interrupted = 1;
        idefics_session_cancel(s); /* one atomic store: async-signal-safe */
    } else {
        /* at a prompt or while loading: leave at once, the shell's prompt on its own line */
        if (isatty(STDERR_FILENO)) (void)!write(STDERR_FILENO, "\n", 1);
        _exit(130);
    }
}

void cli_install_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
}

static bool on_token(void *ud, int32_t token, const char *piece) {
    (void)token;
    cli_answer *a = ud;
    size_t n = strlen(piece);
    if (!a->collect) {
        fputs(piece, stdout);
        fflush(stdout);
        return true;
    }
    if (a->len + n + 1 > a->cap) {
        size_t cap = (a->cap ? a->cap * 2 : 256) + n;
        char *t = realloc(a->text, cap);
        if (!t) {
            a->oom = true;
            return false;
        }
        a->text = t;
        a->cap = cap;
    }
    memcpy(a->text + a->len, piece, n + 1);
    a->len += n;
    return true;
}

idefics_status cli_generate(idefics_session *s, const idefics_generate_params *gen, cli_answer *a,
                            bool *interrupted) {
    g_interrupted = 0;
    g_running = s;
    idefics_status st = idefics_generate(s, gen, on_token, a);
    g_running = NULL;
    if (interrupted) *interrupted = g_interrupted != 0;
    return st;
}

char *cli_render_prompt(const idefics_session *s) {
    size_t len = 0;
    if (idefics_session_render_prompt(s, NULL, 0, &len) != IDEFICS_OK) return NULL;
    char *buf = malloc(len + 1);
    if (buf && idefics_session_render_prompt(s, buf, len + 1, &len) != IDEFICS_OK) {
        free(buf);
        buf = NULL;
    }
    return buf;
}

void cli_print_timings(const idefics_session *s) {
    idefics_timings t;
    idefics_session_get_timings(s, &t);
    fprintf(stderr,
            "idefics: images %.1f ms | prefill %d tokens in %.1f ms (%.1f tok/s) | decode %d tokens in %.1f ms "
            "(%.1f tok/s)\n",
            t.image_encode_ms, t.n_prompt_tokens, t.prefill_ms,
            t.prefill_ms > 0 ? t.n_prompt_tokens * 1000.0 / t.prefill_ms : 0.0, t.n_generated, t.decode_ms,
            t.decode_ms > 0 ? t.n_generated * 1000.0 / t.decode_ms : 0.0);
}

void cli_json_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

void cli_json_ids(FILE *f, const int32_t *ids, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? "," : "", ids[i]);
    fputc(']', f);
}
