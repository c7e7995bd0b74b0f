/*
 * cmd_chat.c - `idefics chat`: an interactive multi-turn conversation read
 * line by line (libedit line editing and history on a terminal when built
 * with it; plain lines from a pipe). Public API only (cli_common.h).
 *
 * A message is one line. Images go with the next message: `/image PATH`
 * lines before it, or, to put text before an image, end a line with a
 * backslash to continue the same message:
 *     Compare this \
 *     /image a.png
 *     with this \
 *     /image b.png
 *     Which one has more shapes?
 * Everything typed is plain text for the model; only whole lines that start
 * with '/' are commands ("//" sends a line that starts with '/').
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef IDF_HAVE_LIBEDIT
#include <editline/readline.h>
#endif

#include "cli.h"
#include "cli_common.h"
#include "cli_faults.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: idefics chat -m MODEL [-i IMAGE ...] [options]\n\n"
            "  -m, --model PATH        model file (.idfx)\n"
            "  -i, --image PATH        an image for the first message (optional, repeatable)\n");
    cli_usage_common(f, false);
    fprintf(f,
            "\nEach line is a message; the answer streams back. A line ending in '\\' continues the\n"
            "message on the next line, so text and /image can alternate inside one message.\n"
            "Commands (a line starting with '//' sends a message that starts with '/'):\n"
            "  /image PATH   attach an image to the next message, where it is in the message\n"
            "  /reset        start a new conversation, keeping the images (they go with the next message)\n"
            "  /reset all    start a new conversation without images\n"
            "  /help         this list\n"
            "  /quit         leave (also /exit, or Ctrl-D)\n"
            "Ctrl-C stops the current answer. Line editing and history (up/down arrows; kept in\n"
            "$IDEFICS_HISTORY, else ~/.local/state/idefics/chat_history) on a terminal%s.\n",
#ifdef IDF_HAVE_LIBEDIT
            ""
#else
            " need a build with libedit (meson -Dlibedit=enabled; Debian libedit-dev)"
#endif
    );
}

static void help(void) {
    fprintf(stderr, "commands:\n"
                    "  /image PATH   attach an image to your next message\n"
                    "  /reset        new conversation, same images      /reset all   new conversation, no images\n"
                    "  /help         this list                          /quit        leave (or Ctrl-D)\n"
                    "End a line with '\\' to continue the message (text, then /image, then more text).\n"
                    "Ctrl-C stops an answer.\n");
}

/* What the next message holds so far, in order. */
typedef struct item {
    bool is_image;
    char *value;
} item;

typedef struct chat {
    idefics_model *model;
    idefics_session *s;
    const cli_opts *o;
    item *pending;
    int n_pending, cap_pending;
    char **kept; /* images of the conversation, kept across /reset */
    int n_kept, cap_kept;
    int n_ctx_max;
    idefics_session *probe; /* a small session that decodes /image files to check them; may be NULL */
} chat;

/* Is the file an image the library can read? Decoded in the probe session (a
 * 16-token context, so it costs little), which is then cleared; without one,
 * only that the file opens. Prints the reason when not. */
static bool image_ok(chat *c, const char *path) {
    if (c->probe) {
        int rc = cli_add_image(c->probe, "chat", path);
        idefics_session_reset(c->probe);
        return rc == 0;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "idefics chat: %s: %s\n", path, strerror(errno));
        return false;
    }
    fclose(f);
    return true;
}

static bool push(void **arr, int *n, int *cap, size_t elem) {
    if (*n < *cap) return true;
    int nc = *cap ? *cap * 2 : 8;
    void *t = realloc(*arr, (size_t)nc * elem);
    if (!t) return false;
    *arr = t;
    *cap = nc;
    return true;
}

static bool add_pending(chat *c, bool is_image, const char *v, size_t n) {
    char *copy = malloc(n + 1);
    if (!copy || !push((void **)&c->pending, &c->n_pending, &c->cap_pending, sizeof(item))) {
        free(copy);
        fprintf(stderr, "idefics chat: out of memory\n");
        return false;
    }
    memcpy(copy, v, n);
    copy[n] = '\0';
    c->pending[c->n_pending++] = (item){is_image, copy};
    return true;
}

