/*
 * synth_tokenizer.c - a synthetic LLaMA-style tokenizer: a BPE vocabulary with
 * byte fallback built deterministically from English words, word pieces and
 * syllables, plus the Hugging Face tokenizer files that describe it. The JSON
 * follows the layout of the LLaMA-1 tokenizer.json shipped with IDEFICS
 * (normalizer Prepend "▁" + Replace " " -> "▁", no pre-tokenizer, merges as
 * "left right" strings), so every consumer of the real file can read it.
 *
 * Invariants (checked by tests/test_synth_check.c): ids 0..2 are <unk> <s>
 * </s>, ids 3..258 are <0x00>..<0xFF>, then single characters, then merged
 * pieces. Every merge's result is in the vocabulary with an id larger than
 * both halves, and merges are listed in the order their results were created,
 * so each word added below tokenizes to a single piece.
 */
#include "synth.h"

#include <stdlib.h>
#include <string.h>

struct sy_tokenizer {
    int n, cap;          /* vocabulary entries used / allocated (cap = base vocab) */
    char **piece;        /* (cap) UTF-8 text of each id */
    int *str_slot;       /* open-addressing table: piece text -> id, -1 empty */
    size_t str_mask;
    int n_merges, merge_cap;
    int *merge_l, *merge_r, *merge_out; /* (merge_cap) halves and result of each rank */
    int *pair_slot;      /* open-addressing table: (left, right) -> rank, -1 empty */
    size_t pair_mask;
};

/* Characters that get their own piece right after the byte tokens: the word
 * marker, letters by English frequency, digits (LLaMA never merges digits, and
 * neither do we), then ASCII punctuation. */
static const char alphabet_ascii[] =
    "etaoinshrdlcumwfgypbvkjxqzETAOINSHRDLCUMWFGYPBVKJXQZ0123456789.,'-\"!?:;()/&%$#@*+=[]_<>{}|~`^\\";

/* Whole words, each added with a leading word marker; the first ones also
 * capitalised, since prompts start sentences with them ("User:", "What"). */
static const char common_words[] =
    "the of and to in is that for it as with was on be by this are or at from his an have not "
    "which but he they you all one had were there can been has their more will would what when "
    "who if so up out about into than them some these no other time could only its new two may "
    "after first also any like over such our man most me even made see many before must where "
    "through back years much your way well down should because each just those people how too "
    "little state good very make world still own men work long here get both between life being "
    "under never day same another know while last might us great old year off come since against "
    "go came right used take three states himself few house use during without again place around "
    "however home small found thought went say part once general high upon school every does got "
    "left number course war until always away something fact though water less public put think "
    "almost hand enough far took head yet government system better set told nothing night end why "
    "called didn find look going asked later knew point next program city business give group "
    "toward young days let room president side social given present several order national possible "
    "rather second face per among form important often things looked early white case large become "
    "large need big four within felt along children saw best church ever least power development "
    "light thing seemed family interest want members mind country area others done turned although "
    "open problem sense certain different door kind began law help image picture photo dog cat "
    "person woman girl boy car tree sky blue red green black yellow standing sitting holding "
    "wearing shirt table street building water grass field front background user assistant answer "
    "question describe shows there describe color text sign window food plate";

/* Frequent word pieces without the marker (suffixes and inner syllables). */
static const char fragments[] =
    "ing ed er es ly tion ment ness able al ic ous ive ity ize ized ation ations ers est ful less "
    "ence ance ant ent ist ism ical ally ings ated ating ure ory ary ian ial ual ous ship hood ward "
    "th he in an re on at en nd ti es or te of it is ar st to nt ng se ha as ou io le ve co me de hi "
    "ri ro ic ne ea ra ce li ch ll be ma si om ur";

static const char *const onsets[] = {"", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r",
                                     "s", "t", "v", "w", "y", "z", "ch", "sh", "th", "wh", "st", "tr", "pr",
                                     "pl", "br", "cr", "dr", "fr", "gr", "bl", "cl", "fl", "gl", "sl", "sp",
                                     "sc", "sk", "sm", "sn", "sw", "qu", "str", "spr", "scr"};
static const char *const vowels[] = {"a", "e", "i", "o", "u", "y", "ea", "ou", "ai", "ee", "oo", "ie",
                                     "oa", "au", "ei", "oi", "ue", "ay", "ow", "ey"};
