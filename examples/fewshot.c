/*
 * fewshot.c - a few-shot prompt with interleaved images: two solved examples,
 * then the question, written as one raw prompt (the model's chat format typed
 * out, special tokens recognised because of IDEFICS_TEXT_SPECIAL).
 *
 *   fewshot MODEL.idfx EXAMPLE1 ANSWER1 EXAMPLE2 ANSWER2 QUERY [QUESTION]
 *
 * With --ids as the first argument it prints the prompt's token ids instead of
 * answering (the tests compare them with `idefics ask --raw --dry-run`).
 */
#include <stdio.h>
#include <string.h>

#include <idefics.h>

static bool print_piece(void *user_data, int32_t token, const char *piece) {
    (void)user_data, (void)token;
    fputs(piece, stdout);
    return true;
}

/* Raw text: the caller wrote the structure, so special tokens are obeyed. */
static idefics_status raw(idefics_session *s, const char *text) {
    return idefics_add_text_n(s, text, strlen(text), IDEFICS_TEXT_SPECIAL);
}

int main(int argc, char **argv) {
    bool ids_only = argc > 1 && !strcmp(argv[1], "--ids");
    if (ids_only) argc--, argv++;
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: fewshot [--ids] MODEL.idfx IMAGE1 ANSWER1 IMAGE2 ANSWER2 IMAGE3 [QUESTION]\n");
        return 2;
    }
    const char *question = argc == 8 ? argv[7] : "How many shapes are there?";
    char err[256];
    idefics_model *model = NULL;
    idefics_model_params mp = idefics_model_default_params();
    if (idefics_model_load(argv[1], &mp, &model, err, sizeof err) != IDEFICS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], err);
        return 1;
    }
    idefics_model_info info;
    idefics_model_get_info(model, &info);
    /* An instruct model ends each utterance with <end_of_utterance>. */
    const char *eou = info.is_instruct ? "<end_of_utterance>" : "";
    idefics_session *s = NULL;
    idefics_session_params sp = idefics_session_default_params();
    idefics_status st = idefics_session_create(model, &sp, &s, err, sizeof err);
    char buf[1024];
    for (int shot = 0; shot < 3 && st == IDEFICS_OK; shot++) {
        snprintf(buf, sizeof buf, "%sUser:", shot ? "\n" : "");
        st = raw(s, buf);
        if (st == IDEFICS_OK) st = idefics_add_image_file(s, argv[2 + 2 * shot]);
        if (st != IDEFICS_OK) break;
        if (shot < 2)
            snprintf(buf, sizeof buf, "%s%s\nAssistant: %s%s", question, eou, argv[3 + 2 * shot], eou);
        else
            snprintf(buf, sizeof buf, "%s%s\nAssistant:", question, eou);
        st = raw(s, buf);
    }
    if (st == IDEFICS_OK && ids_only) {
        const int32_t *ids;
        int n = idefics_session_get_tokens(s, &ids);
        for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
        printf("\n");
    } else if (st == IDEFICS_OK) {
        idefics_generate_params gp = idefics_generate_default_params();
        gp.max_new_tokens = 16;
        st = idefics_generate(s, &gp, print_piece, NULL);
        printf("\n");
    }
    if (st != IDEFICS_OK)
        fprintf(stderr, "error: %s (%s)\n", s ? idefics_session_last_error(s) : err, idefics_status_str(st));
    idefics_session_free(s);
    idefics_model_free(model);
    return st == IDEFICS_OK ? 0 : 1;
}
