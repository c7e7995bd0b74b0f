/*
 * idfx_reader.h - parse and validate an IDFX container held in memory (usually
 * a read-only mapping), and materialise its tensors.
 *
 * The file is untrusted: idfx_open() checks the header, every count, offset and
 * length (overflow-checked, against the buffer size), the metadata and the tensor
 * directory before anything else is read, and fails with a status and a message
 * that names the field, key or tensor. After a successful open every pointer and
 * size in idfx_file is known to be in bounds. Chunk payloads (checksums, zstd
 * frames) are checked when they are decoded or verified.
 *
 * Used by the runtime (model load) and by tools (inspect, repack).
 */
#ifndef IDFX_READER_H
#define IDFX_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idfx_format.h"
#include "internal.h"

typedef struct idfx_chunk {
    uint64_t offset;      /* absolute file offset */
    uint64_t stored_size;
    uint64_t raw_size;
    uint64_t raw_offset;  /* where this chunk's decoded bytes start within the tensor */
    uint64_t checksum;    /* XXH3-64 of the stored bytes */
    uint8_t codec;        /* idfx_codec */
    uint8_t filter;       /* idfx_filter */
} idfx_chunk;

typedef struct idfx_tensor {
    const char *name;     /* NUL-terminated copy */
    uint8_t type;         /* idfx_type */
    uint8_t layout;       /* idfx_layout */
    uint8_t n_dims;
    uint32_t layout_param;
    uint64_t dims[IDFX_MAX_DIMS]; /* unused dims are 1 */
    uint64_t n_elements;
    uint64_t nbytes;      /* decoded size */
    uint32_t n_chunks;
    idfx_chunk *chunks;
    /* Set by idfx_materialize(): the tensor's decoded bytes, contiguous. Points into
     * the file for raw, unfiltered tensors (zero copy), else into the arena. */
    const void *data;
} idfx_tensor;

typedef struct idfx_kv {
    const char *key;      /* NUL-terminated copy */
    uint8_t type;         /* idfx_kv_type */
    uint8_t elem_type;    /* for ARR */
    uint64_t count;       /* ARR: element count; STR: byte length; scalars: 1 */
    const uint8_t *value; /* points into the file at the encoded value (after type / elem_type+count) */
    uint64_t value_size;  /* encoded size of the value */
} idfx_kv;

typedef struct idfx_file {
    const uint8_t *base;  /* the whole file */
    uint64_t size;
    uint32_t version;
    uint32_t alignment;
    uint32_t n_kv;
    idfx_kv *kv;
    uint32_t n_tensors;
    idfx_tensor *tensors;
    uint64_t data_offset, data_size;
    void *arena;          /* decoded bytes of compressed/filtered tensors (idfx_materialize) */
    uint64_t arena_size;
    idf_alloc alloc;
    char *strings;        /* backing store for names and keys */
} idfx_file;

/* Parse and validate. On failure returns a status with err set; *f is left
 * zeroed (nothing to close). */
idefics_status idfx_open(idfx_file *f, const void *data, uint64_t size, const idf_alloc *alloc, idf_err *err);
void idfx_close(idfx_file *f);

/* Lookups; NULL when absent. */
const idfx_kv *idfx_find_kv(const idfx_file *f, const char *key);
const idfx_tensor *idfx_find_tensor(const idfx_file *f, const char *name);

/* Typed metadata getters: return IDEFICS_ERR_BAD_CONFIG (naming the key) when
 * the key is absent or of another type. u32 accepts U8/BOOL/U32/I32>=0 values. */
idefics_status idfx_get_u32(const idfx_file *f, const char *key, uint32_t *out, idf_err *err);
idefics_status idfx_get_f32(const idfx_file *f, const char *key, float *out, idf_err *err);
idefics_status idfx_get_bool(const idfx_file *f, const char *key, bool *out, idf_err *err);
/* Borrowed pointer into the file, NOT NUL-terminated; *len is its length. */
idefics_status idfx_get_str(const idfx_file *f, const char *key, const char **s, uint32_t *len, idf_err *err);
/* Array element access (validated by idfx_open: elements of the declared type
 * fit inside the value). Strings: borrowed, not NUL-terminated. */
idefics_status idfx_get_arr(const idfx_file *f, const char *key, idfx_kv_type elem_type, const idfx_kv **kv,
                            idf_err *err);
uint32_t idfx_arr_u32(const idfx_kv *kv, uint64_t i);
float idfx_arr_f32(const idfx_kv *kv, uint64_t i);
/* Iterate string arrays sequentially: pass *pos = 0 first; returns false at the end. */
bool idfx_arr_next_str(const idfx_kv *kv, uint64_t *pos, const char **s, uint32_t *len);

/* Check one chunk's checksum against its stored bytes. */
idefics_status idfx_verify_chunk(const idfx_file *f, const idfx_tensor *t, uint32_t chunk, idf_err *err);

/* Decode one chunk (decompress and unfilter) into dst, which holds raw_size bytes.
 * Verifies the checksum first when verify is true. Thread-safe for distinct chunks. */
idefics_status idfx_decode_chunk(const idfx_file *f, const idfx_tensor *t, uint32_t chunk, void *dst, bool verify,
                                 idf_err *err);

/* Give every tensor a contiguous `data` pointer: zero-copy into the file for raw
 * unfiltered tensors, else decoded into one arena (with `pool`, chunks decode in
 * parallel). With verify, every chunk's checksum is checked too. */
idefics_status idfx_materialize(idfx_file *f, idf_pool *pool, bool verify, idf_err *err);

/* Human-readable names for enums ("Q4", "ROWTILE", "zstd", ...); "?" when unknown. */
const char *idfx_type_name(int type);
const char *idfx_layout_name(int layout);
const char *idfx_codec_name(int codec);

#endif /* IDFX_READER_H */
