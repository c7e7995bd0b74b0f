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
 * Lifetimes: a model must outlive its sessions; how long returned pointers
 * stay valid is listed under "integrators' API" below.
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
    /* Default true: the weights are the file's pages, mapped read-only (shared
     * with other processes and the page cache; loads in a fraction of a second).
     * false (llama.cpp's --no-mmap): copy the file into this process's own memory
     * at load. Costs the copy (seconds for 5 GB) and RSS equal to the file, and
     * on hosts whose page cache holds 4 KB pages streams the weights faster
     * (docs/CPU.md "Where the weights live"). Not with low_memory
     * (IDEFICS_ERR_INVALID_ARG). */
    bool use_mmap;
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
    const char *backend;        /* "cpu", "cpu-ref" or "opencl" */
    const char *device;         /* the OpenCL device's name with "opencl", else "" */
    bool mmap;                  /* the weights are the mapped file (use_mmap), not a copy */
} idefics_model_info;

IDEFICS_API void idefics_model_get_info(const idefics_model *model, idefics_model_info *info);

/* ---------------------------------------------------------------- tokenizer */

/* Tokenize text (special tokens such as <image> are recognised, HF semantics:
 * idefics_tokenize_n with flags 0 tokenizes user text as idefics_add_text
 * does; no BOS is added unless add_bos). Writes up to max_ids ids and sets *n_ids to the full count,
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
    bool exif_orientation;      /* turn file and memory images upright by their EXIF Orientation tag
                                   (default true; HF's processor does not, see docs/IMAGES.md) */
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
/* Plain text (special-token strings in it are ordinary text; see
 * idefics_add_text_n for raw prompt text with IDEFICS_TEXT_SPECIAL). */
IDEFICS_API idefics_status idefics_add_text(idefics_session *session, const char *text);

/* One user turn in the model's chat format. The images added since the last
 * text (a trailing run of images) are moved into the turn:
 *   instruct: "User: " question <images> "<end_of_utterance>\nAssistant:"
 *             (the instruct model card's order: question, then images)
 *   base:     "User:" <images> question "\nAssistant:"
 *             (the docs' few-shot order; "User: " question when there is no image)
 * Turns after the first begin with "\n". The question is stripped of
 * surrounding whitespace; an empty one gives IDEFICS_ERR_EMPTY_PROMPT. The
 * question is plain text. For images elsewhere in a turn see
 * idefics_begin_user_turn. */
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
 * until then stay in the conversation, and the session remains usable.
 * idefics_session_finish_reason() tells which of these ended it. */
IDEFICS_API idefics_status idefics_generate(idefics_session *session, const idefics_generate_params *params,
                                            idefics_token_fn on_token, void *user_data);

/* Ask a running idefics_generate() to stop (returns IDEFICS_ERR_CANCELLED). Any thread. */
IDEFICS_API void idefics_session_cancel(idefics_session *session);

IDEFICS_API void idefics_session_get_timings(const idefics_session *session, idefics_timings *timings);

/* All token ids of the conversation so far (prompt and generated), for --json. */
IDEFICS_API int idefics_session_get_tokens(const idefics_session *session, const int32_t **ids);

/* Logits of the last evaluated position (n_vocab floats), valid until the next call. */
IDEFICS_API const float *idefics_session_get_logits(const idefics_session *session);

/* ------------------------------------------- integrators' API (issue 14) */

/* Lifetimes
 *   - A model must outlive every session created from it: free the sessions
 *     first, then the model. A session keeps a pointer to its model.
 *   - Strings the library returns (idefics_status_str, idefics_version_string,
 *     idefics_finish_reason_str) are static and never freed.
 *   - Strings and pointers owned by the model (idefics_model_info's name and
 *     backend, idefics_model_meta_key, idefics_model_last_error) stay valid until
 *     idefics_model_free(); the last-error text changes with the next failing
 *     call on the model.
 *   - Pointers owned by a session (idefics_session_get_tokens' ids,
 *     idefics_session_get_logits, idefics_session_last_error) stay valid until
 *     the next call that changes the session (add_*, begin/end_user_turn,
 *     generate, eval, reset, restore) or idefics_session_free().
 *   - A snapshot is independent of its session: it may outlive it and be
 *     restored into any session of the same model (until idefics_model_free).
 *   - The token callback's piece is valid only during the callback.
 * Threads: the calls in this block follow the rules at the top of this file:
 * model getters may be called from any thread at once (idefics_model_meta and
 * idefics_tokenize_n keep their error text as idefics_tokenize does); session
 * calls from one thread at a time.
 * A snapshot is immutable once made: several threads may restore it at once. */

