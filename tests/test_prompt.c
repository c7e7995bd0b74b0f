/*
 * test_prompt.c - the processor (runtime/prompt.c): text assembly from items
 * (strip rule, shared fake tokens, the add_end_of_utterance_token option, the
 * chat templates) and the image_attention_mask scan (</s> reset, <end_of_utterance>
 * not resetting, adjacent images, no images, more <image> tokens than images,
 * resuming across calls). The ids-level match against the HF processor's
 * recorded fixtures needs the tokenizer and lives in test_prompt_fixtures.c.
 */
#include <stdio.h>
#include <string.h>

#include "prompt.h"

#include "check.h"

#define F IDF_PROMPT_FAKE
#define I IDF_PROMPT_IMAGE
#define EOU IDF_PROMPT_EOU

static const idf_alloc al = {{0}};

/* Items: a string is text, NULL is an image. */
static void build(idf_prompt *p, bool auto_eou, const char *const *items, int n) {
    idf_prompt_init(p, &al, auto_eou);
    for (int i = 0; i < n; i++) {
        if (items[i])
            idf_prompt_add_text(p, items[i], strlen(items[i]), true);
        else
            idf_prompt_add_image(p);
    }
}

static void expect_text(const char *const *items, int n, bool auto_eou, const char *want, int line) {
    idf_prompt p;
    build(&p, auto_eou, items, n);
    if (strcmp(p.text, want) != 0) {
        failures++;
        fprintf(stderr, "%s:%d: FAIL text\n  got  %s\n  want %s\n", __FILE__, line, p.text, want);
    }
    idf_prompt_free(&p);
}
#define EXPECT_TEXT(items, auto_eou, want) \
    expect_text(items, (int)(sizeof items / sizeof items[0]), auto_eou, want, __LINE__)

static void test_items(void) {
    /* the instruct model card, passed with add_end_of_utterance_token=False */
    const char *card[] = {"User: What is in this image?", NULL, EOU, "\nAssistant: A dog.<end_of_utterance>", "\nUser:",
                          NULL, "And who is that?<end_of_utterance>", "\nAssistant:"};
    EXPECT_TEXT(card, false,
                "<s>User: What is in this image?" F I F EOU "\nAssistant: A dog." EOU "\nUser:" F I F
                "And who is that?" EOU "\nAssistant:");
    /* spaces stripped, newlines and tabs kept; empty text still counts as an item */
    const char *strip[] = {"  hello \n ", " \tx  "};
    EXPECT_TEXT(strip, false, "<s>hello \n\tx");
    /* adjacent images share the fake token between them */
    const char *adj[] = {NULL, NULL, NULL, "x", NULL};
    EXPECT_TEXT(adj, false, "<s>" F I F I F I F "x" F I F);
    /* the processor's default for instruct tokenizers: EOU between consecutive texts only */
    const char *eou[] = {"a", "b", NULL, "c", "", "d"};
    EXPECT_TEXT(eou, true, "<s>a" EOU "b" F I F "c" EOU EOU "d");
    EXPECT_TEXT(eou, false, "<s>ab" F I F "cd");
    const char *none[] = {"just text"};
    EXPECT_TEXT(none, true, "<s>just text");
}

static void expect_turn(bool instruct, const char *const *pre, int n_pre, const char *q, const char *want, int line) {
    idf_prompt p;
    idf_err err = {{0}};
    build(&p, false, pre, n_pre);
    int imgs = p.n_images;
    idefics_status st = idf_prompt_add_user_turn(&p, q, strlen(q), instruct, &err);
    if (st != IDEFICS_OK || strcmp(p.text, want) != 0 || p.n_images != imgs) {
        failures++;
        fprintf(stderr, "%s:%d: FAIL turn (status %d, %s)\n  got  %s\n  want %s\n", __FILE__, line, st, err.msg,
                p.text, want);
    }
    idf_prompt_free(&p);
}
#define EXPECT_TURN(instruct, pre, q, want) \
    expect_turn(instruct, pre, (int)(sizeof pre / sizeof pre[0]), q, want, __LINE__)

