/*
 * test_demo.c - the shipped demo model answers held-out questions.
 *
 * usage: test_demo MODEL.idfx FIXTURE_DIR LABEL
 *
 * FIXTURE_DIR/questions.tsv (written by tools/demo-model/export.py) lists 200
 * questions about the PNG images next to it, none of them seen in training:
 *   # key value                  header lines (pytorch_fp32_correct N, questions N, ...)
 *   image \t qtype \t question \t answer \t pytorch_answer
 * Each question runs in a fresh conversation through the public API (reset,
 * image, user turn, greedy generation) and counts when the generated text is
 * exactly the answer. The test passes when at least MIN_ACCURACY of the
 * questions are answered and the accuracy is within MAX_DELTA_POINTS (either
 * way) of what PyTorch (fp32, transformers' generate) scored on them, so the
 * cost of a quantization preset shows up as a number (LABEL names it).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idefics.h"

#define MIN_ACCURACY 0.90     /* exact-match answers, all question types */
#define MAX_DELTA_POINTS 3.0  /* percentage points away from the PyTorch fp32 accuracy */
#define MAX_NEW_TOKENS 24     /* the longest answer (a caption) is about 14 tokens */
#define MAX_QUESTIONS 1024
#define MAX_TYPES 8

typedef struct question {
    char *image, *qtype, *question, *answer, *pt_answer;
} question;

typedef struct answer_buf {
    char text[512];
    size_t len;
} answer_buf;

static bool on_token(void *ud, int32_t token, const char *piece) {
    (void)token;
    answer_buf *a = ud;
    size_t n = strlen(piece);
    if (a->len + n >= sizeof a->text) return false;
    memcpy(a->text + a->len, piece, n + 1);
    a->len += n;
    return true;
}

