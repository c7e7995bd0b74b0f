/*
 * idefics_jni.c - the JNI layer behind org.idefics.Idefics (java/org/idefics/),
 * built as libidefics_jni.so: one model plus one session per Java object, so
 * an Android app gets load / ask / caption / cancel with streamed tokens;
 * sessions made with newSession share the model (reference-counted).
 *
 * It uses the public API only (include/idefics.h). Every failure becomes an
 * org.idefics.IdeficsException carrying the status name, its number and the
 * library's message; nothing here aborts, even on bad arguments from Java.
 *
 * Threads: the Java object serialises ask/caption/close (synchronized); only
 * cancel() runs concurrently, and idefics_session_cancel is safe from any
 * thread. The token callback runs on the thread that called ask.
 *
 * Text: the library yields UTF-8; JNI's NewStringUTF expects *modified*
 * UTF-8 and rejects 4-byte sequences (emoji) under CheckJNI, so pieces are
 * converted to UTF-16 here and built with NewString.
 */
#include <jni.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include <stdint.h>
#include <stdlib.h>

#include "idefics.h"

/* One loaded model, shared by the sessions made from it (Idefics.newSession):
 * each holds a reference, and the model is freed with the last one, so it
 * always outlives its sessions whatever order Java closes them in. */
typedef struct jni_model {
    idefics_model *model;
    atomic_int refs;
} jni_model;

/* What a Java Idefics or Idefics.Session object's `handle` field points at. */
typedef struct jni_handle {
    jni_model *shared;
    idefics_model *model; /* == shared->model */
    idefics_session *session;
} jni_handle;

static void model_release(jni_model *jm) {
    if (jm && atomic_fetch_sub(&jm->refs, 1) == 1) {
        idefics_model_free(jm->model);
        free(jm);
    }
}

#define EXC_CLASS "org/idefics/IdeficsException"

/* Throw IdeficsException(status name, code, message[, partial answer]). If even
 * that fails (class missing), JNI already has an exception pending. */
static void throw_status(JNIEnv *env, idefics_status st, const char *msg, jstring partial) {
    jclass cls = (*env)->FindClass(env, EXC_CLASS);
    if (!cls) return;
    jmethodID ctor = (*env)->GetMethodID(env, cls, "<init>", "(Ljava/lang/String;ILjava/lang/String;Ljava/lang/String;)V");
    if (!ctor) return;
    jstring jname = (*env)->NewStringUTF(env, idefics_status_str(st)); /* ASCII */
    char buf[600];
    /* The message may hold file names in any encoding: keep its ASCII only, so
     * NewStringUTF cannot be handed an invalid sequence. */
    size_t n = 0;
    for (const char *p = msg ? msg : ""; *p && n + 1 < sizeof buf; p++)
        buf[n++] = (unsigned char)*p < 0x80 ? *p : '?';
    buf[n] = '\0';
    jstring jmsg = (*env)->NewStringUTF(env, buf);
    if (!jname || !jmsg) return;
    jobject e = (*env)->NewObject(env, cls, ctor, jname, (jint)st, jmsg, partial);
    if (e) (*env)->Throw(env, (jthrowable)e);
}

static void throw_java(JNIEnv *env, const char *cls_name, const char *msg) {
    jclass cls = (*env)->FindClass(env, cls_name);
    if (cls) (*env)->ThrowNew(env, cls, msg);
}

/* ---- UTF-8 -> UTF-16 (invalid input becomes U+FFFD, never an error) */

typedef struct u16buf {
    jchar *p;
    size_t n, cap;
    bool oom;
} u16buf;

static void u16_put(u16buf *b, jchar c) {
    if (b->oom) return;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        jchar *p = realloc(b->p, cap * sizeof *p);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p, b->cap = cap;
    }
    b->p[b->n++] = c;
}

