/*
 * idfx_format.h - the IDFX packed model file, version 1.
 *
 * This header mirrors docs/FORMAT.md (the normative spec). It is plain C11 and
 * depends on nothing but <stdint.h>. Enum values are pinned: new values are only
 * ever appended, removed ones stay as commented tombstones.
 *
 * Byte layout (all integers little-endian, no implicit padding):
 *
 *   [0, 128)                      fixed header (below)
 *   [meta_offset, +meta_size)     metadata: n_kv key/value entries
 *   [dir_offset,  +dir_size)      tensor directory: n_tensors entries
 *   [data_offset, +data_size)     data region; data_offset and every chunk offset
 *                                 are multiples of `alignment` (power of two, >= 4096)
 *
 *   The three sections may come in any order after the header but must not
 *   overlap and must lie inside file_size. The converter streams: header, then
 *   the data region from `alignment` on, then metadata and directory at the end
 *   (and finally rewrites the header), so it never holds the model in memory.
 *   Every chunk lies inside the data region; chunks do not overlap.
 *
 *   header (128 bytes):
 *     0   u8[4] magic "IDFX"           4   u32 version (= 1)
 *     8   u32 header_size (= 128)      12  u32 flags (= 0, reserved)
 *     16  u32 alignment                20  u32 n_kv
 *     24  u32 n_tensors                28  u32 reserved (= 0)
 *     32  u64 file_size                40  u64 meta_offset
 *     48  u64 meta_size                56  u64 dir_offset
 *     64  u64 dir_size                 72  u64 data_offset
 *     80  u64 data_size                88  u64 index_checksum  XXH3-64 of meta||dir
 *     96  u8[24] reserved (= 0)        120 u64 header_checksum XXH3-64 of bytes [0,120)
 *
 *   kv entry:   u16 key_len, u8 key[key_len], u8 kv_type, value
 *               value: U8/BOOL 1 byte, U32/I32/F32 4 bytes, U64 8 bytes,
 *                      STR: u32 len, u8 bytes[len] (UTF-8, no NUL)
 *                      ARR: u8 elem_type, u64 count, count values (no nested ARR)
 *
 *   tensor entry:
 *               u16 name_len, u8 name[name_len]
 *               u8 type (idfx_type), u8 layout (idfx_layout), u8 n_dims (1..4), u8 reserved
 *               u64 dims[n_dims]        PyTorch order: dims[0] = rows (out_features),
 *                                       dims[n_dims-1] = the contiguous axis (in_features)
 *               u32 layout_param        ROWTILE: rows per tile; ROWMAJOR: 0
 *               u32 n_chunks
 *               chunk[n_chunks], 40 bytes each:
 *                 u64 offset            absolute file offset, multiple of alignment
 *                 u64 stored_size       bytes in the file
 *                 u64 raw_size          bytes after decoding
 *                 u64 checksum          XXH3-64 of the stored bytes
 *                 u8 codec (idfx_codec), u8 filter (idfx_filter), u8 reserved[6]
 *
 *   Chunks hold consecutive ranges of the tensor's decoded bytes, in order; their
 *   raw sizes add up to the tensor's byte size and each is a whole number of units
 *   (a row tile for ROWTILE, a row for ROWMAJOR).
 */
#ifndef IDFX_FORMAT_H
#define IDFX_FORMAT_H

#include <stdint.h>

#define IDFX_MAGIC            "IDFX"
#define IDFX_VERSION          1u
#define IDFX_HEADER_SIZE      128u
#define IDFX_MIN_ALIGNMENT    4096u
#define IDFX_MAX_ALIGNMENT    (1u << 20)
#define IDFX_CHUNK_ENTRY_SIZE 40u
#define IDFX_MAX_DIMS         4u
#define IDFX_MAX_NAME_LEN     512u
#define IDFX_MAX_KEY_LEN      256u
/* Default cap on one chunk's decoded size. Adreno allows at most 1 GiB per
 * buffer and some Mali drivers 256 MiB; 64 MiB keeps every device in reach and
 * gives the loader's thread pool enough chunks to share out. */
#define IDFX_DEFAULT_CHUNK_BYTES (64u << 20)

