/*
 * embedded.h - the table tools/embed/embed.c generates at build time: the
 * OpenCL sources (kernels/NAME.cl, quant/quant.h) and the GPU tuning files
 * (boards/gpu/NAME.ini) the library carries. With -Dembed_kernels=false the
 * kernel entries hold only their source path and are read at run time.
 */
#ifndef IDF_EMBEDDED_H
#define IDF_EMBEDDED_H

#include <stddef.h>
#include <stdint.h>

typedef struct idf_embedded_file {
    const char *name;           /* "matmul_q4.cl", "quant.h", "gpu/adreno-7xx.ini" */
    const unsigned char *bytes; /* NUL-terminated; NULL when only path is set */
    size_t len;                 /* without the NUL */
    uint64_t hash;              /* FNV-1a 64 of the bytes (0 when not embedded) */
    const char *path;           /* source path to read at run time, or NULL */
} idf_embedded_file;

extern const idf_embedded_file idf_embedded_files[];
extern const unsigned idf_embedded_files_count;

#endif /* IDF_EMBEDDED_H */
