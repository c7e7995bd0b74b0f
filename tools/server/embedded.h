/*
 * embedded.h - the web page's files, embedded at build time by the same
 * generator as the OpenCL kernels (tools/embed/embed.c, kernels/embedded.h).
 * The generated web_embedded.c includes "embedded.h"; here the table's names
 * are renamed so they cannot clash with the library's kernel table when both
 * are linked into one program.
 */
#ifndef IDEFICS_SERVER_EMBEDDED_H
#define IDEFICS_SERVER_EMBEDDED_H

#include <stddef.h>
#include <stdint.h>

#define idf_embedded_file srv_embedded_file
#define idf_embedded_files srv_web_files
#define idf_embedded_files_count srv_web_files_count

typedef struct srv_embedded_file {
    const char *name;           /* "index.html", "app.js", "app.css", "sample.png" */
    const unsigned char *bytes; /* NUL-terminated */
    size_t len;                 /* without the NUL */
    uint64_t hash;              /* FNV-1a 64 of the bytes */
    const char *path;           /* always NULL here: the page is always embedded */
} srv_embedded_file;

extern const srv_embedded_file srv_web_files[];
extern const unsigned srv_web_files_count;

#endif