/* The version as one number, so an application can check the library it loaded:
 * idefics_version() >= IDEFICS_VERSION_NUMBER of the header it was built with. */
#define IDEFICS_VERSION_NUMBER (IDEFICS_VERSION_MAJOR * 10000 + IDEFICS_VERSION_MINOR * 100 + IDEFICS_VERSION_PATCH)
IDEFICS_API uint32_t idefics_version(void); /* the loaded library's IDEFICS_VERSION_NUMBER */

/* Why the last idefics_generate() stopped. Pinned values, append only. */
typedef enum idefics_finish_reason {
    IDEFICS_FINISH_NONE = 0,         /* nothing generated yet, or an error before or during generation */
    IDEFICS_FINISH_STOP = 1,         /* a stop token (</s>, <end_of_utterance>, chat.stop_tokens) */
    IDEFICS_FINISH_LENGTH = 2,       /* max_new_tokens reached (also max_new_tokens = 0) */
    IDEFICS_FINISH_CONTEXT_FULL = 3, /* the context filled up */
    IDEFICS_FINISH_CANCELLED = 4,    /* idefics_session_cancel() */
    IDEFICS_FINISH_CALLBACK = 5,     /* the token callback returned false (e.g. a stop string) */
} idefics_finish_reason;
/* Of the last idefics_generate() on this session (NONE after reset/restore/eval). */
IDEFICS_API idefics_finish_reason idefics_session_finish_reason(const idefics_session *session);
/* "none", "stop", "length", "context_full", "cancelled", "callback"; "unknown" otherwise. Never NULL. */
IDEFICS_API const char *idefics_finish_reason_str(idefics_finish_reason reason);

/* User text is plain text: idefics_add_text and idefics_add_user_turn never turn
 * "<image>", "<fake_token_around_image>", "<end_of_utterance>", "<s>", "</s>",
 * "<unk>" typed by a user into special tokens; such strings are tokenized as the
 * ordinary pieces they spell (HF's split_special_tokens for that text). The
 * structure the library writes itself (image tokens, the chat template) stays
 * special. The conversation is still tokenized as one text, so plain text next
 * to structure segments exactly as HF tokenizes the same text.
 * The length-taking variants refuse a NUL byte inside [text, text + len) with
 * IDEFICS_ERR_INVALID_ARG (text is never silently cut). */
#define IDEFICS_TEXT_SPECIAL 1u /* raw prompt: special-token strings in this text are recognised (HF semantics) */
/* Append text (len bytes) as a prompt item: flags 0 = plain user text,
 * IDEFICS_TEXT_SPECIAL = raw prompt text (base models, few-shot prompts). */
IDEFICS_API idefics_status idefics_add_text_n(idefics_session *session, const char *text, size_t len,
                                              unsigned flags);
/* idefics_add_user_turn with a length. */
IDEFICS_API idefics_status idefics_add_user_turn_n(idefics_session *session, const char *question, size_t len);

/* An interleaved user turn: images and text in any order between begin and end,
 * in the chat format of idefics_add_user_turn:
 *   instruct: "User:" items "<end_of_utterance>\nAssistant:"
 *   base:     "User:" items "\nAssistant:"
 * begin writes "User:" (after "\n" when the conversation has content that does
 * not end with a newline). Items follow with the processor's rules: text is
 * stripped of spaces and joined to its neighbours without a separator, images
 * become their image tokens. A text right after begin is written "User: text",
 * as add_user_turn writes its question. So begin, text q, images, end gives
 * add_user_turn's instruct turn, and begin, images, text q, end its base turn.
 * Inside a turn idefics_add_text / _n add plain text (unless
 * IDEFICS_TEXT_SPECIAL) and the idefics_add_image_* calls add an image where
 * they are called. Images added before begin stay before "User:".
 * The first text added after a turn (end, or idefics_add_user_turn) before
 * anything else is the assistant's answer of a few-shot prompt, written
 * "Assistant: text"; close it with "<end_of_utterance>" (IDEFICS_TEXT_SPECIAL)
 * on an instruct model. Generating instead writes the model's answer.
 * IDEFICS_ERR_INVALID_ARG for begin inside a turn, end outside one, and
 * add_user_turn, generate or eval inside one; IDEFICS_ERR_EMPTY_PROMPT for an
 * end with no image and no non-empty text since begin (the turn stays open).
 * reset closes an open turn; restore brings back the snapshot's. */
