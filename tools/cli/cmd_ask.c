/*
 * cmd_ask.c - `idefics ask` (one question about one or more images, answer
 * streamed to stdout or printed as one JSON object) and `idefics chat` (an
 * interactive multi-turn conversation read line by line from stdin; works
 * with piped input). Logs and diagnostics go to stderr only.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cli_faults.h"
#include "idefics.h"
#include "prompt.h" /* idf_session_text, for -v */

typedef struct opts {
    const char *model;
    const char *images[64];
    int n_images;
    const char *prompt;
    idefics_generate_params gen;
    int n_threads, n_ctx;
    idefics_backend backend;
    const char *device; /* --device: OpenCL device index or name substring */
    bool json, verbose;
    const char *board;  /* --board / IDEFICS_BOARD: defaults from boards/ (boards/README.md) */
    bool low_memory, set_ctx, set_threads, set_backend;
    int verify; /* --verify / --no-verify (cli_faults.h); -1 = the library's default (first load) */
} opts;

/* The session a Ctrl-C should cancel. A signal handler can only reach it
 * through a static; the library itself keeps no such state. */
static idefics_session *volatile g_running;

static void on_sigint(int sig) {
    (void)sig;
    idefics_session *s = g_running;
    if (s) idefics_session_cancel(s); /* one atomic store: async-signal-safe */
    else _exit(130);
}

static void log_stderr(void *ud, idefics_log_level level, const char *msg) {
    (void)ud;
    static const char *names[] = {"error", "warn", "info", "debug"};
    fprintf(stderr, "idefics: %s: ", names[level >= 0 && level <= 3 ? level : 0]);
    cli_put_escaped(stderr, msg); /* messages quote model names and paths: no raw escape codes */
    fputc('\n', stderr);
}

static void usage(FILE *f, const char *cmd) {
    bool ask = !strcmp(cmd, "ask");
    fprintf(f,
            "usage: idefics %s -m MODEL %s [options]\n\n"
            "  -m, --model PATH        model file (.idfx)\n"
            "  -i, --image PATH        an image (repeatable)%s\n",
            cmd, ask ? "-i IMAGE [-i IMAGE2 ...] -p QUESTION" : "[-i IMAGE]",
            ask ? "" : "; for the first turn");
    if (ask) fprintf(f, "  -p, --prompt TEXT       the question\n");
    fprintf(f,
            "  -n, --n-predict N       most tokens to generate (default 64%s)\n"
            "      --temp T            temperature; 0 = greedy (default 0)\n"
            "      --top-k K           keep the K most likely tokens; 0 = off\n"
            "      --top-p P           nucleus sampling mass; 1 = off\n"
            "      --seed S            sampling seed (default 0)\n"
            "      --repeat-penalty R  HF repetition penalty; 1 = off\n"
            "  -t, --threads N         compute threads (default: all cores)\n"
            "  -c, --ctx-size N        context length in tokens (default: the model's)\n"
            "      --backend NAME      auto | cpu | cpu-ref | opencl (default auto)\n"
            "      --board NAME        defaults for a board or memory profile (boards/; env IDEFICS_BOARD):\n"
            "                          n_ctx, KV type, low_memory, threads, backend; flags given override them\n"
            "      --low-memory        let the OS page weights in and out of the model file per layer\n"
            "      --device D          OpenCL device: index or name substring (idefics devices lists them)\n"
            "%s"
            "      --verify            check the whole model file at load (default: first load of a file only)\n"
            "      --no-verify         skip that check\n"
            "  -v, --verbose           log progress and timings to stderr\n",
            ask ? "" : " per answer", ask ? "      --json              print one JSON object instead of streaming\n" : "");
    if (!ask)
        fprintf(f, "\nEach input line is a user turn. Commands: /image PATH (attach to the next turn),\n"
                   "/reset (start over), /quit. Ctrl-C stops the current answer.\n");
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
    if (errno || end == s || *end) return false;
    *out = (float)v;
    return true;
}