static void clear_pending(chat *c) {
    for (int i = 0; i < c->n_pending; i++) free(c->pending[i].value);
    c->n_pending = 0;
}

static void keep_image(chat *c, const char *path) {
    for (int i = 0; i < c->n_kept; i++)
        if (!strcmp(c->kept[i], path)) return;
    char *copy = strdup(path);
    if (copy && push((void **)&c->kept, &c->n_kept, &c->cap_kept, sizeof(char *))) c->kept[c->n_kept++] = copy;
    else free(copy);
}

static void explain_full(const chat *c) {
    fprintf(stderr, "idefics chat: the conversation has filled the model's context (at most %d tokens here).\n",
            c->n_ctx_max);
    if (c->n_kept) fprintf(stderr, "  /reset starts over with the same image(s); /reset all without them.");
    else fprintf(stderr, "  /reset starts over.");
    fprintf(stderr, "%s\n", c->o->set_ctx ? " A larger -c (up to the model's maximum) leaves more room." : "");
}

static int report(chat *c, idefics_status st) {
    if (st == IDEFICS_OK) return 0;
    if (st == IDEFICS_ERR_CONTEXT_FULL) explain_full(c);
    else fprintf(stderr, "idefics chat: %s (%s)\n", idefics_session_last_error(c->s), idefics_status_str(st));
    return 1;
}

/* Start over; with keep, the conversation's images go with the next message. */
static void do_reset(chat *c, bool keep) {
    idefics_session_reset(c->s);
    clear_pending(c);
    if (!keep) {
        for (int i = 0; i < c->n_kept; i++) free(c->kept[i]);
        c->n_kept = 0;
        return;
    }
    for (int i = 0; i < c->n_kept; i++) add_pending(c, true, c->kept[i], strlen(c->kept[i]));
}

/* Adds one pending item; a full context is noted, not printed (send_turn decides). */
static int add_item(chat *c, const item *it, bool *full) {
    if (it->is_image) return cli_add_image(c->s, "chat", it->value);
    idefics_status st = idefics_add_text_n(c->s, it->value, strlen(it->value), 0);
    if (st == IDEFICS_ERR_CONTEXT_FULL) *full = true;
    else if (st != IDEFICS_OK) report(c, st);
    return st != IDEFICS_OK;
}

/* Send the pending message. Each add leaves the session as it was when it
 * fails, so a message that fails at its first item changes nothing; one that
 * fails later (an image that does not decode, a full context) would leave half
 * a turn behind, so the conversation restarts with its images, and says so. */
static int send_turn(chat *c) {
    int n_text = 0;
    bool images_first = true; /* images, then one text: the model's own turn order */
    for (int i = 0; i < c->n_pending; i++) {
        if (!c->pending[i].is_image) n_text++;
        else if (n_text) images_first = false;
    }
    int rc = 0, added = 0;
    bool full = false;
    if (n_text == 1 && images_first) {
        for (int i = 0; i < c->n_pending - 1 && !rc; i++)
            if (!(rc = add_item(c, &c->pending[i], &full))) added++;
        const char *q = c->pending[c->n_pending - 1].value;
        if (!rc) {
            idefics_status st = idefics_add_user_turn_n(c->s, q, strlen(q));
            if (st == IDEFICS_ERR_CONTEXT_FULL) full = true;
            else if (st != IDEFICS_OK) report(c, st);
            rc = st != IDEFICS_OK;
        }
    } else {
        rc = report(c, idefics_begin_user_turn(c->s));
        for (int i = 0; i < c->n_pending && !rc; i++)
            if (!(rc = add_item(c, &c->pending[i], &full))) added++;
        if (!rc) {
            idefics_status st = idefics_end_user_turn(c->s);
            if (st == IDEFICS_ERR_CONTEXT_FULL) full = true;
            else if (st != IDEFICS_OK) report(c, st);
            rc = st != IDEFICS_OK;
        }
        added++; /* the open "User:" */
    }
    if (rc) {
        if (!added) {
            if (full) explain_full(c);
            fprintf(stderr, "idefics chat: the message was not sent\n");
            clear_pending(c);
            return 1;
        }
        do_reset(c, true);
        if (full)
            fprintf(stderr, "idefics chat: the conversation filled the model's context (at most %d tokens here), "
                            "so it restarted%s: send your message again (/reset all drops the images)\n",
                    c->n_ctx_max, c->n_kept ? " with its image(s)" : "");
        else
            fprintf(stderr, "idefics chat: the message was not sent and the conversation restarted%s\n",
                    c->n_kept ? " (images kept for your next message)" : "");
        return 1;
    }
    for (int i = 0; i < c->n_pending; i++)
        if (c->pending[i].is_image) keep_image(c, c->pending[i].value);
    clear_pending(c);
    return 0;
}

