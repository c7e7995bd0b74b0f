/*
 * fuzz_spm.c - libFuzzer target for the SentencePiece tokenizer.model parser
 * (tools/convert/tokenizer_import.c): any bytes must parse or fail cleanly, and a
 * vocabulary that parses must build a tokenizer (or be rejected by create) that
 * encodes and decodes without touching memory it does not own.
 * Seeds: tests/fixtures/tokenizer/tiny/tokenizer.model.
 * Build: CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz tests/fuzz_spm
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tokenizer.h"
#include "tokenizer_import.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    idf_tok_vocab_owned o;
    char err[256];
    if (idf_tokenizer_parse_spm(data, size, &o, err, sizeof err) != 0)
        return 0;
    idf_tokenizer *t = NULL;
    idf_err e;
    if (idf_tokenizer_create(&o.v, NULL, &t, &e) == IDEFICS_OK) {
        static const char text[] = "Hello <s> w\xC3\xB6rld \xF0\x9F\xA4\x97\xFF  \n";
        int32_t ids[128];
        int n = 0;
        if (idf_tokenize(t, text, sizeof text - 1, true, ids, 128, &n, &e) == IDEFICS_OK) {
            char buf[512];
            idf_detokenize(t, ids, n < 128 ? n : 128, false, buf, sizeof buf);
            for (int i = 0; i < n && i < 128; i++)
                idf_token_to_piece(t, i ? ids[i - 1] : -1, ids[i], buf, sizeof buf);
        }
        idf_tokenizer_free(t);
    }
    idf_tok_vocab_owned_free(&o);
    return 0;
}