/* Returns 0 when parsed, 1 when help was printed, 2 on a usage error. */
static int parse_opts(int argc, char **argv, const char *cmd, opts *o) {
    memset(o, 0, sizeof *o);
    o->gen = idefics_generate_default_params();
    o->backend = IDEFICS_BACKEND_AUTO;
    o->verify = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool ok = true, takes = true;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout, cmd);
            return 1;
        } else if (!strcmp(a, "--json")) {
            o->json = true, takes = false;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            o->verbose = true, takes = false;
        } else if (!strcmp(a, "--low-memory")) {
            o->low_memory = true, takes = false;
        } else if (cli_verify_flag(a) >= 0) {
            o->verify = cli_verify_flag(a), takes = false;
        } else if (!v) {
            fprintf(stderr, "idefics %s: %s needs a value (or is unknown)\n", cmd, a);
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            o->model = v;
        } else if (!strcmp(a, "-i") || !strcmp(a, "--image")) {
            if (o->n_images == (int)(sizeof o->images / sizeof o->images[0])) {
                fprintf(stderr, "idefics %s: too many images\n", cmd);
                return 2;
            }
            o->images[o->n_images++] = v;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            o->prompt = v;
        } else if (!strcmp(a, "-n") || !strcmp(a, "--n-predict")) {
            ok = parse_int(v, 0, INT_MAX, &o->gen.max_new_tokens);
        } else if (!strcmp(a, "--temp")) {
            ok = parse_float(v, &o->gen.temperature) && o->gen.temperature >= 0;
        } else if (!strcmp(a, "--top-k")) {
            ok = parse_int(v, 0, INT_MAX, &o->gen.top_k);
        } else if (!strcmp(a, "--top-p")) {
            ok = parse_float(v, &o->gen.top_p) && o->gen.top_p > 0 && o->gen.top_p <= 1;
        } else if (!strcmp(a, "--seed")) {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(v, &end, 0);
            ok = !errno && end != v && !*end;
            o->gen.seed = s;
        } else if (!strcmp(a, "--repeat-penalty")) {
            ok = parse_float(v, &o->gen.repetition_penalty) && o->gen.repetition_penalty > 0;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            ok = parse_int(v, 0, 4096, &o->n_threads);
            o->set_threads = true;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx-size")) {
            ok = parse_int(v, 0, 1 << 24, &o->n_ctx);
            o->set_ctx = true;
        } else if (!strcmp(a, "--board")) {
            o->board = v;
        } else if (!strcmp(a, "--backend")) {
            if (!strcmp(v, "auto")) o->backend = IDEFICS_BACKEND_AUTO;
            else if (!strcmp(v, "cpu")) o->backend = IDEFICS_BACKEND_CPU;
            else if (!strcmp(v, "cpu-ref")) o->backend = IDEFICS_BACKEND_CPU_REF;
            else if (!strcmp(v, "opencl")) o->backend = IDEFICS_BACKEND_OPENCL;
            else ok = false;
            o->set_backend = true;
        } else if (!strcmp(a, "--device")) {
            o->device = v;
        } else {
            fprintf(stderr, "idefics %s: unknown option %s\n\n", cmd, a);
            usage(stderr, cmd);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "idefics %s: bad value for %s: '%s'\n", cmd, a, v);
            return 2;
        }
        if (takes) i++;
    }
    if (!o->model) {
        fprintf(stderr, "idefics %s: -m MODEL is required\n\n", cmd);
        usage(stderr, cmd);
        return 2;
    }
    return 0;
}

/* The boards/ folder: $IDEFICS_BOARDS_DIR, else the installed copy, else the source tree's. */
static const char *boards_dir(void) {
    const char *e = getenv("IDEFICS_BOARDS_DIR");
    if (e && *e) return e;
    if (access(IDF_BOARDS_INSTALL_DIR "/memory-profiles.ini", R_OK) == 0) return IDF_BOARDS_INSTALL_DIR;
    return IDF_BOARDS_SOURCE_DIR;
}

static int open_model(const opts *o, const char *cmd, idefics_model **model, idefics_session **session) {
    idefics_model_params mp = idefics_model_default_params();
    idefics_session_params sp = idefics_session_default_params();
    char err[512];
    const char *board = o->board ? o->board : getenv("IDEFICS_BOARD");
    if (board && *board) {
        idefics_status bs = idefics_board_apply(boards_dir(), board, &mp, &sp, err, sizeof err);
        if (bs != IDEFICS_OK) {
            fprintf(stderr, "idefics %s: --board %s: %s (%s)\n", cmd, board, err, idefics_status_str(bs));
            return 1;
        }
    } else {
        board = NULL;
    }
    mp.log = log_stderr;
    mp.log_level = o->verbose ? IDEFICS_LOG_INFO : IDEFICS_LOG_WARN;
    mp.device = o->device;
    /* explicit flags win over the board's defaults */
    if (o->set_threads || !board) mp.n_threads = sp.n_threads = o->n_threads;
    if (o->set_backend || !board) mp.backend = o->backend;
    if (o->set_ctx || !board) sp.n_ctx = o->n_ctx;
    if (o->low_memory) mp.low_memory = true;
    if (o->verify >= 0) mp.verify = o->verify;
    if (o->verbose && board)
        fprintf(stderr, "idefics: board %s: n_ctx %d, kv_type %d, low_memory %d, threads %d, backend %d\n", board,
                sp.n_ctx, (int)sp.kv_type, (int)mp.low_memory, sp.n_threads, (int)mp.backend);
    idefics_status st = idefics_model_load(o->model, &mp, model, err, sizeof err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics %s: cannot load %s: %s (%s)\n", cmd, o->model, err, idefics_status_str(st));
        return 1;
    }
    cli_sigbus_watch(*model); /* a model file truncated while mapped: a message, not a bare SIGBUS */
    st = idefics_session_create(*model, &sp, session, err, sizeof err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics %s: cannot create a session: %s (%s)\n", cmd, err, idefics_status_str(st));
        cli_sigbus_watch(NULL);
        idefics_model_free(*model);
        *model = NULL;
        return 1;
    }
    if (o->verbose) {
        idefics_model_info info;
        idefics_model_get_info(*model, &info);
        char name[256];
        fprintf(stderr, "idefics: model %s, %s, backend %s\n", cli_escape(name, sizeof name, info.name[0] ? info.name : o->model),
                info.is_instruct ? "instruct" : "base", info.backend ? info.backend : "?");
    }
    return 0;
}

