/*
 * simple.c - the smallest complete use of libidefics: one question about one
 * image, the answer streamed to stdout.
 *
 *   simple MODEL.idfx IMAGE "What shape is in the image?"
 *
 * Build from an installed library:  cc simple.c $(pkg-config --cflags --libs idefics)
 */
#include <stdio.h>

#include <idefics.h>

static bool print_piece(void *user_data, int32_t token, const char *piece) {
    (void)user_data, (void)token;
    fputs(piece, stdout);
    fflush(stdout);
    return true; /* false would stop the generation */
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.idfx IMAGE QUESTION\n", argv[0]);
        return 2;
    }
    /* The header and the loaded library must agree (a newer library is fine). */
    if (idefics_version() / 100 != IDEFICS_VERSION_NUMBER / 100) {
        fprintf(stderr, "libidefics %s does not match the header this was built with\n", idefics_version_string());
        return 1;
    }
    char err[256];
    idefics_model *model = NULL;
    idefics_model_params mp = idefics_model_default_params();
    idefics_status st = idefics_model_load(argv[1], &mp, &model, err, sizeof err);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], err);
        return 1;
    }
    /* The model must outlive every session made from it. */
    idefics_session *s = NULL;
    idefics_session_params sp = idefics_session_default_params();
    st = idefics_session_create(model, &sp, &s, err, sizeof err);
    if (st == IDEFICS_OK) st = idefics_add_image_file(s, argv[2]);
    if (st == IDEFICS_OK) st = idefics_add_user_turn(s, argv[3]); /* the image goes into this turn */
    if (st == IDEFICS_OK) {
        idefics_generate_params gp = idefics_generate_default_params();
        st = idefics_generate(s, &gp, print_piece, NULL);
        printf("\n");
        fprintf(stderr, "(finished: %s)\n", idefics_finish_reason_str(idefics_session_finish_reason(s)));
    }
    if (st != IDEFICS_OK)
        fprintf(stderr, "error: %s (%s)\n", s ? idefics_session_last_error(s) : err, idefics_status_str(st));
    idefics_session_free(s);
    idefics_model_free(model);
    return st == IDEFICS_OK ? 0 : 1;
}