static const char *const codas[] = {"", "n", "r", "s", "t", "l", "m", "d", "ng", "st", "ck", "nd", "rt",
                                    "nt", "ll", "ss", "ch", "sh", "th", "rd", "rn", "ct", "ft", "lt", "mp",
                                    "nk", "x", "p", "b", "g", "k", "f", "ve", "se", "te", "ne", "le", "re"};

/* ---- hashing ---- */

static uint64_t hash_str(const char *s) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

static uint64_t hash_pair(int l, int r) {
    uint64_t z = ((uint64_t)(uint32_t)l << 32 | (uint32_t)r) * 0x9E3779B97F4A7C15ull;
    return z ^ (z >> 31);
}

static int find_piece(const sy_tokenizer *t, const char *s) {
    for (size_t i = hash_str(s) & t->str_mask;; i = (i + 1) & t->str_mask) {
        int id = t->str_slot[i];
        if (id < 0) return -1;
        if (!strcmp(t->piece[id], s)) return id;
    }
}

static int find_merge(const sy_tokenizer *t, int l, int r) {
    for (size_t i = hash_pair(l, r) & t->pair_mask;; i = (i + 1) & t->pair_mask) {
        int m = t->pair_slot[i];
        if (m < 0) return -1;
        if (t->merge_l[m] == l && t->merge_r[m] == r) return m;
    }
}

/* Adds a piece (the caller checked it is new and there is room). */
static int add_piece(sy_tokenizer *t, const char *s) {
    char *copy = strdup(s);
    if (!copy) return -1;
    int id = t->n++;
    t->piece[id] = copy;
    size_t i = hash_str(s) & t->str_mask;
    while (t->str_slot[i] >= 0) i = (i + 1) & t->str_mask;
    t->str_slot[i] = id;
    return id;
}

/* ---- building ---- */

/* Splits a UTF-8 word into single-character piece ids; false if a character
 * has no piece or the word is too long. */
static bool word_symbols(const sy_tokenizer *t, const char *w, int *sym, int *n, int max) {
    *n = 0;
    while (*w) {
        int len = ((uint8_t)*w < 0x80) ? 1 : ((uint8_t)*w >> 5) == 6 ? 2 : ((uint8_t)*w >> 4) == 14 ? 3 : 4;
        char ch[5] = {0};
        for (int i = 0; i < len; i++) {
            if (!w[i]) return false;
            ch[i] = w[i];
        }
        int id = find_piece(t, ch);
        if (id < 0 || *n == max) return false;
        sym[(*n)++] = id;
        w += len;
    }
    return *n > 0;
}

/* Applies the merges learnt so far, lowest rank first (as BPE does). */
static void apply_merges(const sy_tokenizer *t, int *sym, int *n) {
    for (;;) {
        int best = -1, best_rank = 0;
        for (int i = 0; i + 1 < *n; i++) {
            int m = find_merge(t, sym[i], sym[i + 1]);
            if (m >= 0 && (best < 0 || m < best_rank)) {
                best = i;
                best_rank = m;
            }
        }
        if (best < 0) return;
        sym[best] = t->merge_out[best_rank];
        memmove(sym + best + 1, sym + best + 2, (size_t)(*n - best - 2) * sizeof *sym);
        (*n)--;
    }
}

/* Learns merges until w tokenizes to one piece, stopping early when the
 * vocabulary is full. Returns false only on allocation failure. New merges
 * rank after every existing one, so the words added earlier keep tokenizing
 * to a single piece. */
static bool add_word(sy_tokenizer *t, const char *w) {
    int sym[64], n;
    if (!word_symbols(t, w, sym, &n, 64)) return true;
    for (;;) {
        apply_merges(t, sym, &n);
        if (n == 1) return true;
        char buf[256];
        const char *a = t->piece[sym[0]], *b = t->piece[sym[1]];
        size_t la = strlen(a), lb = strlen(b);
        if (la + lb >= sizeof buf) return true;
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb + 1);
        int out = find_piece(t, buf);
        if (out < 0) {
            if (t->n == t->cap) return true;
            out = add_piece(t, buf);
            if (out < 0) return false;
        }
        if (t->n_merges == t->merge_cap) return true;
        int m = t->n_merges++;
        t->merge_l[m] = sym[0];
        t->merge_r[m] = sym[1];
        t->merge_out[m] = out;
        size_t i = hash_pair(sym[0], sym[1]) & t->pair_mask;
        while (t->pair_slot[i] >= 0) i = (i + 1) & t->pair_mask;
        t->pair_slot[i] = m;
    }
}

