/*
 * chat_stream.c - a streaming chat about one image: each line of stdin is a
 * user turn, the answer streams to stdout as it is generated.
 *
 *   chat_stream MODEL.idfx IMAGE [--fresh] < questions.txt
 *
 * --fresh asks every question as a new conversation about the same image
 * (what a model that answers one question at a time, like the demo model,
 * needs): idefics_session_reset() keeps the buffers, the image is added again.
 */
#include <stdio.h>
#include <string.h>

#include <idefics.h>

static bool print_piece(void *user_data, int32_t token, const char *piece) {
    (void)user_data, (void)token;
    fputs(piece, stdout);
    fflush(stdout);
    return true;
}

int main(int argc, char **argv) {
    bool fresh = argc == 4 && !strcmp(argv[3], "--fresh");
    if (argc != 3 && !fresh) {
        fprintf(stderr, "usage: %s MODEL.idfx IMAGE [--fresh] < questions\n", argv[0]);
        return 2;
    }
    char err[256];
    idefics_model *model = NULL;
    idefics_model_params mp = idefics_model_default_params();
    if (idefics_model_load(argv[1], &mp, &model, err, sizeof err) != IDEFICS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], err);
        return 1;
    }
    idefics_session *s = NULL;
    idefics_session_params sp = idefics_session_default_params();
    idefics_status st = idefics_session_create(model, &sp, &s, err, sizeof err);
    idefics_generate_params gp = idefics_generate_default_params();
    char line[1024];
    bool first = true;
    while (st == IDEFICS_OK && fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) continue;
        if (fresh) idefics_session_reset(s);
        /* the image goes with the first question of each conversation */
        if (fresh || first) st = idefics_add_image_file(s, argv[2]);
        if (st == IDEFICS_OK) st = idefics_add_user_turn_n(s, line, strlen(line)); /* plain text */
        first = false;
        if (st != IDEFICS_OK) break;
        st = idefics_generate(s, &gp, print_piece, NULL);
        printf("\n");
        fflush(stdout);
        if (st == IDEFICS_OK && idefics_session_finish_reason(s) == IDEFICS_FINISH_CONTEXT_FULL) {
            fprintf(stderr, "the conversation filled the context; --fresh asks each question on its own\n");
            break;
        }
    }
    if (st != IDEFICS_OK)
        fprintf(stderr, "error: %s (%s)\n", s ? idefics_session_last_error(s) : err, idefics_status_str(st));
    idefics_session_free(s);
    idefics_model_free(model);
    return st == IDEFICS_OK ? 0 : 1;
}