IDEFICS_API idefics_status idefics_begin_user_turn(idefics_session *session);
IDEFICS_API idefics_status idefics_end_user_turn(idefics_session *session);

/* idefics_tokenize with a length and flags: IDEFICS_TEXT_SPECIAL recognises
 * special-token strings (what idefics_tokenize does); 0 tokenizes the text as
 * plain text, as idefics_add_text does. NUL inside: IDEFICS_ERR_INVALID_ARG. */
IDEFICS_API idefics_status idefics_tokenize_n(const idefics_model *model, const char *text, size_t len,
                                              unsigned flags, bool add_bos, int32_t *ids, int max_ids, int *n_ids);

/* Evaluate what was added (images encoded, prompt prefilled) without generating:
 * a later idefics_generate() starts at once, and a snapshot taken now holds it.
 * idefics_session_get_logits() then returns the last position's logits. */
IDEFICS_API idefics_status idefics_session_eval(idefics_session *session);

/* The conversation as the tokenizer sees it: "<s>User: ...". Written
 * NUL-terminated and truncated to size; *len (may be NULL) gets the full length
 * without the NUL, so a call with size 0 (buf may be NULL) measures. Generated
 * answers are included. Special-token strings the user typed appear as typed:
 * the text alone does not say which strings are special (the ids do). */
IDEFICS_API idefics_status idefics_session_render_prompt(const idefics_session *session, char *buf, size_t size,
                                                         size_t *len);

/* Model metadata (the .idfx key/value pairs: "general.name",
 * "chat.caption_prompt", "tokenizer.*", ...), values rendered as text:
 * integers in decimal, floats with %.9g, booleans "true"/"false", strings
 * verbatim, arrays as "[1, 2, 3]" or ["a", "b"] (JSON string escapes). */
IDEFICS_API int idefics_model_meta_count(const idefics_model *model);
/* The i-th key (0 <= i < count), valid until idefics_model_free(); NULL when out of range. */
IDEFICS_API const char *idefics_model_meta_key(const idefics_model *model, int i);
/* The value of key, written NUL-terminated and truncated to size; *len (may be
 * NULL) gets the full length, so size 0 measures. IDEFICS_ERR_INVALID_ARG when
 * the key is absent (see idefics_model_last_error). */
IDEFICS_API idefics_status idefics_model_meta(const idefics_model *model, const char *key, char *buf, size_t size,
                                              size_t *len);

/* Snapshot / restore: the conversation (text, tokens, turn state), the KV cache
 * up to the evaluated position, the encoded images with their cross-attention
 * K/V, and the logits. Restoring then asking another question reuses the image
 * encoding: several questions about one photo encode it once. Images added but
 * not yet encoded are kept as pixels. A snapshot belongs to the model of the
 * session it was taken from; restore needs a session of that model whose n_ctx
 * is at least the snapshot's token count and whose kv_type is the same, else
 * IDEFICS_ERR_INVALID_ARG naming the mismatch (the session is unchanged; also
 * on IDEFICS_ERR_OUT_OF_MEMORY). A backend failure while restoring resets the
 * session. The session's timings are zeroed; the finish reason becomes NONE.
 * The snapshot holds the KV cache in the session's kv_type: its size is about
 * 2 * n_layers * hidden * (bytes per element) per evaluated token, plus per
 * encoded image its latents and 2 * n_cross * n_latents * hidden elements. */