/* Adds every space-separated word of list, optionally with the marker. */
static bool add_list(sy_tokenizer *t, const char *list, bool marker, bool capitalise, int max_words) {
    char word[96];
    int count = 0;
    for (const char *p = list; *p && t->n < t->cap && count < max_words;) {
        while (*p == ' ') p++;
        size_t len = strcspn(p, " ");
        if (!len) break;
        size_t off = 0;
        if (marker) {
            memcpy(word, SY_SPACE, 3);
            off = 3;
        }
        if (len + off >= sizeof word) len = sizeof word - off - 1;
        memcpy(word + off, p, len);
        word[off + len] = 0;
        if (capitalise && word[off] >= 'a' && word[off] <= 'z') word[off] = (char)(word[off] - 'a' + 'A');
        if (!add_word(t, word)) return false;
        p += len;
        count++;
    }
    return true;
}

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static bool add_syllables(sy_tokenizer *t, bool marker) {
    char w[64];
    for (size_t v = 0; v < COUNT(vowels); v++)
        for (size_t o = 0; o < COUNT(onsets); o++)
            for (size_t c = 0; c < COUNT(codas); c++) {
                if (t->n == t->cap) return true;
                snprintf(w, sizeof w, "%s%s%s%s", marker ? SY_SPACE : "", onsets[o], vowels[v], codas[c]);
                if (!add_word(t, w)) return false;
            }
    return true;
}

/* Two-syllable words fill whatever room is left; there are far more of them
 * than any vocabulary needs. */
static bool add_two_syllables(sy_tokenizer *t) {
    char w[64];
    for (size_t c2 = 0; c2 < COUNT(codas); c2++)
        for (size_t o2 = 0; o2 < COUNT(onsets); o2++)
            for (size_t v1 = 0; v1 < 6; v1++)
                for (size_t o1 = 1; o1 < COUNT(onsets); o1++)
                    for (size_t v2 = 0; v2 < 6; v2++) {
                        if (t->n == t->cap) return true;
                        snprintf(w, sizeof w, SY_SPACE "%s%s%s%s%s", onsets[o1], vowels[v1], onsets[o2], vowels[v2],
                                 codas[c2]);
                        if (!add_word(t, w)) return false;
                    }
    return true;
}

sy_tokenizer *sy_tokenizer_build(int base_vocab) {
    const int fixed = 3 + 256 + 1 + (int)strlen(alphabet_ascii);
    if (base_vocab < fixed || base_vocab > (1 << 22)) return NULL;
    sy_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->cap = base_vocab;
    t->merge_cap = 4 * base_vocab;
    size_t str_slots = 1, pair_slots = 1;
    while (str_slots < 2 * (size_t)base_vocab) str_slots <<= 1;
    while (pair_slots < 2 * (size_t)t->merge_cap) pair_slots <<= 1;
    t->str_mask = str_slots - 1;
    t->pair_mask = pair_slots - 1;
    t->piece = calloc((size_t)base_vocab, sizeof *t->piece);
    t->str_slot = malloc(str_slots * sizeof *t->str_slot);
    t->pair_slot = malloc(pair_slots * sizeof *t->pair_slot);
    t->merge_l = malloc((size_t)t->merge_cap * sizeof(int));
    t->merge_r = malloc((size_t)t->merge_cap * sizeof(int));
    t->merge_out = malloc((size_t)t->merge_cap * sizeof(int));
    if (!t->piece || !t->str_slot || !t->pair_slot || !t->merge_l || !t->merge_r || !t->merge_out) goto fail;
    memset(t->str_slot, 0xff, str_slots * sizeof *t->str_slot);
    memset(t->pair_slot, 0xff, pair_slots * sizeof *t->pair_slot);

    static const char *const specials[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3; i++)
        if (add_piece(t, specials[i]) < 0) goto fail;
    for (int b = 0; b < 256; b++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        if (add_piece(t, s) < 0) goto fail;
    }
    if (add_piece(t, SY_SPACE) < 0) goto fail;
    for (const char *c = alphabet_ascii; *c; c++) {
        char s[2] = {*c, 0};
        if (add_piece(t, s) < 0) goto fail;
    }
    /* runs of spaces (indentation) as in LLaMA */
    if (!add_word(t, SY_SPACE SY_SPACE) || !add_word(t, SY_SPACE SY_SPACE SY_SPACE SY_SPACE)) goto fail;
    if (!add_list(t, common_words, true, false, 1 << 30)) goto fail;
    if (!add_list(t, common_words, true, true, 120)) goto fail;
    if (!add_list(t, fragments, false, false, 1 << 30)) goto fail;
    if (!add_syllables(t, true) || !add_syllables(t, false) || !add_two_syllables(t)) goto fail;
    if (t->n != t->cap) goto fail; /* the generators ran dry: cannot happen for sizes we use */
    return t;
fail:
    sy_tokenizer_free(t);
    return NULL;
}

