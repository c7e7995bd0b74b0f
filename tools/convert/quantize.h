/*
 * quantize.h - converter-side tensor encoding: fp32 -> Q4/Q8 ROWTILE (parallel
 * over row tiles) and fp32 -> F16/F32 ROWMAJOR, plus the source dtype decoding
 * (BF16/F16/F32 -> fp32) that feeds it.
 *
 * The Q4/Q8 output is bit-identical to idfx_quantize_q4_ref/idfx_quantize_q8_ref
 * for the same `search`: each task runs the reference itself on a whole number of
 * row tiles, and row tiles are independent contiguous byte ranges (quant/quant.h).
 */
#ifndef IDF_CONVERT_QUANTIZE_H
#define IDF_CONVERT_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#include "platform.h"
#include "quant.h"

/* Default scale-search candidates per sign for Q4 (docs/QUANT.md has the
 * time-versus-NMSE measurements that chose it). */
#define IDF_QUANT_DEFAULT_SEARCH 8
/* Default rows per ROWTILE tile (layout_param). */
#define IDF_QUANT_DEFAULT_TILE_ROWS 8u

/* Called on the calling thread between slabs: rows done so far out of rows. */
typedef void (*idf_quant_progress_fn)(void *ud, int64_t rows_done, int64_t rows);

/* Quantize rows x k row-major fp32 weights into dst, a ROWTILE buffer of
 * idfx_tensor_nbytes() bytes. type is IDFX_TYPE_Q4 or IDFX_TYPE_Q8; k must be a
 * multiple of 32 and tile_rows a valid tile height (the caller checks both with
 * idfx_tensor_nbytes). pool may be NULL (serial); progress may be NULL. */
void idf_quantize_rowtile(idf_pool *pool, int type, const float *w, int64_t rows, int64_t k, uint32_t tile_rows,
                          int search, void *dst, idf_quant_progress_fn progress, void *progress_ud);

/* n fp32 values -> n fp16 values (little-endian bytes), round to nearest even. */
void idf_convert_f32_to_f16(idf_pool *pool, const float *src, uint64_t n, uint8_t *dst);

/* Source element types the converter reads from checkpoints. */
typedef enum idf_src_dtype {
    IDF_SRC_F32 = 0,
    IDF_SRC_F16 = 1,
    IDF_SRC_BF16 = 2,
} idf_src_dtype;

/* n little-endian source elements -> fp32. */
void idf_convert_to_f32(idf_pool *pool, idf_src_dtype dt, const uint8_t *src, uint64_t n, float *dst);

#endif /* IDF_CONVERT_QUANTIZE_H */
