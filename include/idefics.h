/*
 * idefics.h - the public C API of idefics-edge, an on-device runtime for the
 * IDEFICS (v1, Flamingo-style) vision-language model.
 *
 * Objects
 *   idefics_model    an opened .idfx file: mapped weights, tokenizer, config.
 *                    Immutable after load.
 *   idefics_session  one conversation: KV cache, scratch, encoded images.
 *
 * Thread safety: a model may be shared by any number of threads and sessions
 * at once; a session must be used by one thread at a time, except
 * idefics_session_cancel(), which may be called from any thread.
 *
 * Errors: every fallible call returns an idefics_status (0 = OK, negative =
 * error) and writes results through out-parameters. The detail of the last
 * error is kept per handle (idefics_session_last_error, idefics_model_last_error);
 * constructors, which have no handle yet, write it into a caller buffer. The
 * library never exits, aborts or writes to stdout; it logs through the
 * callback given in the params.
 */
#ifndef IDEFICS_H
#define IDEFICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(IDEFICS_SHARED)
#define IDEFICS_API __declspec(dllexport)
#elif defined(__GNUC__)
#define IDEFICS_API __attribute__((visibility("default")))
#else
#define IDEFICS_API
#endif

#define IDEFICS_VERSION_MAJOR 0
#define IDEFICS_VERSION_MINOR 1
#define IDEFICS_VERSION_PATCH 0

/* ---------------------------------------------------------------- status */

/* Pinned values, grouped by range; new values are only appended. */
typedef enum idefics_status {
    IDEFICS_OK = 0,
    /* general: -1 .. -9 */
    IDEFICS_ERR_INVALID_ARG = -1,
    IDEFICS_ERR_OUT_OF_MEMORY = -2,
    IDEFICS_ERR_IO = -3,          /* cannot open, read, map or write a file */
    IDEFICS_ERR_UNSUPPORTED = -4, /* valid input this build cannot handle */
    IDEFICS_ERR_INTERNAL = -9,
    /* model file: -10 .. -29 */
    IDEFICS_ERR_BAD_MAGIC = -10,
    IDEFICS_ERR_BAD_VERSION = -11,
    IDEFICS_ERR_TRUNCATED = -12,      /* the file ends before a field or chunk it declares */
    IDEFICS_ERR_CORRUPT = -13,        /* inconsistent count, offset, size, type or name */
    IDEFICS_ERR_CHECKSUM = -14,       /* a header, index or chunk checksum mismatch */
    IDEFICS_ERR_DECOMPRESS = -15,     /* a zstd frame that fails or decodes to the wrong size */
    IDEFICS_ERR_MISSING_TENSOR = -16, /* a tensor the architecture needs is absent */
    IDEFICS_ERR_BAD_SHAPE = -17,      /* a tensor or config value has the wrong shape */
    IDEFICS_ERR_BAD_CONFIG = -18,     /* missing or out-of-range config / metadata */
    IDEFICS_ERR_BAD_CHECKPOINT = -19, /* converter input: safetensors, config.json, tokenizer */
    /* images: -30 .. -39 */
    IDEFICS_ERR_IMAGE_DECODE = -30,    /* unreadable or corrupt image */
    IDEFICS_ERR_IMAGE_TOO_LARGE = -31, /* over the pixel or byte limits */
    /* prompt and generation: -40 .. -49 */
    IDEFICS_ERR_CONTEXT_FULL = -40,  /* the prompt (or prompt + generation) exceeds n_ctx */
    IDEFICS_ERR_EMPTY_PROMPT = -41,
    IDEFICS_ERR_CANCELLED = -42,
    /* backends: -50 .. -59 */
    IDEFICS_ERR_BACKEND = -50,          /* a backend failed at run time */
    IDEFICS_ERR_NO_DEVICE = -51,        /* the requested backend/device is not available */
} idefics_status;

/* A short constant name for a status, e.g. "IDEFICS_ERR_TRUNCATED". Never NULL. */
IDEFICS_API const char *idefics_status_str(idefics_status status);

IDEFICS_API const char *idefics_version_string(void);

/* --------------------------------------------------- allocator and logging */

/* All heap memory the library uses goes through these. Any NULL member means
 * the C library's malloc/realloc/free. free() must accept NULL. */