static int add_image(idefics_session *s, const char *cmd, const char *path) {
    idefics_status st = idefics_add_image_file(s, path);
    if (st == IDEFICS_OK) return 0;
    fprintf(stderr, "idefics %s: %s: %s (%s)\n", cmd, path, idefics_session_last_error(s), idefics_status_str(st));
    return 1;
}

/* ---- streaming and the JSON answer */

typedef struct answer {
    bool json;
    char *text;
    size_t len, cap;
} answer;

static bool on_token(void *ud, int32_t token, const char *piece) {
    (void)token;
    answer *a = ud;
    size_t n = strlen(piece);
    if (!a->json) {
        fputs(piece, stdout);
        fflush(stdout);
        return true;
    }
    if (a->len + n + 1 > a->cap) {
        size_t cap = (a->cap ? a->cap * 2 : 256) + n;
        char *t = realloc(a->text, cap);
        if (!t) return false;
        a->text = t;
        a->cap = cap;
    }
    memcpy(a->text + a->len, piece, n + 1);
    a->len += n;
    return true;
}

static void json_string(FILE *f, const char *s, size_t n) {
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

static void json_ids(FILE *f, const int32_t *ids, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? "," : "", ids[i]);
    fputc(']', f);
}

static void print_timings(const idefics_timings *t) {
    fprintf(stderr,
            "idefics: images %.1f ms | prefill %d tokens in %.1f ms (%.1f tok/s) | decode %d tokens in %.1f ms "
            "(%.1f tok/s)\n",
            t->image_encode_ms, t->n_prompt_tokens, t->prefill_ms,
            t->prefill_ms > 0 ? t->n_prompt_tokens * 1000.0 / t->prefill_ms : 0.0, t->n_generated, t->decode_ms,
            t->decode_ms > 0 ? t->n_generated * 1000.0 / t->decode_ms : 0.0);
}

/* Generate one answer with Ctrl-C wired to cancel. */
static idefics_status run_generate(idefics_session *s, const opts *o, answer *a) {
    g_running = s;
    void (*old)(int) = signal(SIGINT, on_sigint);
    idefics_status st = idefics_generate(s, &o->gen, on_token, a);
    signal(SIGINT, old == SIG_ERR ? SIG_DFL : old);
    g_running = NULL;
    return st;
}