typedef struct idefics_snapshot idefics_snapshot;
IDEFICS_API idefics_status idefics_session_snapshot(const idefics_session *session, idefics_snapshot **out);
IDEFICS_API idefics_status idefics_session_restore(idefics_session *session, const idefics_snapshot *snapshot);
IDEFICS_API size_t idefics_snapshot_bytes(const idefics_snapshot *snapshot); /* memory it holds */
IDEFICS_API void idefics_snapshot_free(idefics_snapshot *snapshot);          /* NULL is fine */
/* ---------------------------------------- batched generation (issue 11) */

/* An idefics_batch generates for several sessions at once. Each step
 * evaluates one new token of every member in ONE pass over the weights (the
 * weight matmuls run once for all members; attention stays per session, over
 * its own KV cache and images). Decode is memory-bound, so a step of B
 * members costs little more than one until the arithmetic catches up (on a
 * CPU, at a few members: idefics-bench --parallel measures it). Sessions
 * join and leave between steps (continuous batching):
 *
 *     idefics_batch *b = NULL;
 *     idefics_batch_create(model, NULL, &b, err, sizeof err);
 *     // per request: build the prompt with the usual calls, then join
 *     idefics_add_user_turn(s1, "Describe the image.");
 *     idefics_batch_add(b, s1, &gen_params, on_token, on_done, user_data1);
 *     while (idefics_batch_n_sessions(b) > 0)
 *         idefics_batch_step(b);   // add more sessions between steps at will
 *
 * Per session everything is as with idefics_generate(s, params, on_token,
 * user_data): the same tokens for greedy decoding (the same logits up to
 * float rounding of the batched matmuls), the prompt reuse of earlier turns,
 * the answer appended to the conversation, timings, the stop rules, and
 * idefics_session_cancel(). A session leaves the batch at once when it
 * finishes (stop token, max_new_tokens, full context, on_token returned
 * false, cancel, or an error of its own); on_done then reports the status
 * idefics_generate would have returned, and idefics_session_finish_reason()
 * the reason (IDEFICS_FINISH_CANCELLED after idefics_batch_remove too).
 * Cancelling one session, or one filling its context, leaves the others
 * untouched. A joining session's
 * images and prompt are evaluated at the start of the next step (see
 * prefill_chunk); its first token comes in that step.
 *
 * Thread rules: a batch is used by one thread at a time; all callbacks
 * (on_token, on_done) run on that thread inside idefics_batch_step() or
 * idefics_batch_run() and must not call idefics_batch_* on the same batch.
 * While a session is a member, only idefics_session_cancel() (any thread) and,
 * inside its own callbacks, the read-only session getters may be called on
 * it; after on_done (or idefics_batch_remove) it is the caller's again. A
 * session belongs to at most one batch; all members use the batch's model.
 * Free the batch before the model; freeing the batch removes its members
 * (without on_done) and leaves the sessions usable. To feed a batch from
 * other threads (a server's connections), either hand new sessions to the
 * stepping thread, or hold one mutex around every idefics_batch_* call
 * (callbacks then run under it); idefics_session_cancel needs no lock. */
typedef struct idefics_batch idefics_batch;

typedef struct idefics_batch_params {
    int max_sessions;  /* members at once (rows of a decode step), 1..64; default 8 */
    int n_threads;     /* compute threads of the batched decode pass; 0 = all cores (a member's
                          images and own prefill use its session's n_threads) */
    /* 0 (default): a joining session's prompt is evaluated in a prefill of its
     * own at the start of the step, then it decodes with the others.
     * > 0: prompts ride along the decode steps, at most this many prompt
     * tokens per step in all (chunked prefill: steady decode for the others,
     * later first token for the joiner). */
    int prefill_chunk;
} idefics_batch_params;

IDEFICS_API idefics_batch_params idefics_batch_default_params(void);

IDEFICS_API idefics_status idefics_batch_create(idefics_model *model, const idefics_batch_params *params,
                                                idefics_batch **out, char *errbuf, size_t errbuf_size);
IDEFICS_API void idefics_batch_free(idefics_batch *batch); /* NULL is fine */

/* Called once when a member leaves by itself, with the status
 * idefics_generate would have returned (IDEFICS_OK, _CANCELLED, _CONTEXT_FULL,
 * a backend error, ...); the session is no longer a member and may be read,
 * reset or freed from here (add it again after the step returns). */
