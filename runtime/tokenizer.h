/*
 * tokenizer.h - LLaMA SentencePiece BPE with byte fallback, as IDEFICS uses it
 * (the Hugging Face LlamaTokenizer(Fast) in legacy mode).
 *
 * Encoding: added/special tokens (token_type CONTROL or USER_DEFINED, e.g. <s>,
 * <image>) are split out first; each remaining text segment is normalised
 * (prepend "▁" when add_dummy_prefix, spaces -> "▁"), then merged by BPE (merge
 * rank when merges are present, else piece score), falling back to <0xNN> byte
 * pieces for characters not in the vocabulary.
 */
#ifndef IDF_TOKENIZER_H
#define IDF_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

typedef struct idfx_file idfx_file;
typedef struct idf_tokenizer idf_tokenizer;

/* The vocabulary, as stored in the tokenizer.* metadata keys (quant/idfx_keys.h).
 * Strings are borrowed (not necessarily NUL-terminated) and copied by create. */
typedef struct idf_tok_vocab {
    uint32_t n_vocab;
    const char **pieces;        /* [n_vocab] */
    const uint32_t *piece_lens; /* [n_vocab] */
    const float *scores;        /* [n_vocab] */
    const uint32_t *types;      /* [n_vocab], idfx_token_type */
    uint32_t n_merges;          /* 0 = merge by score */
    const char **merges;        /* [n_merges] "left right" */
    const uint32_t *merge_lens;
    uint32_t bos_id, eos_id, unk_id, pad_id;
    bool add_dummy_prefix;
} idf_tok_vocab;

idefics_status idf_tokenizer_create(const idf_tok_vocab *v, const idf_alloc *alloc, idf_tokenizer **out,
                                    idf_err *err);
/* Read the tokenizer.* keys of an opened file. */
idefics_status idf_tokenizer_from_idfx(const idfx_file *f, const idf_alloc *alloc, idf_tokenizer **out,
                                       idf_err *err);
void idf_tokenizer_free(idf_tokenizer *t);

/* Encode UTF-8 text of len bytes. Writes up to max_ids ids; *n_ids gets the full
 * count (ids may be NULL with max_ids 0 to measure). Invalid UTF-8 is encoded
 * byte by byte through the fallback. Thread-safe: t is only read. */
idefics_status idf_tokenize(const idf_tokenizer *t, const char *text, size_t len, bool add_bos, int32_t *ids,
                            int max_ids, int *n_ids, idf_err *err);

/* A byte range [start, end) of a text. */
typedef struct idf_span {
    size_t start, end;
} idf_span;

/* idf_tokenize, recognising special-token strings only where the whole string
 * lies inside one of spans[0..n_spans) (sorted, disjoint); elsewhere they are
 * ordinary text. Text between recognised special tokens is one segment
 * whatever the spans, so SentencePiece segments plain text next to structure
 * as it would the same text without spans. n_spans 0: no special tokens. */
idefics_status idf_tokenize_spans(const idf_tokenizer *t, const char *text, size_t len, const idf_span *spans,
                                  int n_spans, bool add_bos, int32_t *ids, int max_ids, int *n_ids, idf_err *err);
/* Whether id is one of the tokens the encoder splits out (CONTROL,
 * USER_DEFINED, UNKNOWN: <s>, <image>, ...). */
bool idf_tokenizer_is_special(const idf_tokenizer *t, int32_t id);

/* Decoded text of token id following prev (-1 at the start of a sequence):
 * "▁" -> " ", the leading space of the first piece dropped (legacy rule), byte
 * pieces emitted as raw bytes. Writes NUL-terminated; returns bytes written or
 * -1 if the buffer is too small or id is outside the vocabulary. Special tokens
 * decode to their text. Streaming these pieces rebuilds the exact bytes, where
 * idf_detokenize would replace invalid UTF-8. */
int idf_token_to_piece(const idf_tokenizer *t, int32_t prev, int32_t id, char *buf, size_t size);

/* Decode a whole sequence into buf (NUL-terminated, truncated to size), as HF's
 * decode(ids, skip_special_tokens) does: runs of byte pieces that are not valid
 * UTF-8 become one U+FFFD per byte; skip_special drops CONTROL and UNKNOWN ids;
 * ids outside the vocabulary are ignored. Returns the full decoded length (like
 * snprintf), so a call with size 0 measures. */
size_t idf_detokenize(const idf_tokenizer *t, const int32_t *ids, int n, bool skip_special, char *buf, size_t size);

int32_t idf_tokenizer_find(const idf_tokenizer *t, const char *piece); /* -1 when absent */
/* The vocabulary text of id as stored ("▁User", "<0x0A>"), NUL-terminated, with
 * its length in *len; NULL for an id outside the vocabulary. */
const char *idf_tokenizer_piece(const idf_tokenizer *t, int32_t id, uint32_t *len);
uint32_t idf_tokenizer_n_vocab(const idf_tokenizer *t);
uint32_t idf_tokenizer_bos(const idf_tokenizer *t);
uint32_t idf_tokenizer_eos(const idf_tokenizer *t);

#endif /* IDF_TOKENIZER_H */