/* Splits line at tabs into at most max fields; returns the count. */
static int split_tabs(char *line, char **f, int max) {
    int n = 0;
    char *p = line;
    while (n < max) {
        f[n++] = p;
        char *t = strchr(p, '\t');
        if (!t) break;
        *t = '\0';
        p = t + 1;
    }
    return n;
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.idfx FIXTURE_DIR LABEL\n", argv[0]);
        return 2;
    }
    const char *model_path = argv[1], *dir = argv[2], *label = argv[3];
    char path[4096];
    snprintf(path, sizeof path, "%s/questions.tsv", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "FAIL: cannot open %s\n", path);
        return 1;
    }
    static question qs[MAX_QUESTIONS];
    int n_q = 0, pt_correct = -1, pt_total = -1;
    char line[2048];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) continue;
        if (line[0] == '#') {
            sscanf(line, "# pytorch_fp32_correct %d/%d", &pt_correct, &pt_total);
            continue;
        }
        char *fl[5];
        if (split_tabs(line, fl, 5) != 5 || n_q == MAX_QUESTIONS) {
            fprintf(stderr, "FAIL: %s: bad line: %s\n", path, line);
            fclose(f);
            return 1;
        }
        question *q = &qs[n_q++];
        q->image = dup_str(fl[0]);
        q->qtype = dup_str(fl[1]);
        q->question = dup_str(fl[2]);
        q->answer = dup_str(fl[3]);
        q->pt_answer = dup_str(fl[4]);
        if (!q->image || !q->qtype || !q->question || !q->answer || !q->pt_answer) {
            fprintf(stderr, "FAIL: out of memory\n");
            fclose(f);
            return 1;
        }
    }
    fclose(f);
    if (n_q == 0 || pt_correct < 0 || pt_total != n_q) {
        fprintf(stderr, "FAIL: %s: %d questions, pytorch_fp32_correct %d/%d\n", path, n_q, pt_correct, pt_total);
        return 1;
    }

    idefics_model_params mp = idefics_model_default_params();
    mp.backend = IDEFICS_BACKEND_CPU;
    mp.n_threads = 1;
    char err[512];
    idefics_model *model = NULL;
    idefics_status st = idefics_model_load(model_path, &mp, &model, err, sizeof err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "FAIL: load %s: %s (%s)\n", model_path, err, idefics_status_str(st));
        return 1;
    }
    idefics_session_params sp = idefics_session_default_params();
    sp.n_threads = 1;
    idefics_session *s = NULL;
    st = idefics_session_create(model, &sp, &s, err, sizeof err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "FAIL: session: %s (%s)\n", err, idefics_status_str(st));
        idefics_model_free(model);
        return 1;
    }
    idefics_generate_params gp = idefics_generate_default_params();
    gp.max_new_tokens = MAX_NEW_TOKENS; /* greedy (temperature 0) is the default */

    const char *types[MAX_TYPES];
    int type_n[MAX_TYPES] = {0}, type_ok[MAX_TYPES] = {0}, n_types = 0;
    int n_ok = 0, n_agree_pt = 0, n_shown = 0, failures = 0;
    for (int i = 0; i < n_q; i++) {
        question *q = &qs[i];
        snprintf(path, sizeof path, "%s/%s", dir, q->image);
        answer_buf a = {.len = 0};
        a.text[0] = '\0';
        idefics_session_reset(s);
        st = idefics_add_image_file(s, path);
        if (st == IDEFICS_OK) st = idefics_add_user_turn(s, q->question);
        if (st == IDEFICS_OK) st = idefics_generate(s, &gp, on_token, &a);
        if (st != IDEFICS_OK) {
            fprintf(stderr, "FAIL: %s: %s (%s)\n", q->image, idefics_session_last_error(s), idefics_status_str(st));
            failures++;
            continue;
        }
        bool ok = !strcmp(a.text, q->answer);
        n_ok += ok;
        n_agree_pt += !strcmp(a.text, q->pt_answer);
        int t = 0;
        while (t < n_types && strcmp(types[t], q->qtype)) t++;
        if (t == n_types && n_types < MAX_TYPES) types[n_types++] = q->qtype;
        if (t < MAX_TYPES) {
            type_n[t]++;
            type_ok[t] += ok;
        }
        if (!ok && n_shown++ < 8)
            printf("  miss %-12s %-32s expected \"%s\", got \"%s\" (pytorch \"%s\")\n", q->image, q->question,
                   q->answer, a.text, q->pt_answer);
    }
    double acc = 100.0 * n_ok / n_q, pt_acc = 100.0 * pt_correct / n_q;
    printf("demo model %s: %d/%d exact (%.1f%%), PyTorch fp32 %d/%d (%.1f%%), delta %+.1f points; "
           "same text as PyTorch on %d/%d\n",
           label, n_ok, n_q, acc, pt_correct, n_q, pt_acc, acc - pt_acc, n_agree_pt, n_q);
    for (int t = 0; t < n_types; t++)
        printf("  %-9s %3d/%3d (%.1f%%)\n", types[t], type_ok[t], type_n[t], 100.0 * type_ok[t] / type_n[t]);

    int rc = 0;
    if (failures) {
        printf("FAIL: %d question(s) could not be run\n", failures);
        rc = 1;
    }
    if (acc < 100.0 * MIN_ACCURACY) {
        printf("FAIL: accuracy %.1f%% is below %.0f%%\n", acc, 100.0 * MIN_ACCURACY);
        rc = 1;
    }
    if (fabs(acc - pt_acc) > MAX_DELTA_POINTS) {
        printf("FAIL: accuracy %.1f%% is more than %.0f points away from PyTorch's %.1f%%\n", acc,
               MAX_DELTA_POINTS, pt_acc);
        rc = 1;
    }
    idefics_session_free(s);
    idefics_model_free(model);
    for (int i = 0; i < n_q; i++) {
        free(qs[i].image);
        free(qs[i].qtype);
        free(qs[i].question);
        free(qs[i].answer);
        free(qs[i].pt_answer);
    }
    return rc;
}