typedef void (*idefics_batch_done_fn)(void *user_data, idefics_session *session, idefics_status status);

/* Join: generate for the session, as idefics_generate(session, params,
 * on_token, user_data) would, from the next step on. params NULL = defaults;
 * on_token and on_done may be NULL. The checks idefics_generate makes before
 * evaluating (params, empty or too long conversation) fail here, and the
 * session does not join; likewise IDEFICS_ERR_INVALID_ARG when the batch is
 * full (idefics_batch_n_sessions == max_sessions), the session is a member
 * already, or belongs to another model. */
IDEFICS_API idefics_status idefics_batch_add(idefics_batch *batch, idefics_session *session,
                                             const idefics_generate_params *params, idefics_token_fn on_token,
                                             idefics_batch_done_fn on_done, void *user_data);

/* Leave before finishing, without on_done: the tokens generated so far stay in
 * the conversation (as after a cancel). IDEFICS_ERR_INVALID_ARG if not a member. */
IDEFICS_API idefics_status idefics_batch_remove(idefics_batch *batch, idefics_session *session);

/* One step: prefill the joining sessions, sample one token for every member
 * (callbacks), then evaluate all the new tokens in one batched pass.
 * Per-session failures go to that session's on_done only; a step returns an
 * error only for misuse (NULL batch). With no members it returns at once. */
IDEFICS_API idefics_status idefics_batch_step(idefics_batch *batch);
/* Step until no member is left. */
IDEFICS_API idefics_status idefics_batch_run(idefics_batch *batch);

IDEFICS_API int idefics_batch_n_sessions(const idefics_batch *batch);
IDEFICS_API bool idefics_batch_contains(const idefics_batch *batch, const idefics_session *session);
IDEFICS_API const char *idefics_batch_last_error(const idefics_batch *batch);

/* The board data's `parallel` (sessions a batch may hold in that memory: each
 * member has its own KV cache) into params->max_sessions, where the board's
 * profile or [defaults] say so; every other field is left alone. Errors and
 * names as idefics_board_apply (declared below); nothing changes on error. */
IDEFICS_API idefics_status idefics_board_apply_batch(const char *boards_dir, const char *name,
                                                     idefics_batch_params *params, char *errbuf, size_t errbuf_size);

/* ---------------------------------------- captioning: images and model identity (issue 12) */

/* Width and height of the last image added to the session (file, memory or
 * pixels) as the file declares it, after EXIF orientation and before any
 * reduced-scale decode or resize. IDEFICS_ERR_INVALID_ARG when no image has
 * been added since the session was created or reset. */
IDEFICS_API idefics_status idefics_session_last_image_size(const idefics_session *session, int *width,
                                                           int *height);

/* A stable identity of the model file's content, NUL-terminated into buf:
 * "xxh3:" and 16 hex digits of XXH3-64 over the file's header, metadata and
 * tensor index (which holds every chunk's checksum, so any change of any
 * weight changes it). Needs size >= 22; *len (may be NULL) gets the length. */
IDEFICS_API idefics_status idefics_model_identity(const idefics_model *model, char *buf, size_t size, size_t *len);

/* Image limits. max_image_pixels bounds the pixels a decode may allocate.
 * A JPEG over it is decoded at a reduced DCT scale (1/2 .. 1/8) that fits,
 * and refused only when even 1/8 does not. Other formats over it are
 * refused, and so is any image larger than 4 megapixels whose decoded RGB
 * would be more than IDEFICS_IMAGE_MAX_RATIO times its encoded size (a
 * "decompression bomb"; a JPEG is decoded at reduced scale instead). Board
 * profiles set max_image_pixels by the device's memory (boards/README.md). */
#define IDEFICS_IMAGE_MAX_RATIO 20

/* A small RGB copy of an encoded image, for previews (the caption review
 * page): decoded under max_pixels (<= 0: 40 megapixels) with the rules above,
 * turned upright when exif_orientation, then shrunk with the processor's
 * bicubic filter so that its longer side is at most max_side (never
 * enlarged). rgb must hold max_side * max_side * 3 bytes; *width and *height
 * get the result's size. Thread-safe; needs no model. */
