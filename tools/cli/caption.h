/*
 * caption.h - the parts of `idefics caption` (cmd_caption.c): finding the
 * inputs (caption_find.c), the output file and resume (caption_out.c), XMP
 * sidecars (caption_xmp.c) and the review page (caption_html.c). Like every
 * CLI file, these use only the public idefics.h.
 */
#ifndef IDEFICS_CAPTION_H
#define IDEFICS_CAPTION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- a growable byte buffer */
typedef struct cap_buf {
    char *s;
    size_t len, cap;
    bool oom;
} cap_buf;
void cb_add(cap_buf *b, const void *p, size_t n);
void cb_str(cap_buf *b, const char *s);
void cb_printf(cap_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cb_free(cap_buf *b);

bool utf8_valid(const char *s, size_t n);
/* Base64 (RFC 4648, padded) of n bytes. */
void cb_base64(cap_buf *b, const uint8_t *p, size_t n);
/* Decodes base64 into *out (malloc'd); false when malformed. */
bool base64_decode(const char *s, size_t n, char **out, size_t *out_len);
/* A path for a terminal or message: control bytes, backslash and bytes that
 * are not UTF-8 as \xNN escapes. */
void cb_path_escaped(cap_buf *b, const char *p, size_t n, bool escape_colon);

/* ---- inputs (caption_find.c) */
typedef struct cap_input {
    char *path;      /* NUL-terminated; names never hold NUL */
    size_t len;
} cap_input;

typedef struct cap_inputs {
    cap_input *v;
    size_t n, cap;
    size_t n_non_images;   /* files in folders skipped as not images (by extension) */
    size_t n_hidden;       /* hidden entries skipped (no --hidden) */
    size_t n_loops;        /* folders skipped as already visited (symlink loops) */
    size_t n_unreadable;   /* folders that could not be listed */
} cap_inputs;

typedef struct cap_find_opts {
    bool recursive, hidden, null_sep, verbose;
    const char *files_from; /* LIST, "-" = stdin, NULL = none */
} cap_find_opts;

/* Collects the inputs in a deterministic order: arguments in the order given,
 * a folder's entries sorted bytewise (subfolders entered in place with -r).
 * Returns false on out of memory or an unreadable --files-from (message printed). */
bool cap_find(char **args, int n_args, const cap_find_opts *o, cap_inputs *out);
void cap_inputs_free(cap_inputs *in);
bool cap_is_image_name(const char *name);

/* ---- records and the output file (caption_out.c) */
typedef enum cap_format { CAP_JSONL, CAP_CSV, CAP_TSV, CAP_TXT } cap_format;

typedef struct cap_record {
    const char *path;
    size_t path_len;
    const char *status;  /* "ok" or a status name such as "IDEFICS_ERR_IMAGE_DECODE" */
    const char *error;   /* the message when not ok */
    const char *caption; /* when ok */
    int width, height;   /* 0 when unknown */
    const char *hash;    /* "xxh128:..." or "" */
    const char *model, *model_id, *prompt;
    double ms;
    const char *time;    /* ISO 8601 UTC */
    const char *finish;  /* "stop", "length", ... (jsonl only); NULL when nothing was generated */
} cap_record;

/* One record as read back from an output file, for resume. */
typedef struct cap_prev {
    char *path;
    size_t path_len;
    char *hash, *model_id, *prompt, *caption;
    bool ok;
    off_t off, end;      /* byte range of the record in the file */
    size_t seq;          /* order in the file */
} cap_prev;

typedef struct cap_out {
    int fd;              /* -1 when closed */
    const char *path;    /* NULL = stdout */
    cap_format fmt;
    off_t size;          /* bytes of complete records */
    off_t header_end;    /* end of the CSV/TSV header line */
    size_t n_records;    /* complete records in the file (previous ones included) */
    size_t n_new;        /* written by this run */
    size_t n_synced;     /* records known to be on stable storage */
    double last_sync_ms;
    cap_prev *prev;      /* previous records, sorted by path then seq */
    size_t n_prev;
    bool superseded;     /* some path has more than one record: compact at close */
    size_t repaired_bytes; /* a cut last record removed at open */
} cap_out;

bool cap_format_parse(const char *s, cap_format *f);
cap_format cap_format_for_path(const char *path);

/* Opens (creates) OUT for appending: reads the previous records, cuts a
 * partial last record, writes the header of a new CSV/TSV file. fresh = true
 * (--force) starts from an empty file. Returns 0, or -1 with a message in msg. */
int cap_out_open(cap_out *o, const char *path, cap_format fmt, bool fresh, char *msg, size_t msg_size);
/* The latest previous record of a path, or NULL. */
const cap_prev *cap_out_find(const cap_out *o, const char *path, size_t len);
/* Appends one record with a single write, then syncs when due. On failure
 * the file is cut back to its last complete record; returns -1 with errno. */
int cap_out_write(cap_out *o, const cap_record *r);
int cap_out_sync(cap_out *o);
/* Syncs, compacts superseded records (rewrite to a temp file + rename) and
 * closes. Returns -1 with a message on any failure. */
int cap_out_close(cap_out *o, char *msg, size_t msg_size);
/* Formats one record (also used for stdout). */
void cap_format_record(cap_buf *b, cap_format fmt, const cap_record *r);
/* The CSV/TSV header line ("" for the others). */
const char *cap_format_header(cap_format fmt);

/* Parses the records of a whole output file. Returns the count parsed and
 * sets *complete_end to the end of the last complete record. Exposed for the
 * fuzz target. Each record is handed to fn (may be NULL). */
typedef void (*cap_prev_fn)(void *ud, cap_prev *rec);
size_t cap_parse_records(const char *data, size_t n, cap_format fmt, size_t *complete_end, cap_prev_fn fn,
                         void *ud);
void cap_prev_free(cap_prev *p);

/* ---- XMP sidecars (caption_xmp.c) */
typedef enum cap_sidecar_name { CAP_SIDECAR_FULL, CAP_SIDECAR_STEM } cap_sidecar_name;
/* Writes or merges PATH.xmp (or STEM.xmp) with the caption. Returns 0, or -1
 * with the reason in msg (the existing sidecar is then left untouched). */
int cap_xmp_write(const char *image_path, cap_sidecar_name naming, const char *caption, const char *model,
                  char *msg, size_t msg_size);
/* Merges into an XMP packet in memory (for the fuzz target): returns a
 * malloc'd document or NULL with msg set. */
char *cap_xmp_merge(const char *existing, size_t n, const char *caption, const char *creator_tool, size_t *out_len,
                    char *msg, size_t msg_size);
bool cap_xmp_available(void);

/* ---- the review page (caption_html.c) */
typedef struct cap_html_item {
    const char *path;
    const char *caption;
    const char *status;
    const uint8_t *thumb_jpeg_or_png; /* the original file when small enough; else NULL */
    size_t thumb_len;
    const char *mime;
} cap_html_item;
/* Writes the self-contained review page for the records of OUT (read from
 * the file) to html_path. Returns 0 or -1 with msg. */
int cap_html_write(const char *html_path, const char *out_path, cap_format fmt, int64_t max_thumb_bytes, char *msg,
                   size_t msg_size);

#endif /* IDEFICS_CAPTION_H */
