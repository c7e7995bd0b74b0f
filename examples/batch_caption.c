/*
 * batch_caption.c - alt text for many images through the API: one model, one
 * session reused (idefics_session_reset keeps its buffers), and the question
 * the model itself suggests for captions (its "chat.caption_prompt" metadata).
 *
 *   batch_caption MODEL.idfx IMAGE...
 *
 * Prints "PATH: caption" per image; an unreadable image is reported on stderr
 * and skipped. Exit status 0 when every image got a caption.
 */
#include <stdio.h>
#include <string.h>

#include <idefics.h>

typedef struct text {
    char buf[1024];
    size_t len;
} text;

static bool collect(void *user_data, int32_t token, const char *piece) {
    (void)token;
    text *t = user_data;
    size_t n = strlen(piece);
    if (t->len + n >= sizeof t->buf) return false; /* long enough for alt text */
    memcpy(t->buf + t->len, piece, n + 1);
    t->len += n;
    return true;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.idfx IMAGE...\n", argv[0]);
        return 2;
    }
    char err[256];
    idefics_model *model = NULL;
    idefics_model_params mp = idefics_model_default_params();
    if (idefics_model_load(argv[1], &mp, &model, err, sizeof err) != IDEFICS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], err);
        return 1;
    }
    char prompt[512];
    size_t len = 0;
    if (idefics_model_meta(model, "chat.caption_prompt", prompt, sizeof prompt, &len) != IDEFICS_OK ||
        len >= sizeof prompt)
        strcpy(prompt, "Describe the image.");
    idefics_session *s = NULL;
    idefics_session_params sp = idefics_session_default_params();
    if (idefics_session_create(model, &sp, &s, err, sizeof err) != IDEFICS_OK) {
        fprintf(stderr, "cannot create a session: %s\n", err);
        idefics_model_free(model);
        return 1;
    }
    idefics_generate_params gp = idefics_generate_default_params();
    gp.max_new_tokens = 48;
    int failed = 0;
    for (int i = 2; i < argc; i++) {
        idefics_session_reset(s); /* a new conversation per image */
        text t = {.len = 0};
        idefics_status st = idefics_add_image_file(s, argv[i]);
        if (st == IDEFICS_OK) st = idefics_add_user_turn(s, prompt);
        if (st == IDEFICS_OK) st = idefics_generate(s, &gp, collect, &t);
        if (st != IDEFICS_OK) {
            fprintf(stderr, "skipping %s: %s\n", argv[i], idefics_session_last_error(s));
            failed++;
            continue;
        }
        printf("%s: %s\n", argv[i], t.buf);
    }
    idefics_session_free(s);
    idefics_model_free(model);
    return failed ? 1 : 0;
}