static void u16_append_utf8(u16buf *b, const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        uint32_t c = u[i];
        int extra = c < 0x80 ? 0 : (c & 0xE0) == 0xC0 ? 1 : (c & 0xF0) == 0xE0 ? 2 : (c & 0xF8) == 0xF0 ? 3 : -1;
        if (extra < 0 || i + (size_t)extra >= len) { /* bad lead byte or cut short */
            u16_put(b, 0xFFFD);
            i++;
            continue;
        }
        c = extra == 0 ? c : extra == 1 ? c & 0x1F : extra == 2 ? c & 0x0F : c & 0x07;
        bool ok = true;
        for (int k = 1; k <= extra; k++) {
            if (i + (size_t)k >= len || (u[i + k] & 0xC0) != 0x80) {
                ok = false;
                break;
            }
            c = (c << 6) | (u[i + k] & 0x3F);
        }
        static const uint32_t min_of[] = {0, 0x80, 0x800, 0x10000};
        if (!ok || c < min_of[extra] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) {
            u16_put(b, 0xFFFD);
            i++;
            continue;
        }
        if (c >= 0x10000) {
            c -= 0x10000;
            u16_put(b, (jchar)(0xD800 + (c >> 10)));
            u16_put(b, (jchar)(0xDC00 + (c & 0x3FF)));
        } else {
            u16_put(b, (jchar)c);
        }
        i += (size_t)extra + 1;
    }
}

static jstring u16_to_jstring(JNIEnv *env, const u16buf *b) {
    return (*env)->NewString(env, b->p ? b->p : (const jchar *)u"", (jsize)b->n);
}

/* ---- handle access */

static jni_handle *handle_of(JNIEnv *env, jlong h) {
    jni_handle *jh = (jni_handle *)(intptr_t)h;
    if (!jh) throw_java(env, "java/lang/IllegalStateException", "Idefics object is closed");
    return jh;
}

/* Java string -> NUL-terminated modified UTF-8 (equal to UTF-8 for paths and
 * questions without NUL or supplementary characters). Caller releases. */
static const char *chars_of(JNIEnv *env, jstring s, const char *what) {
    if (!s) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s must not be null", what);
        throw_java(env, "java/lang/NullPointerException", msg);
        return NULL;
    }
    return (*env)->GetStringUTFChars(env, s, NULL);
}

/* ---- load / close */

/* Session params from Java; a field left at its Java default keeps what the profile said. */
static idefics_status new_session(jni_model *jm, const idefics_session_params *sp, jni_handle **out, char *err,
                                  size_t errsz) {
    jni_handle *jh = calloc(1, sizeof *jh);
    if (!jh) {
        snprintf(err, errsz, "out of memory for the JNI handle");
        return IDEFICS_ERR_OUT_OF_MEMORY;
    }
    jh->shared = jm;
    jh->model = jm->model;
    idefics_status st = idefics_session_create(jm->model, sp, &jh->session, err, errsz);
    if (st != IDEFICS_OK) {
        free(jh);
        return st;
    }
    atomic_fetch_add(&jm->refs, 1);
    *out = jh;
    return IDEFICS_OK;
}

/* profile: a board or memory profile name (idefics_board_apply) or NULL. jvm_safe:
 * a desktop JVM, where AUTO must not load an OpenCL ICD: PoCL's LLVM installs
 * signal handlers over the JVM's (SIGSEGV is how the JVM does null checks and
 * safepoints), so AUTO means the CPU there; OPENCL asked for by name still works. */