void sy_tokenizer_free(sy_tokenizer *t) {
    if (!t) return;
    if (t->piece)
        for (int i = 0; i < t->n; i++) free(t->piece[i]);
    free(t->piece);
    free(t->str_slot);
    free(t->pair_slot);
    free(t->merge_l);
    free(t->merge_r);
    free(t->merge_out);
    free(t);
}

size_t sy_tokenizer_n_merges(const sy_tokenizer *t) { return (size_t)t->n_merges; }

/* ---- JSON ---- */

void sy_json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fputc(c, f);
        }
    }
    fputc('"', f);
}

static const char *const added_names[] = {"<fake_token_around_image>", "<image>", "<end_of_utterance>"};

static void added_token(FILE *f, int id, const char *content, bool last) {
    fprintf(f,
            "    {\n      \"id\": %d,\n      \"content\": ", id);
    sy_json_str(f, content);
    fprintf(f,
            ",\n      \"single_word\": false,\n      \"lstrip\": false,\n      \"rstrip\": false,\n"
            "      \"normalized\": false,\n      \"special\": true\n    }%s\n",
            last ? "" : ",");
}

bool sy_write_tokenizer_json(const sy_tokenizer *t, int add_vocab, FILE *f) {
    if (add_vocab < 0 || add_vocab > (int)COUNT(added_names)) return false;
    fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n  \"added_tokens\": [\n", f);
    for (int i = 0; i < 3; i++) added_token(f, i, t->piece[i], i == 2 && add_vocab == 0);
    for (int i = 0; i < add_vocab; i++) added_token(f, t->n + i, added_names[i], i == add_vocab - 1);
    fputs("  ],\n"
          "  \"normalizer\": {\n    \"type\": \"Sequence\",\n    \"normalizers\": [\n"
          "      {\n        \"type\": \"Prepend\",\n        \"prepend\": \"" SY_SPACE "\"\n      },\n"
          "      {\n        \"type\": \"Replace\",\n        \"pattern\": {\n          \"String\": \" \"\n        },\n"
          "        \"content\": \"" SY_SPACE "\"\n      }\n    ]\n  },\n"
          "  \"pre_tokenizer\": null,\n"
          "  \"post_processor\": {\n    \"type\": \"TemplateProcessing\",\n"
          "    \"single\": [\n      {\n        \"SpecialToken\": {\n          \"id\": \"<s>\",\n          \"type_id\": 0\n"
          "        }\n      },\n      {\n        \"Sequence\": {\n          \"id\": \"A\",\n          \"type_id\": 0\n"
          "        }\n      }\n    ],\n"
          "    \"pair\": [\n      {\n        \"SpecialToken\": {\n          \"id\": \"<s>\",\n          \"type_id\": 0\n"
          "        }\n      },\n      {\n        \"Sequence\": {\n          \"id\": \"A\",\n          \"type_id\": 0\n"
          "        }\n      },\n      {\n        \"SpecialToken\": {\n          \"id\": \"<s>\",\n          \"type_id\": 1\n"
          "        }\n      },\n      {\n        \"Sequence\": {\n          \"id\": \"B\",\n          \"type_id\": 1\n"
          "        }\n      }\n    ],\n"
          "    \"special_tokens\": {\n      \"<s>\": {\n        \"id\": \"<s>\",\n        \"ids\": [\n          1\n"
          "        ],\n        \"tokens\": [\n          \"<s>\"\n        ]\n      }\n    }\n  },\n"
          "  \"decoder\": {\n    \"type\": \"Sequence\",\n    \"decoders\": [\n"
          "      {\n        \"type\": \"Replace\",\n        \"pattern\": {\n          \"String\": \"" SY_SPACE "\"\n"
          "        },\n        \"content\": \" \"\n      },\n"
          "      {\n        \"type\": \"ByteFallback\"\n      },\n"
          "      {\n        \"type\": \"Fuse\"\n      },\n"
          "      {\n        \"type\": \"Strip\",\n        \"content\": \" \",\n        \"start\": 1,\n        \"stop\": 0\n"
          "      }\n    ]\n  },\n"
          "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": \"<unk>\",\n"
          "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n    \"fuse_unk\": true,\n"
          "    \"byte_fallback\": true,\n    \"vocab\": {\n",
          f);
    for (int i = 0; i < t->n; i++) {
        fputs("      ", f);
        sy_json_str(f, t->piece[i]);
        fprintf(f, ": %d%s\n", i, i + 1 < t->n ? "," : "");
    }
    fputs("    },\n    \"merges\": [\n", f);
    char buf[512];
    for (int m = 0; m < t->n_merges; m++) {
        snprintf(buf, sizeof buf, "%s %s", t->piece[t->merge_l[m]], t->piece[t->merge_r[m]]);
        fputs("      ", f);
        sy_json_str(f, buf);
        fputs(m + 1 < t->n_merges ? ",\n" : "\n", f);
    }
    fputs("    ]\n  }\n}\n", f);
    return !ferror(f);
}