static void test_turns(void) {
    const char *img1[] = {NULL};
    const char *img2[] = {NULL, NULL};
    const char *nothing[] = {""};
    /* instruct: the model card's first turn, question before the image */
    EXPECT_TURN(true, img1, "  What is in this image?\n",
                "<s>User: What is in this image?" F I F EOU "\nAssistant:");
    EXPECT_TURN(true, img2, "Compare them.", "<s>User: Compare them." F I F I F EOU "\nAssistant:");
    EXPECT_TURN(true, nothing, "Hi", "<s>User: Hi" EOU "\nAssistant:");
    /* base: the docs' few-shot order, image before the question */
    EXPECT_TURN(false, img1, "Describe this image.", "<s>User:" F I F "Describe this image.\nAssistant:");
    EXPECT_TURN(false, nothing, "Hi", "<s>User: Hi\nAssistant:");
    /* a second turn starts on a new line; only trailing images move into it */
    const char *second[] = {"User: q1" EOU "\nAssistant: a1" EOU, NULL};
    EXPECT_TURN(true, second, "q2", "<s>User: q1" EOU "\nAssistant: a1" EOU "\nUser: q2" F I F EOU "\nAssistant:");
    const char *mid[] = {NULL, "context", NULL};
    EXPECT_TURN(false, mid, "q", "<s>" F I F "context\nUser:" F I F "q\nAssistant:");
    const char *nl[] = {"system\n"};
    EXPECT_TURN(true, nl, "q", "<s>system\nUser: q" EOU "\nAssistant:");

    /* an empty question fails and leaves the prompt as it was */
    idf_prompt p;
    idf_err err = {{0}};
    build(&p, false, img1, 1);
    char before[256];
    snprintf(before, sizeof before, "%s", p.text);
    CHECK(idf_prompt_add_user_turn(&p, " \n\t ", 4, true, &err) == IDEFICS_ERR_EMPTY_PROMPT, "empty question accepted");
    CHECK(err.msg[0] != '\0', "no error text");
    CHECK(strcmp(p.text, before) == 0 && p.n_images == 1 && p.run_images == 1, "prompt changed: %s", p.text);
    /* a copy is independent of its source */
    idf_prompt q = {0};
    CHECK(idf_prompt_copy(&q, &p) == IDEFICS_OK, "copy");
    idf_prompt_add_text(&q, "more", 4, true);
    CHECK(strcmp(p.text, before) == 0 && strstr(q.text, "more"), "copy shares the buffer");
    idf_prompt_clear(&q);
    CHECK(strcmp(q.text, "<s>") == 0 && q.n_images == 0 && q.last == IDF_ITEM_NONE, "clear");
    idf_prompt_free(&q);
    idf_prompt_free(&p);
}

enum { BOS = 1, EOS = 2, FK = 32000, IM = 32001, EU = 32002, A = 100, B = 101 };

static void expect_scan(const int32_t *ids, int n, int n_images, const int32_t *want, int line) {
    int32_t got[64];
    idf_scan_state sc;
    idf_image_scan_init(&sc);
    idf_image_scan(&sc, ids, n, IM, EOS, n_images, got);
    for (int i = 0; i < n; i++) {
        if (got[i] != want[i]) {
            failures++;
            fprintf(stderr, "%s:%d: FAIL scan: token %d (id %d) sees %d, want %d\n", __FILE__, line, i, ids[i],
                    got[i], want[i]);
            return;
        }
    }
    /* resuming at every split point gives the same answer */
    for (int cut = 1; cut < n; cut++) {
        idf_image_scan_init(&sc);
        idf_image_scan(&sc, ids, cut, IM, EOS, n_images, got);
        idf_image_scan(&sc, ids + cut, n - cut, IM, EOS, n_images, got + cut);
        if (memcmp(got, want, sizeof(int32_t) * (size_t)n) != 0) {
            failures++;
            fprintf(stderr, "%s:%d: FAIL scan resumed at %d differs\n", __FILE__, line, cut);
            return;
        }
    }
}
#define EXPECT_SCAN(ids, n_images, want)                                                               \
    do {                                                                                              \
        _Static_assert(sizeof ids == sizeof want, "lengths");                                         \
        expect_scan(ids, (int)(sizeof ids / sizeof ids[0]), n_images, want, __LINE__);                \
    } while (0)

static void test_scan(void) {
    /* before the first image nothing is visible; <image> and the closing fake see the new image */
    const int32_t t1[] = {BOS, A, FK, IM, FK, A, B};
    const int32_t w1[] = {-1, -1, -1, 0, 0, 0, 0};
    EXPECT_SCAN(t1, 1, w1);
    /* </s> keeps its own value and hides images from the next token until the next <image> */
    const int32_t t2[] = {BOS, FK, IM, FK, A, EOS, A, FK, IM, FK, B, EOS};
    const int32_t w2[] = {-1, -1, 0, 0, 0, 0, -1, -1, 1, 1, 1, 1};
    EXPECT_SCAN(t2, 2, w2);
    /* <end_of_utterance> does not reset */
    const int32_t t3[] = {BOS, A, FK, IM, FK, EU, A, EU, B};
    const int32_t w3[] = {-1, -1, -1, 0, 0, 0, 0, 0, 0};
    EXPECT_SCAN(t3, 1, w3);
    /* adjacent images: each token sees only the most recent one */
    const int32_t t4[] = {BOS, FK, IM, FK, IM, FK, IM, FK, A};
    const int32_t w4[] = {-1, -1, 0, 0, 1, 1, 2, 2, 2};
    EXPECT_SCAN(t4, 3, w4);
    /* no images at all */
    const int32_t t5[] = {BOS, A, B, EOS, A};
    const int32_t w5[] = {-1, -1, -1, -1, -1};
    EXPECT_SCAN(t5, 0, w5);
    /* more <image> tokens than images (literal "<image>" in text): indices past the last image see nothing */
    const int32_t t6[] = {BOS, IM, A, FK, IM, FK, A};
    const int32_t w6[] = {-1, 0, 0, 0, -1, -1, -1};
    EXPECT_SCAN(t6, 1, w6);
    /* </s> then a new image restores visibility at the <image> itself */
    const int32_t t7[] = {BOS, EOS, FK, IM, EOS, EOS, IM};
    const int32_t w7[] = {-1, -1, -1, 0, 0, -1, 1};
    EXPECT_SCAN(t7, 2, w7);
}

int main(void) {
    test_items();
    test_turns();
    test_scan();
    if (failures) {
        fprintf(stderr, "test_prompt: %d failure(s)\n", failures);
        return 1;
    }
    printf("test_prompt: ok\n");
    return 0;
}