static bool has_image(const cli_opts *o) {
    return o->n_images > 0;
}

#ifdef IDF_HAVE_LIBEDIT
/* Where the line history lives: $IDEFICS_HISTORY ("" = none), else
 * $XDG_STATE_HOME/idefics/chat_history, else ~/.local/state/idefics/chat_history. */
static char *history_path(void) {
    const char *e = getenv("IDEFICS_HISTORY");
    if (e) return *e ? strdup(e) : NULL;
    const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char dir[4096];
    if (state && *state) snprintf(dir, sizeof dir, "%s/idefics", state);
    else if (home && *home) snprintf(dir, sizeof dir, "%s/.local/state/idefics", home);
    else return NULL;
    /* make the folders (mode 0700: what was typed may be private) */
    for (char *p = dir + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0700);
            *p = '/';
        }
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) return NULL;
    size_t n = strlen(dir) + sizeof "/chat_history";
    char *path = malloc(n);
    if (path) snprintf(path, n, "%s/chat_history", dir);
    return path;
}
#endif

/* Read one line without its newline; NULL at end of input. */
static char *read_line(bool tty, bool editline, bool continuing) {
    const char *prompt = continuing ? ". " : "> ";
#ifdef IDF_HAVE_LIBEDIT
    if (editline) {
        char *l = readline(prompt);
        if (l && *l) add_history(l);
        return l;
    }
#else
    (void)editline;
#endif
    if (tty) {
        fputs(prompt, stderr);
        fflush(stderr);
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
    return line;
}

int cmd_chat(int argc, char **argv) {
    cli_opts o;
    int rc = cli_parse(argc, argv, "chat", usage, &o);
    if (rc) return rc == 1 ? 0 : rc;
    cli_install_sigint();
    chat c = {.o = &o};
    if (cli_open(&o, &c.model, &c.s)) {
        cli_opts_free(&o);
        return 1;
    }
    idefics_model_info info;
    idefics_model_get_info(c.model, &info);
    c.n_ctx_max = o.n_ctx > 0 && o.n_ctx < info.n_ctx_max ? o.n_ctx : info.n_ctx_max;
    idefics_session_params pp = idefics_session_default_params();
    pp.n_ctx = info.n_ctx_max < 16 ? info.n_ctx_max : 16;
    pp.n_threads = 1; /* it only decodes images, on this thread */
    char perr[256];
    if (idefics_session_create(c.model, &pp, &c.probe, perr, sizeof perr) != IDEFICS_OK) c.probe = NULL;
    for (int i = 0; i < o.n_items && !rc; i++) {
        if (!image_ok(&c, o.items[i].value)) rc = 1;
        else add_pending(&c, true, o.items[i].value, strlen(o.items[i].value));
    }
    bool tty = isatty(STDIN_FILENO);
    bool editline = false;
#ifdef IDF_HAVE_LIBEDIT
    editline = tty && isatty(STDOUT_FILENO);
    char *hist = editline ? history_path() : NULL;
    if (editline) {
        rl_initialize(); /* before read_history: libedit's lazy init would drop what it read */
        using_history();
        stifle_history(1000);
        if (hist) read_history(hist); /* a missing file is the first run */
    }
#endif
    if (tty && !rc)
        fprintf(stderr, "idefics chat: %s. Type a message; /help lists the commands, Ctrl-D leaves.%s\n",
                info.name[0] ? info.name : o.model, has_image(&o) ? " The image(s) go with your first message." : "");
    bool continuing = false;
    while (!rc) {
        char *line = read_line(tty, editline, continuing);
        if (!line) {
            if (tty) fputc('\n', stdout); /* Ctrl-D: the shell's prompt on a line of its own */
            break;
        }
        char *l = line;
        while (*l == ' ' || *l == '\t') l++;
        size_t n = strlen(l);
        while (n && (l[n - 1] == ' ' || l[n - 1] == '\t')) l[--n] = '\0';
        bool quit = false;
        if (l[0] == '/' && l[1] != '/') {
            char *arg = l + strcspn(l, " \t");
            if (*arg) *arg++ = '\0';
            while (*arg == ' ' || *arg == '\t') arg++;
            if (!strcmp(l, "/quit") || !strcmp(l, "/exit")) {
                quit = true;
            } else if (!strcmp(l, "/help") || !strcmp(l, "/?")) {
                help();
            } else if (!strcmp(l, "/reset") && (!*arg || !strcmp(arg, "all"))) {
                bool keep = !*arg;
                do_reset(&c, keep);
                continuing = false;
                if (keep && c.n_kept) {
                    fprintf(stderr, "idefics chat: conversation cleared; keeping %d image(s) for your next message:",
                            c.n_kept);
                    for (int i = 0; i < c.n_kept; i++) fprintf(stderr, " %s", c.kept[i]);
                    fprintf(stderr, " (/reset all drops them)\n");
                } else {
                    fprintf(stderr, "idefics chat: conversation cleared%s\n", keep ? "" : ", images dropped");
                }
            } else if (!strcmp(l, "/image")) {
                if (!*arg) fprintf(stderr, "idefics chat: usage: /image PATH\n");
                else if (image_ok(&c, arg) && add_pending(&c, true, arg, strlen(arg)))
                    fprintf(stderr, "idefics chat: image %s attached to your next message\n", arg);
            } else {
                fprintf(stderr, "idefics chat: unknown command %s; /help lists the commands (start the line with "
                                "// to send text that begins with '/')\n", l);
            }
            free(line);
            if (quit) break;
            continue;
        }
        if (l[0] == '/') l++; /* "//..." sends "/..." */
        n = strlen(l);
        bool more = n && l[n - 1] == '\\';
        if (more) {
            l[--n] = '\0';
            while (n && (l[n - 1] == ' ' || l[n - 1] == '\t')) l[--n] = '\0';
        }
        if (n && !add_pending(&c, false, l, n)) rc = 1;
        free(line);
        continuing = more;
        if (more || rc) continue;
        int n_text = 0;
        for (int i = 0; i < c.n_pending; i++) n_text += !c.pending[i].is_image;
        if (!n_text) continue; /* an empty line: nothing to send */
        if (send_turn(&c)) continue;
        if (o.verbose) {
            char *text = cli_render_prompt(c.s);
            fprintf(stderr, "idefics: prompt: %s\n", text ? text : "(unavailable)");
            free(text);
        }
        cli_answer a = {.collect = false};
        bool interrupted = false;
        if (o.gen.temperature > 0 && !o.seed_set && o.verbose)
            fprintf(stderr, "idefics: seed %llu\n", (unsigned long long)o.gen.seed);
        idefics_status st = cli_generate(c.s, &o.gen, &a, &interrupted);
        idefics_finish_reason fr = idefics_session_finish_reason(c.s);
        printf("\n");
        fflush(stdout);
        if (st == IDEFICS_ERR_CANCELLED) fprintf(stderr, "idefics chat: (stopped)\n");
        else if (st == IDEFICS_ERR_CONTEXT_FULL || fr == IDEFICS_FINISH_CONTEXT_FULL) explain_full(&c);
        else if (st != IDEFICS_OK) report(&c, st);
        if (o.verbose) cli_print_timings(c.s);
        o.gen.seed++; /* a new sample for the next answer, still repeatable from the first seed */
    }
#ifdef IDF_HAVE_LIBEDIT
    if (hist && write_history(hist) != 0 && o.verbose)
        fprintf(stderr, "idefics chat: could not save the history to %s\n", hist);
    free(hist);
#endif
    clear_pending(&c);
    free(c.pending);
    for (int i = 0; i < c.n_kept; i++) free(c.kept[i]);
    free(c.kept);
    if (cli_check_stdout("chat")) rc = 1;
    cli_sigbus_watch(NULL);
    idefics_session_free(c.probe);
    idefics_session_free(c.s);
    idefics_model_free(c.model);
    cli_opts_free(&o);
    return rc;
}
