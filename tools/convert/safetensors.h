/*
 * safetensors.h - reader for Hugging Face .safetensors checkpoints, single files
 * and sharded folders (model.safetensors.index.json).
 *
 * A safetensors file is: u64 little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
 * "__metadata__": {str: str}}, then the data area; offsets are relative to the
 * data area. The file is untrusted: idf_st_parse() bounds the header (<= 100 MB
 * and inside the file), requires valid JSON, known dtypes, shape product x dtype
 * size == end - begin (overflow-checked), every range inside the data area, no
 * overlapping ranges and no duplicate names. Errors are IDEFICS_ERR_BAD_CHECKPOINT
 * with a message naming the file and the tensor.
 */
#ifndef IDF_SAFETENSORS_H
#define IDF_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "platform.h"

#define IDF_ST_MAX_HEADER (100u * 1000u * 1000u)
#define IDF_ST_MAX_DIMS 8u

/* Every dtype the safetensors format defines; the converter reads F32/F16/BF16
 * and skips the rest by name. */
typedef enum idf_st_dtype {
    IDF_ST_BOOL,
    IDF_ST_U8,
    IDF_ST_I8,
    IDF_ST_F8_E5M2,
    IDF_ST_F8_E4M3,
    IDF_ST_I16,
    IDF_ST_U16,
    IDF_ST_F16,
    IDF_ST_BF16,
    IDF_ST_I32,
    IDF_ST_U32,
    IDF_ST_F32,
    IDF_ST_F64,
    IDF_ST_I64,
    IDF_ST_U64,
    IDF_ST_DTYPE_COUNT
} idf_st_dtype;

typedef struct idf_st_tensor {
    char *name;
    idf_st_dtype dtype;
    uint32_t n_dims;                  /* 0 for a scalar */
    uint64_t shape[IDF_ST_MAX_DIMS];
    uint64_t n_elements;
    uint64_t offset;                  /* absolute offset in the file */
    uint64_t nbytes;
    uint32_t file;                    /* shard index within a checkpoint */
} idf_st_tensor;

typedef struct idf_st_file {
    char *path;                       /* as given, for messages */
    idf_mapping map;                  /* zeroed when parsed from memory */
    const uint8_t *base;              /* the file's bytes */
    uint64_t size;
    uint64_t data_start;              /* 8 + header length */
    uint32_t n_tensors;
    idf_st_tensor *tensors;           /* sorted by name */
} idf_st_file;

const char *idf_st_dtype_name(idf_st_dtype dt);
/* Bytes per element. */
uint32_t idf_st_dtype_size(idf_st_dtype dt);

/* Parse and validate a whole safetensors file held in memory (buf stays owned by
 * the caller and must outlive f). label names the file in messages. Returns 0
 * (IDEFICS_OK) or IDEFICS_ERR_BAD_CHECKPOINT / IDEFICS_ERR_OUT_OF_MEMORY with
 * err set; on failure *f is zeroed. */
int idf_st_parse(const uint8_t *buf, uint64_t size, const char *label, idf_st_file *f, char *err, size_t errsz);
/* Map a file (idf_map_file) and parse it. IDEFICS_ERR_IO when it cannot be mapped. */
int idf_st_open(const char *path, idf_st_file *f, char *err, size_t errsz);
void idf_st_close(idf_st_file *f);
const idf_st_tensor *idf_st_find(const idf_st_file *f, const char *name);
/* The tensor's bytes (inside the file). */
static inline const uint8_t *idf_st_data(const idf_st_file *f, const idf_st_tensor *t) { return f->base + t->offset; }

/* A checkpoint: one model.safetensors, or the shards that
 * model.safetensors.index.json names. Tensor names are unique across shards and
 * every weight_map entry must be in the shard it names. */
typedef struct idf_st_checkpoint {
    uint32_t n_files;
    idf_st_file *files;
    uint32_t n_tensors;
    const idf_st_tensor **tensors;    /* all shards' tensors, sorted by name */
    uint64_t total_bytes;             /* sum of shard file sizes */
} idf_st_checkpoint;

int idf_st_checkpoint_open(const char *dir, idf_st_checkpoint *c, char *err, size_t errsz);
void idf_st_checkpoint_close(idf_st_checkpoint *c);
const idf_st_tensor *idf_st_checkpoint_find(const idf_st_checkpoint *c, const char *name);
static inline const idf_st_file *idf_st_checkpoint_file(const idf_st_checkpoint *c, const idf_st_tensor *t) {
    return &c->files[t->file];
}

#endif /* IDF_SAFETENSORS_H */