static void token_object(FILE *f, const char *indent, const char *content, bool with_special) {
    fprintf(f, "{\n%s  \"content\": ", indent);
    sy_json_str(f, content);
    fprintf(f,
            ",\n%s  \"lstrip\": false,\n%s  \"normalized\": false,\n%s  \"rstrip\": false,\n%s  \"single_word\": false%s\n%s}",
            indent, indent, indent, indent, with_special ? ",\n    \"special\": true" : "", indent);
}

bool sy_write_tokenizer_config(int base_vocab, int add_vocab, int max_len, FILE *f) {
    fputs("{\n  \"add_bos_token\": true,\n  \"add_eos_token\": false,\n  \"added_tokens_decoder\": {\n", f);
    static const char *const specials[] = {"<unk>", "<s>", "</s>"};
    for (int i = 0; i < 3 + add_vocab; i++) {
        fprintf(f, "    \"%d\": ", i < 3 ? i : base_vocab + i - 3);
        token_object(f, "    ", i < 3 ? specials[i] : added_names[i - 3], true);
        fputs(i + 1 < 3 + add_vocab ? ",\n" : "\n", f);
    }
    fputs("  },\n", f);
    if (add_vocab > 0) {
        fputs("  \"additional_special_tokens\": [", f);
        for (int i = 0; i < add_vocab; i++) {
            sy_json_str(f, added_names[i]);
            if (i + 1 < add_vocab) fputs(", ", f);
        }
        fputs("],\n", f);
    }
    fprintf(f,
            "  \"bos_token\": \"<s>\",\n"
            "  \"clean_up_tokenization_spaces\": false,\n"
            "  \"eos_token\": \"</s>\",\n"
            "  \"legacy\": true,\n"
            "  \"model_max_length\": %d,\n"
            "  \"pad_token\": \"<unk>\",\n"
            "  \"padding_side\": \"left\",\n"
            "  \"sp_model_kwargs\": {},\n"
            "  \"tokenizer_class\": \"LlamaTokenizer\",\n"
            "  \"unk_token\": \"<unk>\"\n"
            "}\n",
            max_len);
    return !ferror(f);
}

bool sy_write_special_tokens_map(int add_vocab, FILE *f) {
    fputs("{\n", f);
    if (add_vocab > 0) {
        fputs("  \"additional_special_tokens\": [\n", f);
        for (int i = 0; i < add_vocab; i++) {
            fputs("    ", f);
            token_object(f, "    ", added_names[i], false);
            fputs(i + 1 < add_vocab ? ",\n" : "\n", f);
        }
        fputs("  ],\n", f);
    }
    static const char *const keys[] = {"bos_token", "eos_token", "pad_token", "unk_token"};
    static const char *const vals[] = {"<s>", "</s>", "<unk>", "<unk>"};
    for (int i = 0; i < 4; i++) {
        fprintf(f, "  \"%s\": ", keys[i]);
        token_object(f, "  ", vals[i], false);
        fputs(i < 3 ? ",\n" : "\n", f);
    }
    fputs("}\n", f);
    return !ferror(f);
}

bool sy_write_added_tokens(int base_vocab, int add_vocab, FILE *f) {
    fputs("{\n", f);
    for (int i = 0; i < add_vocab; i++) {
        fputs("  ", f);
        sy_json_str(f, added_names[i]);
        fprintf(f, ": %d%s\n", base_vocab + i, i + 1 < add_vocab ? "," : "");
    }
    fputs("}\n", f);
    return !ferror(f);
}