int cmd_ask(int argc, char **argv) {
    opts o;
    int rc = parse_opts(argc, argv, "ask", &o);
    if (rc) return rc == 1 ? 0 : rc;
    if (!o.prompt) {
        fprintf(stderr, "idefics ask: -p QUESTION is required\n");
        return 2;
    }
    idefics_model *model = NULL;
    idefics_session *s = NULL;
    if (open_model(&o, "ask", &model, &s)) return 1;
    rc = 0;
    for (int i = 0; i < o.n_images && !rc; i++) rc = add_image(s, "ask", o.images[i]);
    if (!rc) {
        idefics_status st = idefics_add_user_turn(s, o.prompt);
        if (st != IDEFICS_OK) {
            fprintf(stderr, "idefics ask: %s (%s)\n", idefics_session_last_error(s), idefics_status_str(st));
            rc = 1;
        }
    }
    answer a = {.json = o.json};
    if (!rc && o.verbose) fprintf(stderr, "idefics: prompt: %s\n", idf_session_text(s));
    if (!rc) {
        const int32_t *ids;
        int n_prompt = idefics_session_get_tokens(s, &ids);
        idefics_status st = run_generate(s, &o, &a);
        if (st != IDEFICS_OK && st != IDEFICS_ERR_CANCELLED) {
            fprintf(stderr, "idefics ask: %s (%s)\n", idefics_session_last_error(s), idefics_status_str(st));
            rc = 1;
        }
        idefics_timings t;
        idefics_session_get_timings(s, &t);
        int n_all = idefics_session_get_tokens(s, &ids);
        if (o.json) {
            printf("{\"status\":\"%s\",\"prompt_tokens\":", idefics_status_str(st));
            json_ids(stdout, ids, n_prompt);
            printf(",\"generated_tokens\":");
            json_ids(stdout, ids + n_prompt, n_all - n_prompt);
            printf(",\"text\":");
            json_string(stdout, a.text ? a.text : "", a.len);
            printf(",\"timings\":{\"image_encode_ms\":%.3f,\"prefill_ms\":%.3f,\"decode_ms\":%.3f,"
                   "\"n_prompt_tokens\":%d,\"n_generated\":%d}}\n",
                   t.image_encode_ms, t.prefill_ms, t.decode_ms, t.n_prompt_tokens, t.n_generated);
        } else {
            printf("\n");
        }
        if (st == IDEFICS_ERR_CANCELLED) fprintf(stderr, "idefics ask: cancelled\n");
        if (o.verbose) print_timings(&t);
    }
    free(a.text);
    if (cli_check_stdout("ask")) rc = 1; /* e.g. stdout on a full disk */
    cli_sigbus_watch(NULL);
    idefics_session_free(s);
    idefics_model_free(model);
    return rc;
}

int cmd_chat(int argc, char **argv) {
    opts o;
    int rc = parse_opts(argc, argv, "chat", &o);
    if (rc) return rc == 1 ? 0 : rc;
    if (o.json || o.prompt) {
        fprintf(stderr, "idefics chat: --json and -p belong to `idefics ask`\n");
        return 2;
    }
    idefics_model *model = NULL;
    idefics_session *s = NULL;
    if (open_model(&o, "chat", &model, &s)) return 1;
    for (int i = 0; i < o.n_images; i++)
        if (add_image(s, "chat", o.images[i])) {
            idefics_session_free(s);
            cli_sigbus_watch(NULL);
            idefics_model_free(model);
            return 1;
        }
    bool tty = isatty(STDIN_FILENO);
    if (tty) fprintf(stderr, "idefics chat: type a message; /image PATH, /reset, /quit\n");
    char *line = NULL;
    size_t cap = 0;
    rc = 0;
    for (;;) {
        if (tty) fprintf(stderr, "> ");
        ssize_t n = getline(&line, &cap, stdin);
        if (n < 0) break;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
        char *l = line;
        while (*l == ' ' || *l == '\t') l++;
        if (!*l) continue;
        if (!strcmp(l, "/quit") || !strcmp(l, "/exit")) break;
        if (!strcmp(l, "/reset")) {
            idefics_session_reset(s);
            fprintf(stderr, "idefics chat: conversation cleared\n");
            continue;
        }
        if (!strncmp(l, "/image", 6) && (l[6] == ' ' || l[6] == '\0')) {
            char *p = l + 6;
            while (*p == ' ') p++;
            if (!*p) fprintf(stderr, "idefics chat: usage: /image PATH\n");
            else if (!add_image(s, "chat", p) && o.verbose) fprintf(stderr, "idefics chat: image %s attached\n", p);
            continue;
        }
        idefics_status st = idefics_add_user_turn(s, l);
        if (st != IDEFICS_OK) {
            fprintf(stderr, "idefics chat: %s (%s)%s\n", idefics_session_last_error(s), idefics_status_str(st),
                    st == IDEFICS_ERR_CONTEXT_FULL ? "; /reset to start over" : "");
            continue;
        }
        answer a = {.json = false};
        st = run_generate(s, &o, &a);
        printf("\n");
        fflush(stdout);
        if (st == IDEFICS_ERR_CANCELLED) fprintf(stderr, "idefics chat: (stopped)\n");
        else if (st != IDEFICS_OK) {
            fprintf(stderr, "idefics chat: %s (%s)\n", idefics_session_last_error(s), idefics_status_str(st));
            rc = 1;
        }
        if (o.verbose) {
            idefics_timings t;
            idefics_session_get_timings(s, &t);
            print_timings(&t);
        }
    }
    free(line);
    if (cli_check_stdout("chat")) rc = 1;
    cli_sigbus_watch(NULL);
    idefics_session_free(s);
    idefics_model_free(model);
    return rc;
}
