/*
 * cmd_tokenize.c - `idefics tokenize`: print the token ids of a text, from a
 * model file's tokenizer keys (no weights are loaded) or straight from a
 * Hugging Face tokenizer.json / tokenizer.model (converter builds only).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_faults.h"
#include "idfx_reader.h"
#include "tokenizer.h"
#ifdef IDF_HAVE_TOKENIZER_IMPORT
#include "tokenizer_import.h"
#endif

static void usage(FILE *f) {
    fprintf(f, "usage: idefics tokenize (-m MODEL.idfx | --tokenizer tokenizer.json|tokenizer.model) [--json] "
               "[--no-bos] TEXT\n"
               "  Prints the token ids of TEXT (\"-\" reads standard input), space separated.\n"
               "  Special tokens written in the text (<image>, <s>, ...) become their ids.\n"
               "  -m FILE           read the tokenizer from a converted model (weights are not loaded)\n"
               "  --tokenizer FILE  read a Hugging Face tokenizer file; tokenizer_config.json,\n"
               "                    special_tokens_map.json and added_tokens.json next to it are used\n"
               "  --json            print {\"ids\": [...], \"pieces\": [...]} instead\n"
               "  --no-bos          do not start with the BOS token <s>\n");
}

static char *read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0)
            break;
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
    }
    *len = n;
    return buf;
}

static void json_string(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

/* Open the container and build the tokenizer from its keys; the mapping stays
 * alive only while the tokenizer is built (it copies what it needs). */
static int tokenizer_from_model(const char *path, idf_tokenizer **t) {
    idf_mapping m;
    int r = idf_map_file(path, &m);
    if (r != 0) {
        fprintf(stderr, "idefics tokenize: %s: IDEFICS_ERR_IO: cannot open: %s\n", path, idf_open_strerror(r));
        return 1;
    }
    idfx_file f;
    idf_err e;
    idf_err_clear(&e);
    idefics_status st = idfx_open(&f, m.data, m.size, NULL, &e);
    if (st == IDEFICS_OK) {
        st = idf_tokenizer_from_idfx(&f, NULL, t, &e);
        idfx_close(&f);
    }
    idf_unmap_file(&m);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics tokenize: %s: %s: %s\n", path, idefics_status_str(st), e.msg);
        return 1;
    }
    return 0;
}

static int tokenizer_from_hf(const char *path, idf_tokenizer **t) {
#ifdef IDF_HAVE_TOKENIZER_IMPORT
    idf_tok_vocab_owned o;
    char err[512];
    if (idf_tokenizer_import_file(path, &o, err, sizeof err) != 0) {
        fprintf(stderr, "idefics tokenize: %s\n", err);
        return 1;
    }
    idf_err e;
    idf_err_clear(&e);
    idefics_status st = idf_tokenizer_create(&o.v, NULL, t, &e);
    idf_tok_vocab_owned_free(&o);
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics tokenize: %s: %s: %s\n", path, idefics_status_str(st), e.msg);
        return 1;
    }
    return 0;
#else
    (void)t;
    fprintf(stderr,
            "idefics tokenize: --tokenizer %s: this build has no tokenizer importer (built without the "
            "converter); use -m MODEL.idfx\n",
            path);
    return 1;
#endif
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *tok_file = NULL, *text = NULL;
    bool json = false, bos = true;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if ((!strcmp(a, "-m") || !strcmp(a, "--model")) && i + 1 < argc) {
            model = argv[++i];
        } else if (!strcmp(a, "--tokenizer") && i + 1 < argc) {
            tok_file = argv[++i];
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--no-bos")) {
            bos = false;
        } else if (!strcmp(a, "--")) {
            if (i + 1 < argc && !text)
                text = argv[++i];
            break;
        } else if (a[0] == '-' && a[1] != '\0') {
            fprintf(stderr, "idefics tokenize: unknown option or missing value: %s\n", a);
            usage(stderr);
            return 2;
        } else if (!text) {
            text = a;
        } else {
            fprintf(stderr, "idefics tokenize: one TEXT only (quote it)\n");
            return 2;
        }
    }
    if (!text || (!model == !tok_file)) {
        usage(stderr);
        return 2;
    }
    idf_tokenizer *t = NULL;
    int rc = model ? tokenizer_from_model(model, &t) : tokenizer_from_hf(tok_file, &t);
    if (rc != 0)
        return rc;

    size_t len = strlen(text);
    char *owned = NULL;
    if (!strcmp(text, "-")) {
        owned = read_stdin(&len);
        if (!owned) {
            fprintf(stderr, "idefics tokenize: cannot read standard input\n");
            idf_tokenizer_free(t);
            return 1;
        }
        text = owned;
    }
    int n = 0;
    int32_t *ids = NULL;
    idf_err e;
    idf_err_clear(&e);
    idefics_status st = idf_tokenize(t, text, len, bos, NULL, 0, &n, &e);
    if (st == IDEFICS_OK) {
        ids = malloc(((size_t)n + 1) * sizeof *ids);
        st = ids ? idf_tokenize(t, text, len, bos, ids, n, &n, &e) : IDEFICS_ERR_OUT_OF_MEMORY;
    }
    if (st != IDEFICS_OK) {
        fprintf(stderr, "idefics tokenize: %s: %s\n", idefics_status_str(st), e.msg);
        rc = 1;
    } else if (json) {
        fputs("{\"ids\": [", stdout);
        for (int i = 0; i < n; i++)
            printf(i ? ", %d" : "%d", ids[i]);
        fputs("], \"pieces\": [", stdout);
        for (int i = 0; i < n; i++) {
            uint32_t plen = 0;
            const char *p = idf_tokenizer_piece(t, ids[i], &plen);
            if (i)
                fputs(", ", stdout);
            json_string(p ? p : "", plen);
        }
        fputs("]}\n", stdout);
    } else {
        for (int i = 0; i < n; i++)
            printf(i ? " %d" : "%d", ids[i]);
        putchar('\n');
    }
    if (!rc && cli_check_stdout("tokenize")) rc = 1; /* a write error is never a success */
    free(ids);
    free(owned);
    idf_tokenizer_free(t);
    return rc;
}