JNIEXPORT jlong JNICALL Java_org_idefics_Idefics_nativeLoad(JNIEnv *env, jclass cls, jstring jpath, jint backend,
                                                            jint n_threads, jint n_ctx, jint kv_type,
                                                            jboolean low_memory, jstring jprofile,
                                                            jstring jboards, jboolean jvm_safe) {
    (void)cls;
    idefics_model_params mp = idefics_model_default_params();
    idefics_session_params sp = idefics_session_default_params();
    char err[512] = "";
    idefics_status st = IDEFICS_OK;
    bool profiled = false;
    if (jprofile) {
        const char *profile = chars_of(env, jprofile, "profile");
        if (!profile) return 0;
        const char *boards = jboards ? (*env)->GetStringUTFChars(env, jboards, NULL) : NULL;
        if (jboards && !boards) {
            (*env)->ReleaseStringUTFChars(env, jprofile, profile);
            return 0;
        }
        st = idefics_board_apply(boards, profile, &mp, &sp, err, sizeof err);
        if (boards) (*env)->ReleaseStringUTFChars(env, jboards, boards);
        (*env)->ReleaseStringUTFChars(env, jprofile, profile);
        if (st != IDEFICS_OK) {
            throw_status(env, st, boards || jboards ? err : "a profile needs LoadParams.boardsDir (the boards/ folder)",
                         NULL);
            return 0;
        }
        profiled = true;
    }
    /* Java's defaults (AUTO, 0 threads, 0 = model's context, F16, no low memory)
     * leave the profile's values; anything else overrides them. */
    if (!profiled || backend != IDEFICS_BACKEND_AUTO) mp.backend = (idefics_backend)backend;
    if (!profiled || n_threads != 0) mp.n_threads = sp.n_threads = n_threads;
    if (!profiled || n_ctx != 0) sp.n_ctx = n_ctx;
    if (!profiled || kv_type != IDEFICS_KV_F16) sp.kv_type = (idefics_kv_type)kv_type;
    if (low_memory) mp.low_memory = true;
    if (jvm_safe && mp.backend == IDEFICS_BACKEND_AUTO) mp.backend = IDEFICS_BACKEND_CPU;
    const char *path = chars_of(env, jpath, "model path");
    if (!path) return 0;
    jni_model *jm = calloc(1, sizeof *jm);
    if (!jm) {
        (*env)->ReleaseStringUTFChars(env, jpath, path);
        throw_status(env, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the JNI handle", NULL);
        return 0;
    }
    atomic_init(&jm->refs, 1); /* the loader's reference, dropped below */
    st = idefics_model_load(path, &mp, &jm->model, err, sizeof err);
    (*env)->ReleaseStringUTFChars(env, jpath, path);
    jni_handle *jh = NULL;
    if (st == IDEFICS_OK) {
        idefics_model_info info;
        idefics_model_get_info(jm->model, &info);
        /* a profile's context is a memory budget: a shorter model gets its maximum */
        if (profiled && n_ctx == 0 && sp.n_ctx > info.n_ctx_max) sp.n_ctx = info.n_ctx_max;
        st = new_session(jm, &sp, &jh, err, sizeof err);
    }
    model_release(jm); /* the session holds the model now, or nobody does */
    if (st != IDEFICS_OK) {
        throw_status(env, st, err, NULL);
        return 0;
    }
    return (jlong)(intptr_t)jh;
}

/* Another session on the model of h: its own conversation and KV cache. */
JNIEXPORT jlong JNICALL Java_org_idefics_Idefics_nativeNewSession(JNIEnv *env, jclass cls, jlong h, jint n_threads,
                                                                  jint n_ctx, jint kv_type) {
    (void)cls;
    jni_handle *src = (jni_handle *)(intptr_t)h;
    if (!src) {
        throw_java(env, "java/lang/IllegalStateException", "Idefics object is closed");
        return 0;
    }
    idefics_session_params sp = idefics_session_default_params();
    sp.n_threads = n_threads;
    sp.n_ctx = n_ctx;
    sp.kv_type = (idefics_kv_type)kv_type;
    char err[512] = "";
    jni_handle *jh = NULL;
    idefics_status st = new_session(src->shared, &sp, &jh, err, sizeof err);
    if (st != IDEFICS_OK) {
        throw_status(env, st, err, NULL);
        return 0;
    }
    return (jlong)(intptr_t)jh;
}

/* The model's "chat.caption_prompt" metadata, or null when it has none. */
JNIEXPORT jstring JNICALL Java_org_idefics_Idefics_nativeCaptionPrompt(JNIEnv *env, jclass cls, jlong h) {
    (void)cls;
    jni_handle *jh = handle_of(env, h);
    if (!jh) return NULL;
    char buf[1024];
    size_t len = 0;
    if (idefics_model_meta(jh->model, "chat.caption_prompt", buf, sizeof buf, &len) != IDEFICS_OK ||
        len >= sizeof buf)
        return NULL;
    u16buf b = {0};
    u16_append_utf8(&b, buf, len);
    jstring r = b.oom ? NULL : u16_to_jstring(env, &b);
    free(b.p);
    return r;
}

JNIEXPORT void JNICALL Java_org_idefics_Idefics_nativeClose(JNIEnv *env, jclass cls, jlong h) {
    (void)env, (void)cls;
    jni_handle *jh = (jni_handle *)(intptr_t)h;
    if (!jh) return;
    jni_model *jm = jh->shared;
    idefics_session_free(jh->session);
    free(jh);
    model_release(jm); /* the model goes with its last session */
}

JNIEXPORT void JNICALL Java_org_idefics_Idefics_nativeCancel(JNIEnv *env, jclass cls, jlong h) {
    (void)env, (void)cls;
    jni_handle *jh = (jni_handle *)(intptr_t)h;
    if (jh) idefics_session_cancel(jh->session);
}

JNIEXPORT jstring JNICALL Java_org_idefics_Idefics_nativeInfo(JNIEnv *env, jclass cls, jlong h) {
    (void)cls;
    jni_handle *jh = handle_of(env, h);
    if (!jh) return NULL;
    idefics_model_info info;
    idefics_model_get_info(jh->model, &info);
    char buf[512];
    snprintf(buf, sizeof buf, "name=%s params=%lld vocab=%d n_ctx_max=%d image_size=%d instruct=%d backend=%s",
             info.name ? info.name : "", (long long)info.n_params, info.n_vocab, info.n_ctx_max, info.image_size,
             info.is_instruct ? 1 : 0, info.backend ? info.backend : "?");
    for (char *p = buf; *p; p++)
        if ((unsigned char)*p >= 0x80) *p = '?';
    return (*env)->NewStringUTF(env, buf);
}

/* ---- ask */

/* What the token callback needs: where to send pieces and what to collect. */
typedef struct stream_ctx {
    JNIEnv *env;
    jobject listener; /* may be NULL */
    jmethodID on_token;
    u16buf all;       /* the whole answer */
    u16buf piece;     /* scratch for one piece */
    bool java_threw;  /* the listener threw: stop and let the exception through */
} stream_ctx;

static bool on_token(void *ud, int32_t token, const char *piece) {
    (void)token;
    stream_ctx *c = ud;
    size_t len = strlen(piece);
    u16_append_utf8(&c->all, piece, len);
    if (!c->listener || len == 0) return true; /* special tokens give "": nothing to show */
    c->piece.n = 0;
    u16_append_utf8(&c->piece, piece, len);
    if (c->piece.oom) return false;
    JNIEnv *env = c->env;
    jstring s = u16_to_jstring(env, &c->piece);
    if (!s) {
        c->java_threw = true; /* OutOfMemoryError pending */
        return false;
    }
    jboolean go = (*env)->CallBooleanMethod(env, c->listener, c->on_token, s);
    (*env)->DeleteLocalRef(env, s);
    if ((*env)->ExceptionCheck(env)) {
        c->java_threw = true;
        return false;
    }
    return go == JNI_TRUE;
}

enum { IMG_NONE = 0, IMG_PATH = 1, IMG_ARGB = 2, IMG_RGB = 3, IMG_ENCODED = 4 };

/* Add the image given in one of the three forms. */
static idefics_status add_image(JNIEnv *env, jni_handle *jh, int kind, jstring jpath, jintArray argb,
                                jbyteArray rgb, jint w, jint h) {
    idefics_session *s = jh->session;
    if (kind == IMG_PATH) {
        const char *path = chars_of(env, jpath, "image path");
        if (!path) return IDEFICS_ERR_INVALID_ARG;
        idefics_status st = idefics_add_image_file(s, path);
        (*env)->ReleaseStringUTFChars(env, jpath, path);
        return st;
    }
    if (kind == IMG_ENCODED) { /* a JPEG/PNG/... file's bytes, e.g. from a camera or the network */
        if (!rgb) return IDEFICS_ERR_INVALID_ARG;
        jsize n = (*env)->GetArrayLength(env, rgb);
        jbyte *bytes = (*env)->GetByteArrayElements(env, rgb, NULL);
        if (!bytes) return IDEFICS_ERR_OUT_OF_MEMORY;
        idefics_status st = idefics_add_image_memory(s, bytes, (size_t)n);
        (*env)->ReleaseByteArrayElements(env, rgb, bytes, JNI_ABORT);
        return st;
    }
    if (w <= 0 || h <= 0) return IDEFICS_ERR_INVALID_ARG;
    const int64_t npx = (int64_t)w * (int64_t)h;
    if (kind == IMG_ARGB) {
        if (!argb || (*env)->GetArrayLength(env, argb) < npx) return IDEFICS_ERR_INVALID_ARG;
        /* Android's Bitmap.getPixels: one int per pixel, 0xAARRGGBB, not
         * premultiplied. The library takes RGBA bytes (composited over white). */
        size_t bytes;
        if ((uint64_t)npx > SIZE_MAX / 4) return IDEFICS_ERR_IMAGE_TOO_LARGE;
        bytes = (size_t)npx * 4;
        uint8_t *rgba = malloc(bytes);
        if (!rgba) return IDEFICS_ERR_OUT_OF_MEMORY;
        jint *px = (*env)->GetIntArrayElements(env, argb, NULL);
        if (!px) {
            free(rgba);
            return IDEFICS_ERR_OUT_OF_MEMORY;
        }
        for (int64_t i = 0; i < npx; i++) {
            const uint32_t v = (uint32_t)px[i];
            rgba[4 * i + 0] = (uint8_t)(v >> 16);
            rgba[4 * i + 1] = (uint8_t)(v >> 8);
            rgba[4 * i + 2] = (uint8_t)v;
            rgba[4 * i + 3] = (uint8_t)(v >> 24);
        }
        (*env)->ReleaseIntArrayElements(env, argb, px, JNI_ABORT);
        idefics_status st = idefics_add_image_pixels(s, rgba, w, h, 4, 0);
        free(rgba);
        return st;
    }
    if (!rgb || (*env)->GetArrayLength(env, rgb) / 3 < npx) return IDEFICS_ERR_INVALID_ARG;
    jbyte *px = (*env)->GetByteArrayElements(env, rgb, NULL);
    if (!px) return IDEFICS_ERR_OUT_OF_MEMORY;
    idefics_status st = idefics_add_image_pixels(s, (const uint8_t *)px, w, h, 3, 0);
    (*env)->ReleaseByteArrayElements(env, rgb, px, JNI_ABORT);
    return st;
}

/* One question about any number of images (kinds[i] with data[i]: a path
 * String, ARGB int[], RGB byte[] or encoded byte[]; widths/heights for pixels),
 * answered with streaming. With keep_history the turn continues the
 * conversation (images in follow-ups included); otherwise it starts a new one.
 * Returns the answer; throws IdeficsException on any failure (with the partial
 * answer when cancelled). */
JNIEXPORT jstring JNICALL Java_org_idefics_Idefics_nativeAsk(JNIEnv *env, jclass cls, jlong h, jboolean keep_history,
                                                             jintArray jkinds, jobjectArray jdata, jintArray jwidths,
                                                             jintArray jheights, jstring jquestion,
                                                             jint max_new_tokens, jfloat temperature, jint top_k,
                                                             jfloat top_p, jfloat repetition_penalty, jlong seed,
                                                             jboolean stop_at_eos, jobject listener) {
    (void)cls;
    jni_handle *jh = handle_of(env, h);
    if (!jh) return NULL;
    idefics_session *s = jh->session;
    if (!keep_history) idefics_session_reset(s);

    idefics_status st = IDEFICS_OK;
    jsize n_img = jkinds ? (*env)->GetArrayLength(env, jkinds) : 0;
    if (n_img && (!jdata || !jwidths || !jheights || (*env)->GetArrayLength(env, jdata) != n_img ||
                  (*env)->GetArrayLength(env, jwidths) != n_img || (*env)->GetArrayLength(env, jheights) != n_img)) {
        throw_status(env, IDEFICS_ERR_INVALID_ARG, "image arrays of different lengths", NULL);
        return NULL;
    }
    for (jsize i = 0; i < n_img; i++) {
        jint kind, w, hgt;
        (*env)->GetIntArrayRegion(env, jkinds, i, 1, &kind);
        (*env)->GetIntArrayRegion(env, jwidths, i, 1, &w);
        (*env)->GetIntArrayRegion(env, jheights, i, 1, &hgt);
        jobject d = (*env)->GetObjectArrayElement(env, jdata, i);
        if ((*env)->ExceptionCheck(env)) return NULL;
        st = add_image(env, jh, kind, kind == IMG_PATH ? (jstring)d : NULL, kind == IMG_ARGB ? (jintArray)d : NULL,
                       kind == IMG_RGB || kind == IMG_ENCODED ? (jbyteArray)d : NULL, w, hgt);
        (*env)->DeleteLocalRef(env, d);
        if ((*env)->ExceptionCheck(env)) return NULL;
        if (st != IDEFICS_OK) {
            const char *msg = idefics_session_last_error(s);
            char buf[700];
            snprintf(buf, sizeof buf, "image %d: %s", (int)i + 1,
                     msg[0] ? msg : "bad image arguments (kind, size or array length)");
            throw_status(env, st, buf, NULL);
            return NULL;
        }
    }
    const char *q = chars_of(env, jquestion, "question");
    if (!q) return NULL;
    st = idefics_add_user_turn(s, q);
    (*env)->ReleaseStringUTFChars(env, jquestion, q);
    if (st != IDEFICS_OK) {
        throw_status(env, st, idefics_session_last_error(s), NULL);
        return NULL;
    }

    stream_ctx c = {.env = env, .listener = listener};
    if (listener) {
        jclass lcls = (*env)->GetObjectClass(env, listener);
        c.on_token = lcls ? (*env)->GetMethodID(env, lcls, "onToken", "(Ljava/lang/String;)Z") : NULL;
        if (!c.on_token) return NULL; /* NoSuchMethodError pending */
    }
    idefics_generate_params gp = idefics_generate_default_params();
    gp.max_new_tokens = max_new_tokens;
    gp.temperature = temperature;
    gp.top_k = top_k;
    gp.top_p = top_p;
    gp.repetition_penalty = repetition_penalty;
    gp.seed = (uint64_t)seed;
    gp.stop_at_eos = stop_at_eos;
    st = idefics_generate(s, &gp, on_token, &c);

    jstring answer = NULL;
    if (c.java_threw) {
        /* the listener's exception (or an OutOfMemoryError) propagates as is */
    } else if (c.all.oom || c.piece.oom) {
        throw_status(env, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory collecting the answer", NULL);
    } else {
        answer = u16_to_jstring(env, &c.all);
        if (answer && st != IDEFICS_OK) {
            throw_status(env, st, idefics_session_last_error(s), answer);
            answer = NULL;
        }
    }
    free(c.all.p);
    free(c.piece.p);
    return answer;
}
