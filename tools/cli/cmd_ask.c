/*
 * cmd_ask.c - `idefics ask`: one question (or one raw prompt) with any number
 * of images, the answer streamed to stdout or printed as one JSON object.
 * Logs and diagnostics go to stderr only. Public API only (cli_common.h).
 *
 * Three ways to place images (docs: usage() below and README.md):
 *   -i A -p Q           one question: the images go where the model's chat
 *                       format puts them (instruct: after the question)
 *   -p Q1 -i A -p Q2    several -p: one user turn in exactly the order given
 *   --raw               no chat format at all (base models, few-shot): the
 *                       items in order, special-token strings recognised, and
 *                       <img:PATH> markers inside the text become images
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_common.h"
#include "cli_faults.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: idefics ask -m MODEL [-i IMAGE ...] -p QUESTION [options]\n"
            "       idefics ask -m MODEL -p TEXT -i IMAGE -p TEXT ... [options]   (interleaved turn)\n"
            "       idefics ask -m MODEL --raw -f PROMPT.txt [options]            (raw / few-shot prompt)\n\n"
            "  -m, --model PATH        model file (.idfx)\n"
            "  -i, --image PATH        an image (optional, repeatable)\n"
            "  -p, --prompt TEXT       the question (repeatable: see below)\n"
            "  -f, --prompt-file PATH  read a -p TEXT from a file ('-' = stdin; its last line break is dropped)\n"
            "      --raw               a raw prompt, no User:/Assistant: format (base models, few-shot):\n"
            "                          special tokens such as <image> or <end_of_utterance> typed in the\n"
            "                          text are recognised, and <img:PATH> markers become images\n"
            "      --json              print one JSON object (status, finish_reason, seed, ids, text)\n"
            "      --dry-run           build the prompt, print it (or its ids with --json), do not run\n");
    cli_usage_common(f, true);
    fprintf(f,
            "\nImages and text:\n"
            "  With one -p, the -i images go where the model's chat format puts them (instruct\n"
            "  models: after the question). With several -p, the user turn keeps the exact order\n"
            "  of -p and -i on the command line:\n"
            "    idefics ask -m models/tiny-shapes.idfx -p 'Compare' -i examples/shapes-01.png \\\n"
            "        -p 'with' -i examples/shapes-02.png -p 'Which has more shapes?'\n"
            "  Without --raw, text is plain text: '<image>' typed in a question is just characters.\n"
            "  A few-shot raw prompt for a base model, in PROMPT.txt (-f drops the file's final\n"
            "  line break; an instruct model also wants <end_of_utterance> after each question\n"
            "  and each answer):\n"
            "    User:<img:examples/shapes-01.png>How many shapes are there?\n"
            "    Assistant: 4\n"
            "    User:<img:examples/shapes-03.png>How many shapes are there?\n"
            "    Assistant:\n"
            "\nExit status: 0 answered, 1 error, 2 usage error, 130 interrupted (Ctrl-C).\n");
}

/* --raw text: <img:PATH> markers split it into text and images (cli_split_markers). */
static int raw_text_piece(void *ud, const char *p, size_t n) {
    idefics_session *s = ud;
    idefics_status st = idefics_add_text_n(s, p, n, IDEFICS_TEXT_SPECIAL);
    if (st == IDEFICS_OK) return 0;
    fprintf(stderr, "idefics ask: %s (%s)\n", idefics_session_last_error(s), idefics_status_str(st));
    return 1;
}

static int raw_image(void *ud, const char *path) {
    return cli_add_image(ud, "ask", path);
}

static int add_raw_text(idefics_session *s, const char *text) {
    int rc = cli_split_markers(text, raw_text_piece, raw_image, s);
    if (rc < 0) fprintf(stderr, "idefics ask: out of memory\n");
    return rc ? 1 : 0;
}

static int report(idefics_session *s, idefics_status st) {
    if (st == IDEFICS_OK) return 0;
    fprintf(stderr, "idefics ask: %s (%s)\n", idefics_session_last_error(s), idefics_status_str(st));
    return 1;
}

static int build_prompt(idefics_session *s, const cli_opts *o) {
    if (o->raw) {
        for (int i = 0; i < o->n_items; i++) {
            const cli_item *it = &o->items[i];
            int rc = it->is_image ? cli_add_image(s, "ask", it->value) : add_raw_text(s, it->value);
            if (rc) return rc;
        }
        return 0;
    }
    if (o->n_texts == 1) {
        /* one question: images first, then the turn places them per the model's format */
        const char *q = NULL;
        for (int i = 0; i < o->n_items; i++) {
            if (!o->items[i].is_image) q = o->items[i].value;
            else if (cli_add_image(s, "ask", o->items[i].value)) return 1;
        }
        return report(s, idefics_add_user_turn_n(s, q, strlen(q)));
    }
    /* several -p: one user turn in command-line order */
    int rc = report(s, idefics_begin_user_turn(s));
    for (int i = 0; i < o->n_items && !rc; i++) {
        const cli_item *it = &o->items[i];
        rc = it->is_image ? cli_add_image(s, "ask", it->value)
                          : report(s, idefics_add_text_n(s, it->value, strlen(it->value), 0));
    }
    return rc ? rc : report(s, idefics_end_user_turn(s));
}