IDEFICS_API idefics_status idefics_image_thumbnail(const void *data, size_t size, int max_side, int64_t max_pixels,
                                                   bool exif_orientation, uint8_t *rgb, int *width, int *height,
                                                   char *errbuf, size_t errbuf_size);

/* Images prepared away from the session: decoded, turned upright and resized
 * to the model's input size, e.g. on a worker thread while another image is
 * being captioned. idefics_image_prepare reads only the immutable model, so
 * it may run on any thread at once with anything else on that model; limits
 * and exif_orientation come from params (NULL = idefics_session_default_params()).
 * Adding a prepared image gives exactly what idefics_add_image_memory gives
 * for the same bytes. The image belongs to the caller until
 * idefics_image_free; it may be added to any session of the same model, any
 * number of times. On failure *out is NULL and errbuf holds the reason. */
typedef struct idefics_image idefics_image;
IDEFICS_API idefics_status idefics_image_prepare(const idefics_model *model, const void *data, size_t size,
                                                 const idefics_session_params *params, idefics_image **out,
                                                 char *errbuf, size_t errbuf_size);
IDEFICS_API idefics_status idefics_add_image_prepared(idefics_session *session, const idefics_image *image);
IDEFICS_API void idefics_image_free(idefics_image *image); /* NULL is fine */

/* ---------------------------------------- device list (issue 16) */

/* What a device is, as its driver reports it (CL_DEVICE_TYPE). */
typedef enum idefics_device_type {
    IDEFICS_DEVICE_CPU = 0,
    IDEFICS_DEVICE_GPU = 1,
    IDEFICS_DEVICE_ACCELERATOR = 2,
    IDEFICS_DEVICE_OTHER = 3,
} idefics_device_type;

/* One device a model could run on: the native CPU backend (always entry 0),
 * then every OpenCL device of every platform. Strings are NUL-terminated and
 * cut to fit. Sizes are what the device reports (lowered by the test-only
 * IDEFICS_OPENCL_CLAMP where that is set). */
typedef struct idefics_device_info {
    idefics_backend backend;        /* IDEFICS_BACKEND_CPU or IDEFICS_BACKEND_OPENCL */
    int index;                      /* OpenCL: what params.device / IDEFICS_DEVICE select ("2"); CPU: 0 */
    char name[128];                 /* device name; CPU: "cpu" */
    char platform[128];             /* OpenCL platform name; CPU: "idefics" */
    char version[160];              /* OpenCL device version and driver; CPU: the library version */
    char kernels[64];               /* CPU: the kernel set this CPU runs ("avx512vnni", "avx2", "neon-dotprod",
                                       "scalar"); OpenCL: the tuning file matched ("gpu/pocl-cpu.ini") */
    idefics_device_type type;
    uint64_t memory_bytes;          /* OpenCL: CL_DEVICE_GLOBAL_MEM_SIZE; CPU: 0 (the host's) */
    uint64_t local_memory_bytes;    /* OpenCL: CL_DEVICE_LOCAL_MEM_SIZE */
    uint64_t max_alloc_bytes;       /* OpenCL: CL_DEVICE_MAX_MEM_ALLOC_SIZE */
    uint32_t max_work_group;        /* OpenCL: CL_DEVICE_MAX_WORK_GROUP_SIZE */
    uint32_t compute_units;         /* OpenCL: CL_DEVICE_MAX_COMPUTE_UNITS; CPU: online cores */
    bool auto_ok;                   /* IDEFICS_BACKEND_AUTO would use it (OpenCL: still after its self-test) */
    char auto_why[160];             /* when !auto_ok: why AUTO skips it ("a CPU-type device ..."); else "" */
} idefics_device_info;

/* Lists the devices into out[0 .. max) and sets *n_devices to how many there
 * are (which may exceed max: call with max = 0 to count). Never opens a
 * context or builds a program; safe from any thread. A machine without
 * OpenCL (no library, no platform, a build without the backend) still lists
 * the CPU entry and returns IDEFICS_OK; err gets why no OpenCL device was
 * listed ("" when some were). IDEFICS_ERR_INVALID_ARG for a NULL n_devices,
 * or out == NULL with max > 0. */
IDEFICS_API idefics_status idefics_list_devices(idefics_device_info *out, int max, int *n_devices, char *err,
                                                size_t err_size);
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