typedef struct idefics_allocator {
    void *(*malloc_fn)(void *user_data, size_t size);
    void *(*realloc_fn)(void *user_data, void *ptr, size_t size);
    void (*free_fn)(void *user_data, void *ptr);
    void *user_data;
} idefics_allocator;

typedef enum idefics_log_level {
    IDEFICS_LOG_ERROR = 0,
    IDEFICS_LOG_WARN = 1,
    IDEFICS_LOG_INFO = 2,
    IDEFICS_LOG_DEBUG = 3,
} idefics_log_level;

/* msg is one line without a trailing newline. Called from the thread that made
 * the call (and, during load, possibly from worker threads: make it reentrant). */
typedef void (*idefics_log_fn)(void *user_data, idefics_log_level level, const char *msg);

/* Return false to cancel a long operation (model load). fraction in [0, 1]. */
typedef bool (*idefics_progress_fn)(void *user_data, float fraction);

typedef enum idefics_backend {
    IDEFICS_BACKEND_AUTO = 0,    /* OpenCL if a usable device passes the self-test, else CPU */
    IDEFICS_BACKEND_CPU = 1,     /* the fast CPU backend */
    IDEFICS_BACKEND_OPENCL = 2,
    IDEFICS_BACKEND_CPU_REF = 3, /* scalar fp32 reference backend (slow; for testing) */
} idefics_backend;

/* -------------------------------------------------------------------- model */

typedef struct idefics_model idefics_model;

typedef struct idefics_model_params {
    idefics_allocator allocator;
    idefics_log_fn log;              /* NULL = silent */
    void *log_user_data;
    idefics_log_level log_level;     /* messages above this level are dropped; default INFO */
    idefics_progress_fn progress;    /* NULL = none */
    void *progress_user_data;
    int n_threads;                   /* threads for chunk decompression and verification at load; 0 = all cores */
    idefics_backend backend;         /* default AUTO */
    const char *device;              /* OpenCL device: index or name substring; NULL = env IDEFICS_DEVICE or first */
    bool verify_checksums;           /* true: verify at this load whatever `verify` says (as IDEFICS_VERIFY_ALWAYS) */
    bool low_memory;                 /* let the OS page weights in and out of the mapping as needed */
    /* issue 15: load-time integrity (see "integrity and faults" below) */
    int verify;                      /* an idefics_verify_mode; default IDEFICS_VERIFY_AUTO */
    const char *verify_cache_dir;    /* where the verified-file stamps live; NULL = env IDEFICS_CACHE_DIR,
                                        else $XDG_CACHE_HOME/idefics, else ~/.cache/idefics (+ "/verified") */
} idefics_model_params;

IDEFICS_API idefics_model_params idefics_model_default_params(void);

/* Open and validate an .idfx file. On failure *out is NULL and, if errbuf is
 * not NULL, a one-line description (naming the field or tensor) is written to it. */
IDEFICS_API idefics_status idefics_model_load(const char *path, const idefics_model_params *params,
                                              idefics_model **out, char *errbuf, size_t errbuf_size);
IDEFICS_API void idefics_model_free(idefics_model *model); /* NULL is fine */

/* Text of the last error of a call on this model made by the calling thread
 * (e.g. idefics_tokenize; per thread like errno, so concurrent calls from
 * several threads do not race); "" if none. */
IDEFICS_API const char *idefics_model_last_error(const idefics_model *model);

typedef struct idefics_model_info {
    const char *name;           /* general.name, or "" */
    int64_t n_params;           /* parameters stored in the file */
    int64_t file_bytes;
    int n_vocab;                /* vocab_size + additional_vocab_size */
    int n_ctx_max;              /* max_position_embeddings */
    int image_size;             /* pixels per side, e.g. 224 */
    int n_latents;              /* perceiver latents per image, e.g. 64 */
    bool is_instruct;           /* has <end_of_utterance> */
    const char *backend;        /* "cpu", "cpu-ref", "opencl:<device>" */
} idefics_model_info;

IDEFICS_API void idefics_model_get_info(const idefics_model *model, idefics_model_info *info);

/* ---------------------------------------------------------------- tokenizer */

/* Tokenize text (special tokens such as <image> are recognised; no BOS is added
 * unless add_bos). Writes up to max_ids ids and sets *n_ids to the full count,
 * so a call with max_ids = 0 measures. */
IDEFICS_API idefics_status idefics_tokenize(const idefics_model *model, const char *text, bool add_bos,
                                            int32_t *ids, int max_ids, int *n_ids);