/* Header field offsets, for the reader and writer (no struct is ever memcpy'd
 * from the file: fields are decoded one by one, little-endian). */
enum {
    IDFX_OFF_MAGIC = 0,
    IDFX_OFF_VERSION = 4,
    IDFX_OFF_HEADER_SIZE = 8,
    IDFX_OFF_FLAGS = 12,
    IDFX_OFF_ALIGNMENT = 16,
    IDFX_OFF_N_KV = 20,
    IDFX_OFF_N_TENSORS = 24,
    IDFX_OFF_RESERVED0 = 28,
    IDFX_OFF_FILE_SIZE = 32,
    IDFX_OFF_META_OFFSET = 40,
    IDFX_OFF_META_SIZE = 48,
    IDFX_OFF_DIR_OFFSET = 56,
    IDFX_OFF_DIR_SIZE = 64,
    IDFX_OFF_DATA_OFFSET = 72,
    IDFX_OFF_DATA_SIZE = 80,
    IDFX_OFF_INDEX_CHECKSUM = 88,
    IDFX_OFF_RESERVED1 = 96,
    IDFX_OFF_HEADER_CHECKSUM = 120,
};

/* Tensor element types. Pinned values, append only. */
typedef enum idfx_type {
    IDFX_TYPE_F32 = 0,
    IDFX_TYPE_F16 = 1,
    IDFX_TYPE_Q4 = 2, /* 4-bit codebook, groups of 32, fp16 scale: 4.5 bits/weight (quant/quant.h) */
    IDFX_TYPE_Q8 = 3, /* int8, groups of 32, fp16 scale: 8.5 bits/weight */
    IDFX_TYPE_COUNT
} idfx_type;

/* Tensor byte layouts. Pinned values, append only. */
typedef enum idfx_layout {
    IDFX_LAYOUT_ROWMAJOR = 0, /* plain C order; F32/F16 only */
    IDFX_LAYOUT_ROWTILE = 1,  /* 2-D Q4/Q8: row tiles, scales run then quants run (quant/quant.h) */
    IDFX_LAYOUT_GROUPTILE = 2, /* 2-D Q4/Q8: row tiles, each group's scales then its quants (quant/quant.h) */
    IDFX_LAYOUT_COUNT
} idfx_layout;

/* Chunk codecs. Pinned values, append only. */
typedef enum idfx_codec {
    IDFX_CODEC_RAW = 0,
    IDFX_CODEC_ZSTD = 1, /* exactly one zstd frame with its content size set */
    IDFX_CODEC_COUNT
} idfx_codec;

/* Filters applied before compression and undone after it. Pinned, append only. */
typedef enum idfx_filter {
    IDFX_FILTER_NONE = 0,
    IDFX_FILTER_SHUFFLE2 = 1, /* byte shuffle of 2-byte elements: all byte 0s, then all byte 1s */
    IDFX_FILTER_SHUFFLE4 = 2, /* byte shuffle of 4-byte elements */
    IDFX_FILTER_COUNT
} idfx_filter;

/* Metadata value types. Pinned values, append only. */
typedef enum idfx_kv_type {
    IDFX_KV_U8 = 0,
    IDFX_KV_BOOL = 1,
    IDFX_KV_U32 = 2,
    IDFX_KV_I32 = 3,
    IDFX_KV_F32 = 4,
    IDFX_KV_U64 = 5,
    IDFX_KV_STR = 6,
    IDFX_KV_ARR = 7,
    IDFX_KV_COUNT
} idfx_kv_type;

/* tokenizer.token_type values (SentencePiece piece types). Pinned. */
typedef enum idfx_token_type {
    IDFX_TOKEN_NORMAL = 1,
    IDFX_TOKEN_UNKNOWN = 2,
    IDFX_TOKEN_CONTROL = 3,
    IDFX_TOKEN_USER_DEFINED = 4, /* added tokens, split out before BPE */
    IDFX_TOKEN_UNUSED = 5,
    IDFX_TOKEN_BYTE = 6, /* <0xNN> byte-fallback pieces */
} idfx_token_type;

#endif /* IDFX_FORMAT_H */
