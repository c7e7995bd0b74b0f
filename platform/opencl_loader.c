/*
 * opencl_loader.c - dlopen OpenCL and resolve its entry points (opencl_loader.h).
 */
#include "opencl_loader.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "platform.h"

/* Where OpenCL lives. The ICD loader names come first (desktop Linux, most
 * boards); then Android: vendors ship the library under /vendor, and apps on
 * Android 7+ may only open it when the vendor lists it as public, so the bare
 * names are tried before absolute paths. Mali puts the OpenCL entry points in
 * its GLES driver. */
static const char *const default_libs[] = {
    "libOpenCL.so.1",
    "libOpenCL.so",
    "/vendor/lib64/libOpenCL.so",
    "/system/vendor/lib64/libOpenCL.so",
    "/system/lib64/libOpenCL.so",
    "libOpenCL_adreno.so",
    "/vendor/lib64/libOpenCL_adreno.so",
    "libGLES_mali.so",
    "/vendor/lib64/egl/libGLES_mali.so",
    "/system/vendor/lib64/egl/libGLES_mali.so",
};

static bool resolve(idf_cl_api *api, char *why, size_t why_size) {
#define IDF_CL_REQ(n)                                                                                                 \
    api->n = (__typeof__(n) *)idf_dlsym(api->lib, #n);                                                               \
    if (!api->n) {                                                                                                    \
        snprintf(why, why_size, "%s lacks the required entry point %s", api->lib_path, #n);                          \
        return false;                                                                                                 \
    }
#define IDF_CL_OPT(n) api->n = (__typeof__(n) *)idf_dlsym(api->lib, #n);
    IDF_CL_REQUIRED(IDF_CL_REQ)
    IDF_CL_OPTIONAL(IDF_CL_OPT)
#undef IDF_CL_REQ
#undef IDF_CL_OPT
    if (!api->clCreateCommandQueue && !api->clCreateCommandQueueWithProperties) {
        snprintf(why, why_size, "%s has neither clCreateCommandQueue nor clCreateCommandQueueWithProperties",
                 api->lib_path);
        return false;
    }
    return true;
}

bool idf_cl_load(idf_cl_api *api, char *why, size_t why_size) {
    memset(api, 0, sizeof *api);
    if (why_size)
        why[0] = '\0';
    const char *env = getenv("IDEFICS_OPENCL_LIB");
    if (env && env[0]) { /* an explicit choice: only that library, so tests can point at a missing one */
        api->lib = idf_dlopen(env);
        if (!api->lib) {
            snprintf(why, why_size, "IDEFICS_OPENCL_LIB=%s cannot be opened", env);
            return false;
        }
        snprintf(api->lib_path, sizeof api->lib_path, "%s", env);
    } else {
        for (size_t i = 0; i < sizeof default_libs / sizeof default_libs[0] && !api->lib; i++) {
            api->lib = idf_dlopen(default_libs[i]);
            if (api->lib)
                snprintf(api->lib_path, sizeof api->lib_path, "%s", default_libs[i]);
        }
        if (!api->lib) {
            snprintf(why, why_size, "no OpenCL library found (tried libOpenCL.so.1, libOpenCL.so and %zu vendor paths)",
                     sizeof default_libs / sizeof default_libs[0] - 2);
            return false;
        }
    }
    if (!resolve(api, why, why_size)) {
        idf_cl_unload(api);
        return false;
    }
    return true;
}

void idf_cl_unload(idf_cl_api *api) {
    if (!api)
        return;
    idf_dlclose(api->lib);
    memset(api, 0, sizeof *api);
}

bool idf_cl_cache_dir(char *buf, size_t size) {
    const char *d = getenv("IDEFICS_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");
    int n;
    if (d && d[0])
        n = snprintf(buf, size, "%s", d);
    else if (x && x[0])
        n = snprintf(buf, size, "%s/idefics", x);
    else if (h && h[0])
        n = snprintf(buf, size, "%s/.cache/idefics", h);
    else
        return false;
    if (n <= 0 || (size_t)n >= size)
        return false;
    /* mkdir -p: each prefix in turn; folders that exist are fine */
    for (char *s = buf + 1;; s++) {
        if (*s == '/' || *s == '\0') {
            const char c = *s;
            *s = '\0';
            mkdir(buf, 0755);
            *s = c;
            if (!c)
                break;
        }
    }
    struct stat st;
    return stat(buf, &st) == 0 && S_ISDIR(st.st_mode);
}

bool idf_cl_cache_write(const char *path, const void *data, size_t len) {
    char tmp[1024];
    const int n = snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    if (n <= 0 || (size_t)n >= sizeof tmp)
        return false;
    FILE *f = fopen(tmp, "wb");
    bool ok = f && fwrite(data, 1, len, f) == len;
    if (f)
        ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return false;
    }
    return true;
}
