/*
 * idefics_jni.c - the JNI layer behind org.idefics.Idefics (java/org/idefics/),
 * built as libidefics_jni.so: one model plus one session per Java object, so
 * an Android app gets load / ask / caption / cancel with streamed tokens.
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
#include <stdio.h>
#include <string.h>

#include "idefics.h"
#include "internal.h"

/* What a Java Idefics object's `handle` field points at. */
typedef struct jni_handle {
    idf_alloc alloc;
    idefics_model *model;
    idefics_session *session;
} jni_handle;

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
    const idf_alloc *al;
    bool oom;
} u16buf;

static void u16_put(u16buf *b, jchar c) {
    if (b->oom) return;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        jchar *p = idf_realloc(b->al, b->p, cap * sizeof *p);
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

JNIEXPORT jlong JNICALL Java_org_idefics_Idefics_nativeLoad(JNIEnv *env, jclass cls, jstring jpath, jint backend,
                                                            jint n_threads, jint n_ctx, jint kv_type,
                                                            jboolean low_memory) {
    (void)cls;
    const char *path = chars_of(env, jpath, "model path");
    if (!path) return 0;
    const idf_alloc al = {{0}};
    jni_handle *jh = idf_calloc(&al, 1, sizeof *jh);
    if (!jh) {
        (*env)->ReleaseStringUTFChars(env, jpath, path);
        throw_status(env, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the JNI handle", NULL);
        return 0;
    }
    jh->alloc = al;
    idefics_model_params mp = idefics_model_default_params();
    mp.backend = (idefics_backend)backend;
    mp.n_threads = n_threads;
    mp.low_memory = low_memory;
    char err[512];
    idefics_status st = idefics_model_load(path, &mp, &jh->model, err, sizeof err);
    (*env)->ReleaseStringUTFChars(env, jpath, path);
    if (st == IDEFICS_OK) {
        idefics_session_params sp = idefics_session_default_params();
        sp.n_ctx = n_ctx;
        sp.n_threads = n_threads;
        sp.kv_type = (idefics_kv_type)kv_type;
        st = idefics_session_create(jh->model, &sp, &jh->session, err, sizeof err);
    }
    if (st != IDEFICS_OK) {
        idefics_model_free(jh->model);
        idf_free(&al, jh);
        throw_status(env, st, err, NULL);
        return 0;
    }
    return (jlong)(intptr_t)jh;
}

JNIEXPORT void JNICALL Java_org_idefics_Idefics_nativeClose(JNIEnv *env, jclass cls, jlong h) {
    (void)env, (void)cls;
    jni_handle *jh = (jni_handle *)(intptr_t)h;
    if (!jh) return;
    const idf_alloc al = jh->alloc;
    idefics_session_free(jh->session);
    idefics_model_free(jh->model);
    idf_free(&al, jh);
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

enum { IMG_NONE = 0, IMG_PATH = 1, IMG_ARGB = 2, IMG_RGB = 3 };

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
    if (w <= 0 || h <= 0) return IDEFICS_ERR_INVALID_ARG;
    const int64_t npx = (int64_t)w * (int64_t)h;
    if (kind == IMG_ARGB) {
        if (!argb || (*env)->GetArrayLength(env, argb) < npx) return IDEFICS_ERR_INVALID_ARG;
        /* Android's Bitmap.getPixels: one int per pixel, 0xAARRGGBB, not
         * premultiplied. The library takes RGBA bytes (composited over white). */
        size_t bytes;
        if (!idf_mul_size((size_t)npx, 4, &bytes)) return IDEFICS_ERR_IMAGE_TOO_LARGE;
        uint8_t *rgba = idf_malloc(&jh->alloc, bytes);
        if (!rgba) return IDEFICS_ERR_OUT_OF_MEMORY;
        jint *px = (*env)->GetIntArrayElements(env, argb, NULL);
        if (!px) {
            idf_free(&jh->alloc, rgba);
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
        idf_free(&jh->alloc, rgba);
        return st;
    }
    if (!rgb || (*env)->GetArrayLength(env, rgb) / 3 < npx) return IDEFICS_ERR_INVALID_ARG;
    jbyte *px = (*env)->GetByteArrayElements(env, rgb, NULL);
    if (!px) return IDEFICS_ERR_OUT_OF_MEMORY;
    idefics_status st = idefics_add_image_pixels(s, (const uint8_t *)px, w, h, 3, 0);
    (*env)->ReleaseByteArrayElements(env, rgb, px, JNI_ABORT);
    return st;
}

/* One question about one image (or none), answered with streaming. With
 * keep_history the turn continues the conversation; otherwise it starts a new
 * one. Returns the answer; throws IdeficsException on any failure (with the
 * partial answer when cancelled). */
JNIEXPORT jstring JNICALL Java_org_idefics_Idefics_nativeAsk(JNIEnv *env, jclass cls, jlong h, jboolean keep_history,
                                                             jint img_kind, jstring jpath, jintArray argb,
                                                             jbyteArray rgb, jint w, jint hgt, jstring jquestion,
                                                             jint max_new_tokens, jfloat temperature, jint top_k,
                                                             jfloat top_p, jfloat repetition_penalty, jlong seed,
                                                             jboolean stop_at_eos, jobject listener) {
    (void)cls;
    jni_handle *jh = handle_of(env, h);
    if (!jh) return NULL;
    idefics_session *s = jh->session;
    if (!keep_history) idefics_session_reset(s);

    idefics_status st = IDEFICS_OK;
    if (img_kind != IMG_NONE) {
        st = add_image(env, jh, img_kind, jpath, argb, rgb, w, hgt);
        if ((*env)->ExceptionCheck(env)) return NULL;
        if (st != IDEFICS_OK) {
            const char *msg = idefics_session_last_error(s);
            throw_status(env, st, msg[0] ? msg : "bad image arguments (size or array length)", NULL);
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
    c.all.al = c.piece.al = &jh->alloc;
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
    idf_free(&jh->alloc, c.all.p);
    idf_free(&jh->alloc, c.piece.p);
    return answer;
}
