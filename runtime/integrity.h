/*
 * integrity.h - whole-file checks of an opened IDFX container (issue 15):
 * every chunk checksum, the finiteness of every Q4/Q8 fp16 scale, zero
 * alignment padding; and the "verified before" stamp that lets a model load
 * skip the full read after the first one.
 *
 * The model loader runs idfx_verify (checksums + scales) on the first load of
 * a file and whenever its identity changes; `idefics inspect --verify` runs it
 * with padding and decoding too. Both report by tensor and chunk.
 */
#ifndef IDF_INTEGRITY_H
#define IDF_INTEGRITY_H

#include <stdbool.h>
#include <stdint.h>

#include "idfx_reader.h"
#include "platform.h"

typedef struct idfx_verify_opts {
    bool checksums; /* XXH3 of every chunk's stored bytes */
    bool scales;    /* Q4/Q8 fp16 scales finite: raw chunks from the file; others only with decode */
    bool padding;   /* bytes outside the header, the sections and the chunks are zero */
    bool decode;    /* decode compressed/filtered chunks (zstd errors; their scales) */
} idfx_verify_opts;

typedef struct idfx_verify_stats {
    uint64_t chunks, failed, bytes; /* bytes: stored bytes hashed or scanned */
    double ms;
    int threads;
} idfx_verify_stats;

/* XXH3-64 of src[0, size) fed in slices; fn (may be NULL) sees each slice
 * right after it is hashed, while it is still in cache. */
typedef void (*idf_slice_fn)(void *ud, const uint8_t *p, uint64_t off, uint64_t n);
uint64_t idf_hash_slices(const uint8_t *src, uint64_t size, uint64_t slice, idf_slice_fn fn, void *ud);
#if defined(__x86_64__)
uint64_t idf_hash_slices_avx2(const uint8_t *src, uint64_t size, uint64_t slice, idf_slice_fn fn, void *ud);
#endif

/* Called once per failure, in file order, from the calling thread. */
typedef void (*idfx_verify_report_fn)(void *user_data, idefics_status st, const char *msg);

/* Check the file. Returns IDEFICS_OK, or the first failure (err names the
 * tensor and chunk, or the padding range). pool may be NULL (serial). */
idefics_status idfx_verify(const idfx_file *f, idf_pool *pool, const idfx_verify_opts *o, idfx_verify_report_fn report,
                           void *report_ud, idfx_verify_stats *stats, idf_err *err);

/* After idfx_materialize: the scales of Q4/Q8 tensors whose chunks are not
 * stored raw (idfx_verify could not see them in the file). */
idefics_status idfx_verify_decoded_scales(const idfx_file *f, idf_err *err);

/* ---- the stamp: "this file was verified", keyed by the file's identity ----
 * (device, inode, size, mtime in ns) and its header checksum. Any change of
 * these (a replaced, rewritten or touched file) misses the stamp. */
typedef struct idf_stamp {
    char path[1024]; /* "" when no cache folder is usable */
    char line[256];  /* the stamp's content */
} idf_stamp;

/* Fill s for this mapping; cache_dir NULL = idf_user_cache_dir(). */
void idf_stamp_init(idf_stamp *s, const char *cache_dir, const idf_mapping *map);
bool idf_stamp_present(const idf_stamp *s);
bool idf_stamp_write(const idf_stamp *s);

#endif /* IDF_INTEGRITY_H */