int cmd_ask(int argc, char **argv) {
    cli_opts o;
    int rc = cli_parse(argc, argv, "ask", usage, &o);
    if (rc) return rc == 1 ? 0 : rc;
    if (!o.n_texts && !(o.raw && o.n_items)) {
        fprintf(stderr, "idefics ask: -p QUESTION (or -f FILE) is required\n");
        cli_opts_free(&o);
        return 2;
    }
    cli_install_sigint();
    idefics_model *model = NULL;
    idefics_session *s = NULL;
    if (cli_open(&o, &model, &s)) {
        cli_opts_free(&o);
        return 1;
    }
    rc = build_prompt(s, &o);
    if (!rc && (o.verbose || (o.dry_run && !o.json))) {
        char *text = cli_render_prompt(s);
        if (o.dry_run && !o.json) printf("%s\n", text ? text : "");
        else fprintf(stderr, "idefics: prompt: %s\n", text ? text : "(unavailable)");
        free(text);
    }
    const int32_t *ids;
    int n_prompt = idefics_session_get_tokens(s, &ids);
    if (!rc && o.dry_run) {
        if (o.json) {
            char *text = cli_render_prompt(s);
            printf("{\"prompt\":");
            cli_json_string(stdout, text ? text : "", text ? strlen(text) : 0);
            printf(",\"prompt_tokens\":");
            cli_json_ids(stdout, ids, n_prompt);
            printf("}\n");
            free(text);
        }
    } else if (!rc) {
        bool sampling = o.gen.temperature > 0;
        if (sampling && !o.seed_set)
            fprintf(stderr, "idefics: seed %llu (--seed %llu repeats this run)\n", (unsigned long long)o.gen.seed,
                    (unsigned long long)o.gen.seed);
        cli_answer a = {.collect = o.json};
        bool interrupted = false;
        idefics_status st = cli_generate(s, &o.gen, &a, &interrupted);
        idefics_finish_reason fr = idefics_session_finish_reason(s);
        if (st == IDEFICS_ERR_CANCELLED || fr == IDEFICS_FINISH_CANCELLED) rc = 130;
        else if (st != IDEFICS_OK || a.oom) rc = report(s, st != IDEFICS_OK ? st : IDEFICS_ERR_OUT_OF_MEMORY);
        int n_all = idefics_session_get_tokens(s, &ids);
        if (o.json) {
            idefics_timings t;
            idefics_session_get_timings(s, &t);
            printf("{\"status\":\"%s\",\"finish_reason\":\"%s\",\"seed\":%llu,\"prompt_tokens\":",
                   idefics_status_str(st), idefics_finish_reason_str(fr), (unsigned long long)o.gen.seed);
            cli_json_ids(stdout, ids, n_prompt);
            printf(",\"generated_tokens\":");
            cli_json_ids(stdout, ids + n_prompt, n_all - n_prompt);
            printf(",\"text\":");
            cli_json_string(stdout, a.text ? a.text : "", a.len);
            printf(",\"timings\":{\"image_encode_ms\":%.3f,\"prefill_ms\":%.3f,\"decode_ms\":%.3f,"
                   "\"n_prompt_tokens\":%d,\"n_generated\":%d}}\n",
                   t.image_encode_ms, t.prefill_ms, t.decode_ms, t.n_prompt_tokens, t.n_generated);
        } else {
            printf("\n");
        }
        if (rc == 130) fprintf(stderr, "idefics ask: %s\n", interrupted ? "interrupted" : "cancelled");
        else if (fr == IDEFICS_FINISH_CONTEXT_FULL)
            fprintf(stderr, "idefics ask: the answer stopped because the context is full; a larger -c (up to the "
                            "model's maximum) or fewer images leave it more room\n");
        if (o.verbose) cli_print_timings(s);
        free(a.text);
    }
    if (cli_check_stdout("ask") && !rc) rc = 1; /* e.g. stdout on a full disk */
    cli_sigbus_watch(NULL);
    idefics_session_free(s);
    idefics_model_free(model);
    cli_opts_free(&o);
    return rc;
}
