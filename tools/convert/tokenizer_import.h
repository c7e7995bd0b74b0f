/*
 * tokenizer_import.h - read a Hugging Face LLaMA tokenizer (tokenizer.json, or
 * the SentencePiece tokenizer.model plus added_tokens.json) into an
 * idf_tok_vocab, and write it as the tokenizer.* metadata keys (quant/idfx_keys.h).
 *
 * Both formats give the same vocabulary: ids 0..n-1 without holes (added tokens
 * such as IDEFICS's <image> follow the base vocabulary), a token type per id
 * (CONTROL for special added tokens, USER_DEFINED for other added tokens,
 * UNKNOWN for <unk>, BYTE for <0xNN>, NORMAL otherwise) and either merges
 * (tokenizer.json) or SentencePiece scores (tokenizer.model). The files are
 * untrusted: every count, length and id is checked, and errors name the file
 * and field.
 *
 * Next to the tokenizer file, as in transformers' from_pretrained, these are
 * read when present: tokenizer_config.json and special_tokens_map.json (the
 * bos/eos/unk/pad token names, which added tokens are special) and, for a
 * tokenizer.model, added_tokens.json (the added tokens and their ids).
 */
#ifndef IDF_TOKENIZER_IMPORT_H
#define IDF_TOKENIZER_IMPORT_H

#include <stddef.h>
#include <stdint.h>

#include "idfx_writer.h"
#include "tokenizer.h"

/* An idf_tok_vocab (member v, whose pointers refer to the arrays below) plus
 * the storage it points to. Zero-initialise before use; free with
 * idf_tok_vocab_owned_free (safe on a zeroed or partly filled one). */
typedef struct idf_tok_vocab_owned {
    idf_tok_vocab v;
    char **pieces; /* [v.n_vocab], NUL-terminated copies */
    uint32_t *piece_lens;
    float *scores;
    uint32_t *types;
    char **merges; /* [v.n_merges] "left right" */
    uint32_t *merge_lens;
    uint32_t cap; /* allocated slots of the per-piece arrays */
    uint32_t merge_cap;
} idf_tok_vocab_owned;

void idf_tok_vocab_owned_free(idf_tok_vocab_owned *o);

/* Append a token with id v.n_vocab (type: idfx_token_type; score 0). Used for
 * added tokens, and by tests to give a bare tokenizer.model the IDEFICS tokens. */
int idf_tok_vocab_add_token(idf_tok_vocab_owned *o, const char *content, uint32_t type, char *err, size_t errsz);

/* Read tokenizer.json from model_dir (else tokenizer.model, plus added_tokens.json)
 * and write the tokenizer.* keys (quant/idfx_keys.h). The vocabulary is first
 * checked by building a runtime tokenizer from it, so the file written is one
 * the runtime accepts. 0 on success, -1 with err. */
int idf_tokenizer_import(const char *model_dir, idfx_writer *w, char *err, size_t errsz);

/* The vocabulary idf_tokenizer_import would write, without writing it. */
int idf_tokenizer_import_dir(const char *model_dir, idf_tok_vocab_owned *out, char *err, size_t errsz);

/* Load one tokenizer file (tokenizer.json or tokenizer.model, told apart by
 * content) into memory, with the side files of its folder, for
 * `idefics tokenize --tokenizer FILE` without a model. */
int idf_tokenizer_import_file(const char *path, idf_tok_vocab_owned *out, char *err, size_t errsz);

/* The parsers on their own, on bytes in memory (no side files): for tests and
 * the fuzz target. */
int idf_tokenizer_parse_spm(const uint8_t *data, size_t size, idf_tok_vocab_owned *out, char *err, size_t errsz);
int idf_tokenizer_parse_json(const char *text, size_t len, idf_tok_vocab_owned *out, char *err, size_t errsz);

/* Write the tokenizer.* keys of v. 0 or -1 with err. */
int idf_tokenizer_write_keys(const idf_tok_vocab *v, idfx_writer *w, char *err, size_t errsz);

#endif /* IDF_TOKENIZER_IMPORT_H */
