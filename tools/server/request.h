/*
 * request.h - the request layer of `idefics serve`: an OpenAI Chat Completions
 * body (JSON, untrusted) becomes a list of messages made of text and image
 * parts, with every count and size checked against the server's caps. No
 * model is needed here, so this layer is fuzzed on its own
 * (tests/fuzz/fuzz_server_request.c) and unit-tested (tests/test_server_request.c).
 *
 * Image parts carry the encoded bytes (PNG, JPEG, ...) from a data: URI
 * (base64) or, only when allow_dir is set, a file:// path inside that folder
 * (checked after realpath(), so symlinks cannot leave it). Decoding the image
 * itself is the library's job (idefics_add_image_memory).
 */
#ifndef IDEFICS_SERVER_REQUEST_H
#define IDEFICS_SERVER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { SRV_ROLE_SYSTEM = 0, SRV_ROLE_USER = 1, SRV_ROLE_ASSISTANT = 2 };
enum { SRV_PART_TEXT = 0, SRV_PART_IMAGE = 1 };
#define SRV_MAX_STOP 4 /* OpenAI's limit on "stop" strings */

typedef struct srv_part {
    int kind;             /* SRV_PART_TEXT or SRV_PART_IMAGE */
    char *text;           /* TEXT: NUL-terminated (no NUL inside: refused) */
    size_t len;           /* TEXT: bytes */
    unsigned char *data;  /* IMAGE: encoded file bytes */
    size_t size;          /* IMAGE: bytes */
} srv_part;

typedef struct srv_message {
    int role;
    srv_part *parts;
    int n_parts;
    uint64_t hash; /* keyed hash of role and parts (srv_request_hash_messages) */
} srv_message;

typedef struct srv_limits {
    int max_images;         /* images in one request */
    int max_messages;       /* messages in one request */
    int max_json_depth;     /* nesting of the JSON body */
    size_t max_image_bytes; /* one decoded image file */
    size_t max_text_bytes;  /* all text of a request together */
    const char *allow_dir;  /* realpath of --allow-local-files, or NULL: file:// refused */
} srv_limits;

typedef struct srv_request {
    srv_message *msgs;
    int n_msgs;
    int n_images;
    /* generation fields; has_* say whether the client sent them */
    bool has_max_tokens, has_temperature, has_top_p, has_seed;
    long max_tokens;
    double temperature, top_p;
    uint64_t seed;
    char *stop[SRV_MAX_STOP];
    int n_stop;
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    char *model;        /* as sent (informational), or NULL */
} srv_request;

/* Parse body[0..len). On success 0 and *out filled (free with srv_request_free).
 * On failure the HTTP status to answer (400 or 413), out left empty, and a
 * one-line message in err; *param (may be NULL) names the offending field. */
int srv_request_parse(const char *body, size_t len, const srv_limits *lim, srv_request *out, char *err,
                      size_t err_size, const char **param);
void srv_request_free(srv_request *r);

/* Keyed hashes (SipHash-2-4) of each message, so prefix matching and the
 * snapshot cache cannot be steered by crafted collisions: key is 16 secret bytes. */
void srv_request_hash_messages(srv_request *r, const uint8_t key[16]);
uint64_t srv_siphash(const uint8_t key[16], const void *data, size_t len, uint64_t seed);

/* RFC 4648 base64 (standard alphabet, '=' padding required when the length is
 * not a multiple of 4; no whitespace). Returns true and the decoded bytes in
 * out[0..*n) when in is valid; out needs (len / 4) * 3 bytes. */
bool srv_base64_decode(const char *in, size_t len, unsigned char *out, size_t *n);

/* A data: URI "data:image/<type>[;param=value...];base64,<payload>" decoded
 * into a new buffer (free()). Returns 0, or 400/413 with a message. */
int srv_data_uri_decode(const char *uri, size_t len, size_t max_bytes, unsigned char **data, size_t *size, char *err,
                        size_t err_size);

#endif