/* The text of one token as it appears when decoding a sequence after the
 * previous token prev (-1 at the start), written NUL-terminated into buf.
 * Returns the number of bytes (excluding NUL) or a negative status. */
IDEFICS_API int idefics_token_to_text(const idefics_model *model, int32_t prev, int32_t id, char *buf,
                                      size_t buf_size);

/* ------------------------------------------------------------------ session */

typedef struct idefics_session idefics_session;

typedef enum idefics_kv_type {
    IDEFICS_KV_F32 = 0,
    IDEFICS_KV_F16 = 1,
    IDEFICS_KV_Q8 = 2,
} idefics_kv_type;

typedef struct idefics_session_params {
    int n_ctx;                  /* context length in tokens; 0 = the model's maximum */
    int n_threads;              /* compute threads; 0 = all cores */
    idefics_kv_type kv_type;    /* default F16 */
    int64_t max_image_pixels;   /* decoded width*height limit; default 40 megapixels */
    int64_t max_image_bytes;    /* encoded file size limit; default 64 MiB */
} idefics_session_params;

IDEFICS_API idefics_session_params idefics_session_default_params(void);

IDEFICS_API idefics_status idefics_session_create(idefics_model *model, const idefics_session_params *params,
                                                  idefics_session **out, char *errbuf, size_t errbuf_size);
IDEFICS_API void idefics_session_free(idefics_session *session); /* NULL is fine */

/* Forget the conversation (tokens, KV cache, images); keep the buffers. */
IDEFICS_API void idefics_session_reset(idefics_session *session);

IDEFICS_API const char *idefics_session_last_error(const idefics_session *session);

/* Building the prompt. Items are appended in order, with the IDEFICS processor's
 * semantics: images become <fake_token_around_image><image><fake_token_around_image>
 * (adjacent images share a fake token), text is stripped of leading and trailing
 * spaces (no <end_of_utterance> is inserted between texts), and the whole
 * conversation is tokenized as one text. Each add checks that the conversation
 * still fits n_ctx (else IDEFICS_ERR_CONTEXT_FULL). Images are decoded and
 * resized here, encoded by the next idefics_generate(); nothing is evaluated
 * before that. On error the session is left exactly as it was. */

/* An image from a file (JPEG, PNG, BMP, GIF first frame, PNM). */
IDEFICS_API idefics_status idefics_add_image_file(idefics_session *session, const char *path);
/* An encoded image held in memory. */
IDEFICS_API idefics_status idefics_add_image_memory(idefics_session *session, const void *data, size_t size);
/* Already-decoded 8-bit RGB (channels = 3) or RGBA (channels = 4, composited over
 * white) pixels, rows stride_bytes apart (0 = width * channels). */
IDEFICS_API idefics_status idefics_add_image_pixels(idefics_session *session, const uint8_t *pixels, int width,
                                                    int height, int channels, size_t stride_bytes);
/* Raw text, special tokens included. */
IDEFICS_API idefics_status idefics_add_text(idefics_session *session, const char *text);

/* One user turn in the model's chat format. The images added since the last
 * text (a trailing run of images) are moved into the turn:
 *   instruct: "User: " question <images> "<end_of_utterance>\nAssistant:"
 *             (the instruct model card's order: question, then images)
 *   base:     "User:" <images> question "\nAssistant:"
 *             (the docs' few-shot order; "User: " question when there is no image)
 * Turns after the first begin with "\n". The question is stripped of
 * surrounding whitespace; an empty one gives IDEFICS_ERR_EMPTY_PROMPT. */
IDEFICS_API idefics_status idefics_add_user_turn(idefics_session *session, const char *question);

/* -------------------------------------------------------------- generation */

typedef struct idefics_generate_params {
    int max_new_tokens;         /* default 64 */
    float temperature;          /* 0 = greedy (default) */
    int top_k;                  /* 0 = off */
    float top_p;                /* 1 = off */
    float repetition_penalty;   /* 1 = off */
    uint64_t seed;              /* sampling seed */
    bool stop_at_eos;           /* stop at </s> (default true); instruct models also stop at <end_of_utterance> */
} idefics_generate_params;

IDEFICS_API idefics_generate_params idefics_generate_default_params(void);

/* Called for every generated token (the stop token included) with its decoded
 * text piece: "" for special tokens, and bytes of a UTF-8 sequence split across
 * tokens are held back until it completes. The pieces concatenate to
 * tokenizer.decode(generated, skip_special_tokens=True). Return false to stop. */
