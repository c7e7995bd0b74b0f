/*
 * repack.h - re-encode an IDFX file (another codec, chunk size or alignment)
 * without re-quantizing: every tensor is decoded and re-added byte for byte,
 * every metadata entry is copied verbatim and in order.
 */
#ifndef IDFX_REPACK_H
#define IDFX_REPACK_H

#include <stddef.h>

#include "idfx_writer.h"

/* Returns 0, or -1 with the reason in err. `out` must differ from `in`. */
int idfx_repack(const char *in, const char *out, const idfx_writer_opts *o, char *err, size_t errsz);

#endif /* IDFX_REPACK_H */
