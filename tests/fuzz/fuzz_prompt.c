/*
 * fuzz_prompt.c - libFuzzer target for user text through the prompt builder
 * and the span-aware tokenizer (runtime/prompt.c, idf_tokenize_spans): the
 * path every question, chat line and server message takes.
 *
 * The input is a list of items: a first byte choosing the kind (plain text,
 * raw text, image, user turn, begin, end), then a length byte and that many
 * bytes of text. Besides memory safety (ASan/UBSan), the target checks the
 * issue-14 invariant: plain text never yields a special token, so unless raw
 * text was added the ids hold exactly one <s>, one <image> per image, no </s>,
 * and no more <fake_token_around_image> than two per image.
 * A small vocabulary built here holds the special tokens IDEFICS uses.
 * Build: CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz tests/fuzz_prompt
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idfx_format.h"
#include "prompt.h"
#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const k_normal[] = {"\xE2\x96\x81", "<", ">", "/", "_", "a", "e", "g", "i", "m", "s", "n", "k",
                                       "\xE2\x96\x81<", "im", "age", "<s", "s>", "en", "<im", "age>", "\xE2\x96\x81" "a"};
static const char *const k_special[] = {"<image>", "<fake_token_around_image>", "<end_of_utterance>"};

/* <unk> <s> </s>, 256 byte pieces, the normal pieces, the added specials */
static idf_tokenizer *make_tokenizer(void) {
    enum { N_NORMAL = sizeof k_normal / sizeof k_normal[0], N = 3 + 256 + N_NORMAL + 3 };
    static char bytes[256][8];
    const char *pieces[N];
    uint32_t lens[N], types[N];
    float scores[N];
    int n = 0;
    const char *head[] = {"<unk>", "<s>", "</s>"};
    const uint32_t head_t[] = {IDFX_TOKEN_UNKNOWN, IDFX_TOKEN_CONTROL, IDFX_TOKEN_CONTROL};
    for (int i = 0; i < 3; i++, n++) pieces[n] = head[i], types[n] = head_t[i], scores[n] = 0;
    for (int b = 0; b < 256; b++, n++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        pieces[n] = bytes[b], types[n] = IDFX_TOKEN_BYTE, scores[n] = 0;
    }
    for (int i = 0; i < N_NORMAL; i++, n++) pieces[n] = k_normal[i], types[n] = IDFX_TOKEN_NORMAL, scores[n] = -(float)i;
    for (int i = 0; i < 3; i++, n++)
        pieces[n] = k_special[i], types[n] = i == 2 ? IDFX_TOKEN_CONTROL : IDFX_TOKEN_USER_DEFINED, scores[n] = 0;
    for (int i = 0; i < n; i++) lens[i] = (uint32_t)strlen(pieces[i]);
    idf_tok_vocab v = {.n_vocab = (uint32_t)n, .pieces = pieces, .piece_lens = lens, .scores = scores,
                       .types = types, .bos_id = 1, .eos_id = 2, .unk_id = 0, .pad_id = 0,
                       .add_dummy_prefix = true};
    idf_tokenizer *t = NULL;
    idf_err e;
    if (idf_tokenizer_create(&v, NULL, &t, &e) != IDEFICS_OK) abort();
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static idf_tokenizer *t;
    static const idf_alloc al = {{0}};
    if (!t) t = make_tokenizer();
    int32_t tok_image = idf_tokenizer_find(t, "<image>"), tok_fake = idf_tokenizer_find(t, "<fake_token_around_image>");
    idf_prompt p;
    if (idf_prompt_init(&p, &al, false) != IDEFICS_OK) return 0;
    idf_err e;
    bool raw = false;
    for (size_t i = 0; i + 1 < size;) {
        uint8_t kind = data[i] % 6, len = data[i + 1];
        i += 2;
        if (len > size - i) len = (uint8_t)(size - i);
        const char *text = (const char *)data + i;
        i += len;
        if (memchr(text, 0, len)) continue; /* the public calls refuse NULs */
        switch (kind) {
        case 0: idf_prompt_add_text(&p, text, len, false); break;
        case 1:
            idf_prompt_add_text(&p, text, len, true);
            raw = true;
            break;
        case 2: idf_prompt_add_image(&p); break;
        case 3: idf_prompt_add_user_turn(&p, text, len, data[0] & 1, &e); break;
        case 4: idf_prompt_begin_turn(&p, &e); break;
        case 5: idf_prompt_end_turn(&p, data[0] & 1, &e); break;
        }
    }
    /* the spans are sorted, disjoint and inside the text */
    for (int k = 0; k < p.n_sp; k++)
        if (p.sp[k].start >= p.sp[k].end || p.sp[k].end > p.len || (k > 0 && p.sp[k].start < p.sp[k - 1].end)) abort();
    int n = 0;
    if (idf_tokenize_spans(t, p.text, p.len, p.sp, p.n_sp, false, NULL, 0, &n, &e) == IDEFICS_OK && n > 0) {
        int32_t *ids = malloc((size_t)n * sizeof *ids);
        int n2 = 0;
        if (ids && idf_tokenize_spans(t, p.text, p.len, p.sp, p.n_sp, false, ids, n, &n2, &e) == IDEFICS_OK && !raw) {
            int bos = 0, eos = 0, img = 0, fake = 0;
            for (int i = 0; i < n2; i++) {
                bos += ids[i] == 1;
                eos += ids[i] == 2;
                img += ids[i] == tok_image;
                fake += ids[i] == tok_fake;
            }
            if (bos != 1 || eos != 0 || img != p.n_images || fake > 2 * p.n_images) abort();
        }
        free(ids);
    }
    idf_prompt_free(&p);
    return 0;
}
