/*
 * idfx_writer.h - write an IDFX v1 file (docs/FORMAT.md) in a streaming way.
 *
 * Tensors are appended one at a time: each is split into chunks of whole units
 * (a row tile for ROWTILE, a row for ROWMAJOR), the chunks are compressed in
 * parallel, written at aligned offsets and checksummed, and only the directory
 * entry is kept in memory. Metadata and the directory are written after the data
 * region at close, and the header last, so the converter never holds the model.
 * The file is built under a temporary name next to the output and renamed into
 * place at close, so a failed or interrupted conversion never leaves a file that
 * looks complete.
 *
 * Functions return 0 or -1; idfx_writer_error() gives the message of the last
 * failure. After a failure the writer should be aborted.
 */
#ifndef IDFX_WRITER_H
#define IDFX_WRITER_H

#include <stddef.h>
#include <stdint.h>

#include "idfx_format.h"

typedef struct idfx_writer_opts {
    uint32_t alignment;   /* data alignment, power of two in [4096, 1 MiB]; default 4096 */
    uint64_t chunk_bytes; /* max decoded bytes per chunk (at least one unit); default IDFX_DEFAULT_CHUNK_BYTES */
    int codec;            /* IDFX_CODEC_RAW or IDFX_CODEC_ZSTD; default ZSTD */
    int zstd_level;       /* default 3 (measured: higher levels gain nothing on weights; see idfx_writer.c) */
    double min_saving;    /* a chunk is stored raw unless zstd saves at least this fraction; default 0.05;
                             negative: always keep the zstd frame (tests) */
    int shuffle;          /* -1 auto: for F16/F32 also try byte-shuffle and keep the smaller; 0 off;
                             1 always shuffle F16/F32 chunks, even raw ones (tests of readers) */
    int n_threads;        /* compression threads; 0 = all cores */
} idfx_writer_opts;

/* Per-type totals, for the converter's summary. */
typedef struct idfx_writer_stat {
    uint64_t tensors;
    uint64_t params;       /* elements */
    uint64_t raw_bytes;    /* decoded bytes */
    uint64_t stored_bytes; /* bytes in the file (chunks only, no padding) */
} idfx_writer_stat;

typedef struct idfx_writer idfx_writer;

idfx_writer_opts idfx_writer_default_opts(void);

/* Creates PATH.tmp.<pid> next to PATH. NULL on failure with the reason in err. */
idfx_writer *idfx_writer_open(const char *path, const idfx_writer_opts *o, char *err, size_t errsz);

/* Metadata. Keys must be unique, non-empty and at most IDFX_MAX_KEY_LEN bytes. */
int idfx_writer_kv_u8(idfx_writer *w, const char *key, uint8_t v);
int idfx_writer_kv_bool(idfx_writer *w, const char *key, int v);
int idfx_writer_kv_u32(idfx_writer *w, const char *key, uint32_t v);
int idfx_writer_kv_i32(idfx_writer *w, const char *key, int32_t v);
int idfx_writer_kv_f32(idfx_writer *w, const char *key, float v);
int idfx_writer_kv_u64(idfx_writer *w, const char *key, uint64_t v);
int idfx_writer_kv_str(idfx_writer *w, const char *key, const char *s, uint32_t len);
/* lens may be NULL: then each s[i] is NUL-terminated. */
int idfx_writer_kv_arr_str(idfx_writer *w, const char *key, const char *const *s, const uint32_t *lens, uint64_t n);
int idfx_writer_kv_arr_f32(idfx_writer *w, const char *key, const float *v, uint64_t n);
int idfx_writer_kv_arr_u32(idfx_writer *w, const char *key, const uint32_t *v, uint64_t n);
/* Copy one already-encoded value verbatim (repack). The arguments mirror the
 * reader's idfx_kv: scalars: value_size bytes; STR: count == value_size bytes;
 * ARR: elem_type, count and the encoded elements (value_size bytes). */
int idfx_writer_kv_raw(idfx_writer *w, const char *key, uint8_t kv_type, uint8_t elem_type, uint64_t count,
                       const void *value, uint64_t value_size);

/* data = the tensor's final decoded bytes (nbytes must equal idfx_tensor_nbytes()).
 * Duplicate names and invalid type/layout/shape combinations are rejected. */
int idfx_writer_add_tensor(idfx_writer *w, const char *name, int type, int layout, uint32_t layout_param,
                           uint32_t n_dims, const uint64_t *dims, const void *data, uint64_t nbytes);

/* Writes metadata + directory + header, fsyncs and renames into place. Frees w
 * whatever the outcome (on failure the temporary file is removed). */
int idfx_writer_close(idfx_writer *w, char *err, size_t errsz);
/* Removes the partial file and frees w. NULL is fine. */
void idfx_writer_abort(idfx_writer *w);

const char *idfx_writer_error(const idfx_writer *w);
void idfx_writer_stats(const idfx_writer *w, idfx_writer_stat out[IDFX_TYPE_COUNT]);

#endif /* IDFX_WRITER_H */