typedef bool (*idefics_token_fn)(void *user_data, int32_t token, const char *piece);

typedef struct idefics_timings {
    double image_encode_ms;     /* vision tower + perceiver, all new images */
    double prefill_ms;
    double decode_ms;
    int n_prompt_tokens;        /* tokens evaluated in the prefill */
    int n_generated;
} idefics_timings;

/* Evaluate everything added since the last call and generate. The answer is
 * appended to the conversation, so a later turn continues it. Stops at a stop
 * token, after max_new_tokens, or when the context is full (all IDEFICS_OK).
 * IDEFICS_ERR_CONTEXT_FULL when the conversation itself no longer fits, and
 * IDEFICS_ERR_CANCELLED after idefics_session_cancel(); the tokens generated
 * until then stay in the conversation, and the session remains usable. */
IDEFICS_API idefics_status idefics_generate(idefics_session *session, const idefics_generate_params *params,
                                            idefics_token_fn on_token, void *user_data);

/* Ask a running idefics_generate() to stop (returns IDEFICS_ERR_CANCELLED). Any thread. */
IDEFICS_API void idefics_session_cancel(idefics_session *session);

IDEFICS_API void idefics_session_get_timings(const idefics_session *session, idefics_timings *timings);

/* All token ids of the conversation so far (prompt and generated), for --json. */
IDEFICS_API int idefics_session_get_tokens(const idefics_session *session, const int32_t **ids);

/* Logits of the last evaluated position (n_vocab floats), valid until the next call. */
IDEFICS_API const float *idefics_session_get_logits(const idefics_session *session);

/* ---------------------------------------- integrity and faults (issue 15) */

/* Load-time verification (idefics_model_params.verify). Verifying reads the
 * whole file once, on all load threads: every chunk's XXH3 checksum, and every
 * fp16 scale of every Q4/Q8 chunk must be finite. A file that fails is refused
 * (IDEFICS_ERR_CHECKSUM or IDEFICS_ERR_CORRUPT) with the tensor and chunk named.
 * AUTO verifies the first time a file is loaded, then writes a stamp to the
 * cache folder keyed by the file's device, inode, size, mtime and header
 * checksum; a later load with a matching stamp skips the read, and any change
 * to one of these verifies again. A stamp that cannot be written (read-only
 * cache) only costs the next load another check. */
typedef enum idefics_verify_mode {
    IDEFICS_VERIFY_AUTO = 0,   /* first load of a file (no matching stamp): verify, then stamp */
    IDEFICS_VERIFY_ALWAYS = 1, /* verify on every load (and refresh the stamp) */
    IDEFICS_VERIFY_NEVER = 2,  /* never read the whole file; header and index are still checked */
} idefics_verify_mode;

/* The model's weights are mapped from its file (MAP_SHARED, read-only). If the
 * file is truncated or overwritten in place while a model is loaded, touching
 * the lost pages raises SIGBUS in whichever thread reads them. The library
 * installs no signal handler; a host that wants to survive or report this
 * installs its own (sigaction with SA_SIGINFO) and asks this function whether
 * info->si_addr lies in a model's mapping. It only compares two pointers, so it
 * is async-signal-safe. Replacing a file by rename (what idefics-convert does)
 * is safe: the old inode stays mapped until the model is freed. */
IDEFICS_API bool idefics_model_contains_address(const idefics_model *model, const void *addr);

/* ----------------------------------------------------------- board profiles */

/* Defaults for a device from the board data (boards/README.md): name is a board
 * (boards_dir/NAME/board.ini, whose [defaults] names a profile) or a memory
 * profile itself ("4g", "8g", ...: a section of boards_dir/memory-profiles.ini).
 * Sets n_ctx, kv_type, low_memory, n_threads and backend where the files say
 * so and leaves every other field as it was; either params pointer may be NULL.
 * Nothing is changed on error (IDEFICS_ERR_IO, _BAD_CONFIG naming file:line,
 * _INVALID_ARG for an unknown name). */
IDEFICS_API idefics_status idefics_board_apply(const char *boards_dir, const char *name,
                                               idefics_model_params *model_params,
                                               idefics_session_params *session_params, char *errbuf,
                                               size_t errbuf_size);

#ifdef __cplusplus
}
#endif

#endif /* IDEFICS_H */
