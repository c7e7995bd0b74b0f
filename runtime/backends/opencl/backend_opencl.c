/*
 * backend_opencl.c - the OpenCL device a model runs on (backend_opencl.h):
 * library loading, device choice, the capability probe, tuning data, program
 * build with an on-disk binary cache, the start-up self-test and the model's
 * weight buffers. The ops are in backend_opencl_ops.c.
 *
 * Program binary cache: $IDEFICS_CACHE_DIR, else $XDG_CACHE_HOME/idefics,
 * else $HOME/.cache/idefics; one file per key, key = XXH64 of the cache
 * format version, platform, device, driver, build options and the full program
 * source. File: "IDFCLBN1", u64 key, u64 n, n bytes of program binary, u64
 * XXH64 of those bytes (all little-endian). Written to a temp file and renamed,
 * so readers never see half a file; an entry that fails any check (or that the
 * driver refuses) is ignored and rebuilt from source.
 */
#include "backend_opencl.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "embedded.h"
#include "model.h"
#include "quant.h"

#define CACHE_FORMAT_VERSION 1u

/* The program: these files, in this order, after prelude.cl and quant.h. */
static const char *const program_files[] = {"prelude.cl", "quant.h",      "matmul_q4.cl", "matmul_q8.cl",
                                            "matmul_f.cl", "gemm_tiled.cl", "norm.cl",     "rope.cl",
                                            "attention.cl", "act.cl",       "get_rows.cl"};

/* ============================================================ error names */

const char *idf_cl_err_name(cl_int e) {
    static const char *const names[] = {
        "CL_SUCCESS", "CL_DEVICE_NOT_FOUND", "CL_DEVICE_NOT_AVAILABLE", "CL_COMPILER_NOT_AVAILABLE",
        "CL_MEM_OBJECT_ALLOCATION_FAILURE", "CL_OUT_OF_RESOURCES", "CL_OUT_OF_HOST_MEMORY",
        "CL_PROFILING_INFO_NOT_AVAILABLE", "CL_MEM_COPY_OVERLAP", "CL_IMAGE_FORMAT_MISMATCH",
        "CL_IMAGE_FORMAT_NOT_SUPPORTED", "CL_BUILD_PROGRAM_FAILURE", "CL_MAP_FAILURE",
        "CL_MISALIGNED_SUB_BUFFER_OFFSET", "CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST", "CL_COMPILE_PROGRAM_FAILURE",
        "CL_LINKER_NOT_AVAILABLE", "CL_LINK_PROGRAM_FAILURE", "CL_DEVICE_PARTITION_FAILED",
        "CL_KERNEL_ARG_INFO_NOT_AVAILABLE"}; /* 0 .. -19 */
    static const char *const names30[] = {
        "CL_INVALID_VALUE", "CL_INVALID_DEVICE_TYPE", "CL_INVALID_PLATFORM", "CL_INVALID_DEVICE",
        "CL_INVALID_CONTEXT", "CL_INVALID_QUEUE_PROPERTIES", "CL_INVALID_COMMAND_QUEUE", "CL_INVALID_HOST_PTR",
        "CL_INVALID_MEM_OBJECT", "CL_INVALID_IMAGE_FORMAT_DESCRIPTOR", "CL_INVALID_IMAGE_SIZE", "CL_INVALID_SAMPLER",
        "CL_INVALID_BINARY", "CL_INVALID_BUILD_OPTIONS", "CL_INVALID_PROGRAM", "CL_INVALID_PROGRAM_EXECUTABLE",
        "CL_INVALID_KERNEL_NAME", "CL_INVALID_KERNEL_DEFINITION", "CL_INVALID_KERNEL", "CL_INVALID_ARG_INDEX",
        "CL_INVALID_ARG_VALUE", "CL_INVALID_ARG_SIZE", "CL_INVALID_KERNEL_ARGS", "CL_INVALID_WORK_DIMENSION",
        "CL_INVALID_WORK_GROUP_SIZE", "CL_INVALID_WORK_ITEM_SIZE", "CL_INVALID_GLOBAL_OFFSET",
        "CL_INVALID_EVENT_WAIT_LIST", "CL_INVALID_EVENT", "CL_INVALID_OPERATION", "CL_INVALID_GL_OBJECT",
        "CL_INVALID_BUFFER_SIZE", "CL_INVALID_MIP_LEVEL", "CL_INVALID_GLOBAL_WORK_SIZE", "CL_INVALID_PROPERTY",
        "CL_INVALID_IMAGE_DESCRIPTOR", "CL_INVALID_COMPILER_OPTIONS", "CL_INVALID_LINKER_OPTIONS",
        "CL_INVALID_DEVICE_PARTITION_COUNT", "CL_INVALID_PIPE_SIZE", "CL_INVALID_DEVICE_QUEUE",
        "CL_INVALID_SPEC_ID", "CL_MAX_SIZE_RESTRICTION_EXCEEDED"}; /* -30 .. -72 */
    _Static_assert(sizeof names / sizeof names[0] == 20 && sizeof names30 / sizeof names30[0] == 43, "code tables");
    if (e <= 0 && e >= -19)
        return names[-e];
    if (e <= -30 && e >= -72)
        return names30[-30 - e];
    if (e == -1001)
        return "CL_PLATFORM_NOT_FOUND_KHR";
    return "unknown OpenCL error";
}

/* ============================================================ embedded files */

static const idf_embedded_file *emb_find(const char *name) {
    for (unsigned i = 0; i < idf_embedded_files_count; i++)
        if (strcmp(idf_embedded_files[i].name, name) == 0)
            return &idf_embedded_files[i];
    return NULL;
}

/* Whole file into a NUL-terminated heap buffer (kernel development builds and
 * IDEFICS_OPENCL_TUNING). */
static char *read_text(const idf_alloc *al, const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        const long n = ftell(f);
        if (n >= 0 && n < (1l << 26) && fseek(f, 0, SEEK_SET) == 0 && (buf = idf_malloc(al, (size_t)n + 1))) {
            if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
                idf_free(al, buf);
                buf = NULL;
            } else {
                buf[n] = '\0';
                *len = (size_t)n;
            }
        }
    }
    fclose(f);
    return buf;
}

/* ================================================================= tuning */

static void tuning_defaults(idf_ocl_tuning *t) {
    *t = (idf_ocl_tuning){.mm_lanes = 4, .mm_nb = 4, .f_lanes = 8, .f_rows = 8, .wg_norm = 64, .wg_attn = 64,
                          .wg_elem = 64, .gm_tm = 32, .gm_tn = 32, .gm_wm = 4, .gm_wn = 4, .gm_min_n = 16,
                          .auto_select = true, .use_host_ptr = true, .clblast_min_n = 64};
    snprintf(t->file, sizeof t->file, "built-in defaults");
}

static bool ci_contains(const char *hay, const char *needle) {
    const size_t n = strlen(needle);
    if (!n)
        return true;
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return true;
    }
    return false;
}

static char *trim(char *s) {
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Parse an ini text. With p == NULL only the [tuning] values are applied; with
 * p, returns whether every [match] key matches p (no keys: false, so the
 * default file is only chosen explicitly). Unknown keys and malformed values
 * are ignored: the file is data shipped with the library, and a bad line must
 * not make a working device unusable. */
static bool ini_apply(const char *text, size_t len, const idf_ocl_probe *p, idf_ocl_tuning *t) {
    char line[256];
    char section[32] = "";
    bool any_match_key = false, all_match = true;
    for (size_t pos = 0; pos < len;) {
        size_t e = pos;
        while (e < len && text[e] != '\n')
            e++;
        const size_t n = e - pos < sizeof line - 1 ? e - pos : sizeof line - 1;
        memcpy(line, text + pos, n);
        line[n] = '\0';
        pos = e + 1;
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *s = trim(line);
        if (!*s)
            continue;
        if (*s == '[') {
            snprintf(section, sizeof section, "%s", s);
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq)
            continue;
        *eq = '\0';
        const char *key = trim(s), *val = trim(eq + 1);
        if (strcmp(section, "[match]") == 0 && p) {
            any_match_key = true;
            bool ok;
            if (strcmp(key, "vendor") == 0)
                ok = ci_contains(p->vendor, val);
            else if (strcmp(key, "device") == 0)
                ok = ci_contains(p->device, val);
            else if (strcmp(key, "platform") == 0)
                ok = ci_contains(p->platform, val);
            else if (strcmp(key, "type") == 0)
                ok = (strcmp(val, "gpu") == 0 && (p->type & CL_DEVICE_TYPE_GPU)) ||
                     (strcmp(val, "cpu") == 0 && (p->type & CL_DEVICE_TYPE_CPU)) ||
                     (strcmp(val, "accelerator") == 0 && (p->type & CL_DEVICE_TYPE_ACCELERATOR));
            else
                ok = false;
            all_match = all_match && ok;
        } else if (strcmp(section, "[tuning]") == 0 && !p) {
            char *end;
            const unsigned long v = strtoul(val, &end, 10);
            if (end == val || *end || v > (1ul << 30))
                continue;
            const unsigned u = (unsigned)v;
            /* work sizes must be powers of two for the tree reductions */
            const bool pow2 = u && u <= 1024 && !(u & (u - 1));
            if (strcmp(key, "mm_lanes") == 0 && pow2)
                t->mm_lanes = u;
            else if (strcmp(key, "mm_nb") == 0 && u >= 1 && u <= 16)
                t->mm_nb = u;
            else if (strcmp(key, "f_lanes") == 0 && pow2)
                t->f_lanes = u;
            else if (strcmp(key, "f_rows") == 0 && u >= 1 && u <= 1024)
                t->f_rows = u;
            else if (strcmp(key, "wg_norm") == 0 && pow2)
                t->wg_norm = u;
            else if (strcmp(key, "wg_attn") == 0 && pow2)
                t->wg_attn = u;
            else if (strcmp(key, "wg_elem") == 0 && u >= 1 && u <= 1024)
                t->wg_elem = u;
            else if (strcmp(key, "gm_tm") == 0 && pow2 && u >= 4 && u <= 128)
                t->gm_tm = u;
            else if (strcmp(key, "gm_tn") == 0 && pow2 && u >= 4 && u <= 128)
                t->gm_tn = u;
            else if (strcmp(key, "gm_wm") == 0 && pow2 && u <= 8)
                t->gm_wm = u;
            else if (strcmp(key, "gm_wn") == 0 && pow2 && u <= 8)
                t->gm_wn = u;
            else if (strcmp(key, "gm_min_n") == 0 && u >= 2 && u <= 4096)
                t->gm_min_n = u;
            else if (strcmp(key, "fp16") == 0)
                t->fp16 = u != 0;
            else if (strcmp(key, "subgroups") == 0)
                t->subgroups = u != 0;
            else if (strcmp(key, "auto_select") == 0)
                t->auto_select = u != 0;
            else if (strcmp(key, "host_cpu") == 0)
                t->host_cpu = u != 0;
            else if (strcmp(key, "use_host_ptr") == 0)
                t->use_host_ptr = u != 0;
            else if (strcmp(key, "max_alloc_kb") == 0)
                t->max_alloc_kb = u;
            else if (strcmp(key, "clblast") == 0)
                t->clblast = u != 0;
            else if (strcmp(key, "clblast_min_n") == 0 && u >= 1)
                t->clblast_min_n = u;
            else if (strcmp(key, "selftest_exp") == 0 && u <= 40)
                t->selftest_exp = u;
        }
    }
    return p ? any_match_key && all_match : true;
}

/* The tuning for probe p: IDEFICS_OPENCL_TUNING=path if set, else the first
 * embedded gpu/NAME.ini whose [match] fits, else gpu/default.ini. */
static void tuning_for(const idf_alloc *al, const idf_ocl_probe *p, idf_ocl_tuning *t) {
    tuning_defaults(t);
    const char *over = getenv("IDEFICS_OPENCL_TUNING");
    if (over && over[0]) {
        size_t len;
        char *txt = read_text(al, over, &len);
        if (txt) {
            ini_apply(txt, len, NULL, t);
            snprintf(t->file, sizeof t->file, "%.63s", over);
            idf_free(al, txt);
            return;
        }
    }
    const idf_embedded_file *pick = NULL;
    for (unsigned i = 0; i < idf_embedded_files_count && !pick; i++) {
        const idf_embedded_file *f = &idf_embedded_files[i];
        if (strncmp(f->name, "gpu/", 4) == 0 && f->bytes && ini_apply((const char *)f->bytes, f->len, p, NULL))
            pick = f;
    }
    if (!pick)
        pick = emb_find("gpu/default.ini");
    if (pick && pick->bytes) {
        ini_apply((const char *)pick->bytes, pick->len, NULL, t);
        snprintf(t->file, sizeof t->file, "%s", pick->name);
    }
}

/* ================================================================== probe */

static void dev_str(const idf_cl_api *cl, cl_device_id d, cl_device_info what, char *buf, size_t size) {
    size_t got = 0;
    if (cl->clGetDeviceInfo(d, what, size - 1, buf, &got) != CL_SUCCESS)
        got = 0;
    buf[got < size ? got : size - 1] = '\0';
    char *t = trim(buf);
    memmove(buf, t, strlen(t) + 1);
}

static uint64_t dev_u64(const idf_cl_api *cl, cl_device_id d, cl_device_info what) {
    cl_ulong v = 0;
    return cl->clGetDeviceInfo(d, what, sizeof v, &v, NULL) == CL_SUCCESS ? v : 0;
}
static unsigned dev_uint(const idf_cl_api *cl, cl_device_id d, cl_device_info what) {
    cl_uint v = 0;
    return cl->clGetDeviceInfo(d, what, sizeof v, &v, NULL) == CL_SUCCESS ? v : 0;
}

/* IDEFICS_OPENCL_CLAMP="local=16384,wg=256,alloc=268435456,nozerocopy" (test
 * only; sizes in bytes, K/M/G suffixes allowed): lower what the device
 * reports to the limits of the small GPUs we target, so a CPU device in CI
 * exercises the size rules the kernels' header comments give. Values only
 * ever lower a limit; an item that does not parse is named in p->clamp. */
static void apply_clamp(idf_ocl_probe *p) {
    const char *env = getenv("IDEFICS_OPENCL_CLAMP");
    p->clamp[0] = '\0';
    if (!env || !env[0])
        return;
    char buf[160];
    snprintf(buf, sizeof buf, "%s", env);
    size_t o = 0;
    for (char *save = NULL, *it = strtok_r(buf, ",", &save); it; it = strtok_r(NULL, ",", &save)) {
        it = trim(it);
        char *eq = strchr(it, '=');
        unsigned long long v = 0;
        bool ok = false;
        if (eq) {
            char *end;
            v = strtoull(eq + 1, &end, 10);
            const unsigned long long mul = *end == 'K' || *end == 'k'   ? 1ull << 10
                                           : *end == 'M' || *end == 'm' ? 1ull << 20
                                           : *end == 'G' || *end == 'g' ? 1ull << 30
                                                                        : 1;
            if (mul > 1)
                end++;
            ok = end != eq + 1 && !*end && v > 0 && v <= (1ull << 40);
            v *= mul;
            *eq = '\0';
        }
        const char *what = NULL;
        if (ok && strcmp(it, "local") == 0) {
            p->local_mem = v < p->local_mem ? v : p->local_mem;
            what = "local";
        } else if (ok && strcmp(it, "wg") == 0) {
            p->max_wg = v < p->max_wg ? (unsigned)v : p->max_wg;
            what = "wg";
        } else if (ok && strcmp(it, "alloc") == 0) {
            p->max_alloc = v < p->max_alloc ? v : p->max_alloc;
            what = "alloc";
        } else if (!eq && strcmp(it, "nozerocopy") == 0) {
            p->no_zero_copy = true;
            p->unified_memory = false;
            what = "nozerocopy";
        }
        const char *sep = o ? ", " : "";
        const int w = !what ? snprintf(p->clamp + o, sizeof p->clamp - o, "%sbad item \"%s\"", sep, it)
                      : eq  ? snprintf(p->clamp + o, sizeof p->clamp - o, "%s%s %llu", sep, what, v)
                            : snprintf(p->clamp + o, sizeof p->clamp - o, "%s%s", sep, what);
        if (w > 0 && (size_t)w < sizeof p->clamp - o)
            o += (size_t)w;
    }
}

static void probe_device(const idf_cl_api *cl, cl_platform_id pl, cl_device_id d, idf_ocl_probe *p) {
    memset(p, 0, sizeof *p);
    size_t got = 0;
    if (cl->clGetPlatformInfo(pl, CL_PLATFORM_NAME, sizeof p->platform - 1, p->platform, &got) != CL_SUCCESS)
        got = 0;
    p->platform[got < sizeof p->platform ? got : sizeof p->platform - 1] = '\0';
    dev_str(cl, d, CL_DEVICE_NAME, p->device, sizeof p->device);
    dev_str(cl, d, CL_DEVICE_VENDOR, p->vendor, sizeof p->vendor);
    dev_str(cl, d, CL_DRIVER_VERSION, p->driver, sizeof p->driver);
    dev_str(cl, d, CL_DEVICE_VERSION, p->version, sizeof p->version);
    dev_str(cl, d, CL_DEVICE_OPENCL_C_VERSION, p->c_version, sizeof p->c_version);
    cl_device_type type = 0;
    if (cl->clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL) == CL_SUCCESS)
        p->type = type;
    /* Extensions can be long (PoCL ~1 KB, Adreno ~2 KB): read into a sized buffer. */
    char ext[8192];
    dev_str(cl, d, CL_DEVICE_EXTENSIONS, ext, sizeof ext);
    p->fp16 = strstr(ext, "cl_khr_fp16") != NULL;
    const char *sg[] = {"cl_khr_subgroups", "cl_intel_subgroups", "cl_qcom_reqd_sub_group_size"};
    for (size_t i = 0; i < 3 && !p->subgroups; i++)
        if (strstr(ext, sg[i])) {
            p->subgroups = true;
            snprintf(p->subgroup_ext, sizeof p->subgroup_ext, "%s", sg[i]);
        }
    cl_bool b = CL_FALSE;
    p->images = cl->clGetDeviceInfo(d, CL_DEVICE_IMAGE_SUPPORT, sizeof b, &b, NULL) == CL_SUCCESS && b;
    b = CL_FALSE;
    /* Deprecated in 2.0 but still answered by every driver we know; failure = not unified. */
    p->unified_memory = cl->clGetDeviceInfo(d, CL_DEVICE_HOST_UNIFIED_MEMORY, sizeof b, &b, NULL) == CL_SUCCESS && b;
    p->max_alloc = dev_u64(cl, d, CL_DEVICE_MAX_MEM_ALLOC_SIZE);
    p->global_mem = dev_u64(cl, d, CL_DEVICE_GLOBAL_MEM_SIZE);
    p->local_mem = dev_u64(cl, d, CL_DEVICE_LOCAL_MEM_SIZE);
    p->compute_units = dev_uint(cl, d, CL_DEVICE_MAX_COMPUTE_UNITS);
    p->base_align = dev_uint(cl, d, CL_DEVICE_MEM_BASE_ADDR_ALIGN) / 8;
    size_t wg = 0;
    if (cl->clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL) == CL_SUCCESS)
        p->max_wg = wg > 65536 ? 65536 : (unsigned)wg;
    size_t ib = 0;
    if (p->images && cl->clGetDeviceInfo(d, CL_DEVICE_IMAGE_MAX_BUFFER_SIZE, sizeof ib, &ib, NULL) == CL_SUCCESS)
        p->image1d_buffer_max = ib;
    apply_clamp(p);
}

/* gemm_tiled.cl's size rule: its block of (gm_tm / gm_wm) x (gm_tn / gm_wn)
 * work-items within mx, and its float tiles, (gm_tm + gm_tn) * 33 + 16
 * values, within local bytes; gm_tn halves first, then gm_tm. Where even the
 * smallest block does not fit, the tiled GEMM is off (gm_min_n = UINT_MAX). */
static void gemm_shrink(idf_ocl_tuning *t, unsigned mx, uint64_t local) {
#define GM_FITS()                                                                                                      \
    ((t->gm_tm / t->gm_wm) * (t->gm_tn / t->gm_wn) <= mx &&                                                            \
     ((uint64_t)(t->gm_tm + t->gm_tn) * (IDFX_QK + 1) + 16) * sizeof(float) <= local)
    while (!GM_FITS() && (t->gm_tm > t->gm_wm || t->gm_tn > t->gm_wn)) {
        if (t->gm_tn > t->gm_wn)
            t->gm_tn /= 2;
        else
            t->gm_tm /= 2;
    }
    if (!GM_FITS())
        t->gm_min_n = UINT_MAX;
#undef GM_FITS
}

/* Clamp work-group sizes to what the device allows (a power of two at most
 * max_wg), whatever the tuning file says. */
static void tuning_clamp(idf_ocl_tuning *t, idf_ocl_probe *p) {
    if (t->max_alloc_kb && t->max_alloc_kb * 1024 < p->max_alloc)
        p->max_alloc = t->max_alloc_kb * 1024;
    if (p->no_zero_copy)
        t->use_host_ptr = false;
    unsigned mx = 1;
    while (mx * 2 <= (p->max_wg ? p->max_wg : 1))
        mx *= 2;
    unsigned *pw[] = {&t->wg_norm, &t->wg_attn, &t->wg_elem};
    for (size_t i = 0; i < 3; i++)
        if (*pw[i] > mx)
            *pw[i] = mx;
    while (t->f_lanes * t->f_rows > mx && t->f_rows > 1)
        t->f_rows /= 2;
    while (t->f_lanes > mx)
        t->f_lanes /= 2;
    /* tiled GEMM: the register block divides the tile, and the group fits */
    if (t->gm_wm > t->gm_tm)
        t->gm_wm = t->gm_tm;
    if (t->gm_wn > t->gm_tn)
        t->gm_wn = t->gm_tn;
    gemm_shrink(t, mx, p->local_mem);
    /* Q4/Q8 groups are tile_rows * mm_lanes; lanes shrink per call when R is large (ops file). */
    if (t->mm_lanes > mx)
        t->mm_lanes = mx;
}

const char *idf_ocl_auto_skip_reason(const idf_ocl_probe *p, const idf_ocl_tuning *t) {
    if (p->type & CL_DEVICE_TYPE_CPU)
        return "a CPU-type device (CL_DEVICE_TYPE_CPU): the native CPU backend is faster on the same cores";
    if (t->host_cpu)
        return "runs on the host CPU cores (its tuning file says host_cpu = 1): the native CPU backend is faster";
    if (!(p->type & (CL_DEVICE_TYPE_GPU | CL_DEVICE_TYPE_ACCELERATOR)))
        return "neither a GPU nor an accelerator";
    if (!t->auto_select)
        return "its tuning file says auto_select = 0";
    return NULL;
}

/* ======================================================= device enumeration */

typedef struct dev_ref {
    cl_platform_id pl;
    cl_device_id dev;
} dev_ref;

/* All devices of all platforms, flat, in platform then device order (the
 * index IDEFICS_DEVICE=N means). Caller frees *out. */
static idefics_status enumerate(const idf_cl_api *cl, const idf_alloc *al, dev_ref **out, unsigned *n_out,
                                idf_err *err) {
    *out = NULL;
    *n_out = 0;
    cl_uint np = 0;
    const cl_int e = cl->clGetPlatformIDs(0, NULL, &np);
    if (e != CL_SUCCESS || np == 0) /* -1001 = CL_PLATFORM_NOT_FOUND_KHR: an ICD loader with no drivers */
        return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "%s: no OpenCL platform (clGetPlatformIDs: %d)", cl->lib_path,
                        (int)e);
    if (np > 64)
        np = 64;
    cl_platform_id pls[64];
    if (cl->clGetPlatformIDs(np, pls, NULL) != CL_SUCCESS)
        return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "clGetPlatformIDs failed");
    dev_ref *list = NULL;
    unsigned n = 0, cap = 0;
    for (cl_uint i = 0; i < np; i++) {
        cl_uint nd = 0;
        if (cl->clGetDeviceIDs(pls[i], CL_DEVICE_TYPE_ALL, 0, NULL, &nd) != CL_SUCCESS || nd == 0)
            continue;
        if (nd > 64)
            nd = 64;
        cl_device_id ds[64];
        if (cl->clGetDeviceIDs(pls[i], CL_DEVICE_TYPE_ALL, nd, ds, NULL) != CL_SUCCESS)
            continue;
        for (cl_uint j = 0; j < nd; j++) {
            if (n == cap) {
                cap = cap ? cap * 2 : 8;
                dev_ref *nl = idf_realloc(al, list, cap * sizeof *nl);
                if (!nl) {
                    idf_free(al, list);
                    return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory listing OpenCL devices");
                }
                list = nl;
            }
            list[n++] = (dev_ref){pls[i], ds[j]};
        }
    }
    if (!n) {
        idf_free(al, list);
        return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "%s: %u OpenCL platform(s) but no device", cl->lib_path,
                        (unsigned)np);
    }
    *out = list;
    *n_out = n;
    return IDEFICS_OK;
}

idefics_status idf_ocl_list_devices(const idf_alloc *alloc, idf_ocl_list_fn fn, void *ud, idf_err *err) {
    const idf_alloc al = alloc ? *alloc : (idf_alloc){0};
    idf_cl_api cl;
    char why[256];
    if (!idf_cl_load(&cl, why, sizeof why))
        return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "%s", why);
    dev_ref *list;
    unsigned n;
    idefics_status st = enumerate(&cl, &al, &list, &n, err);
    if (st == IDEFICS_OK) {
        for (unsigned i = 0; i < n; i++) {
            idf_ocl_probe p;
            idf_ocl_tuning t;
            probe_device(&cl, list[i].pl, list[i].dev, &p);
            tuning_for(&al, &p, &t);
            tuning_clamp(&t, &p);
            fn(ud, (int)i, &p, &t);
        }
        idf_free(&al, list);
    }
    idf_cl_unload(&cl);
    return st;
}

/* =========================================================== program build */

static void put64(uint8_t *p, uint64_t v) {
    idf_wr64(p, v);
}

static bool cache_load(idf_ocl_device *dev, const char *path, uint64_t key, const char *opts) {
    size_t len = 0;
    char *b = read_text(&dev->alloc, path, &len);
    if (!b)
        return false;
    const uint8_t *u = (const uint8_t *)b;
    bool ok = len >= 32 && memcmp(u, "IDFCLBN1", 8) == 0 && idf_rd64(u + 8) == key;
    uint64_t n = ok ? idf_rd64(u + 16) : 0;
    ok = ok && n > 0 && n <= len - 32 && 32 + n == len && XXH64(u + 24, (size_t)n, 0) == idf_rd64(u + 24 + n);
    if (ok) {
        const unsigned char *bin = u + 24;
        const size_t bl = (size_t)n;
        cl_int bst = CL_SUCCESS, e = CL_SUCCESS;
        cl_program p = dev->cl.clCreateProgramWithBinary(dev->ctx, 1, &dev->device, &bl, &bin, &bst, &e);
        ok = p && e == CL_SUCCESS && bst == CL_SUCCESS &&
             dev->cl.clBuildProgram(p, 1, &dev->device, opts, NULL, NULL) == CL_SUCCESS;
        if (ok)
            dev->prog = p;
        else if (p)
            dev->cl.clReleaseProgram(p);
    }
    idf_free(&dev->alloc, b);
    return ok;
}

static void cache_store(idf_ocl_device *dev, const char *path, uint64_t key) {
    size_t bl = 0;
    if (dev->cl.clGetProgramInfo(dev->prog, CL_PROGRAM_BINARY_SIZES, sizeof bl, &bl, NULL) != CL_SUCCESS || !bl ||
        bl > (1u << 30))
        return;
    uint8_t *buf = idf_malloc(&dev->alloc, bl + 32);
    if (!buf)
        return;
    unsigned char *bin = buf + 24;
    if (dev->cl.clGetProgramInfo(dev->prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) == CL_SUCCESS) {
        memcpy(buf, "IDFCLBN1", 8);
        put64(buf + 8, key);
        put64(buf + 16, bl);
        put64(buf + 24 + bl, XXH64(bin, bl, 0));
        idf_cl_cache_write(path, buf, bl + 32); /* a cache that cannot be written only costs a rebuild */
    }
    idf_free(&dev->alloc, buf);
}

static idefics_status build_program(idf_ocl_device *dev, idf_err *err) {
    /* Source = the files concatenated, each after a #line so compiler messages name it. */
    size_t total = 0;
    const char *texts[sizeof program_files / sizeof program_files[0]];
    size_t lens[sizeof program_files / sizeof program_files[0]];
    char *owned[sizeof program_files / sizeof program_files[0]] = {0};
    idefics_status st = IDEFICS_OK;
    const size_t nf = sizeof program_files / sizeof program_files[0];
    for (size_t i = 0; i < nf && st == IDEFICS_OK; i++) {
        const idf_embedded_file *f = emb_find(program_files[i]);
        if (!f) {
            st = idf_errf(err, IDEFICS_ERR_INTERNAL, "OpenCL source %s is not in the build", program_files[i]);
        } else if (f->bytes) {
            texts[i] = (const char *)f->bytes;
            lens[i] = f->len;
        } else if (!(owned[i] = read_text(&dev->alloc, f->path, &lens[i]))) {
            st = idf_errf(err, IDEFICS_ERR_NO_DEVICE, "cannot read OpenCL source %s (built with embed_kernels=false)",
                          f->path);
        } else {
            texts[i] = owned[i];
        }
        if (st == IDEFICS_OK)
            total += lens[i] + 64;
    }
    char *src = st == IDEFICS_OK ? idf_malloc(&dev->alloc, total + 1) : NULL;
    if (st == IDEFICS_OK && !src)
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the OpenCL source");
    if (st == IDEFICS_OK) {
        size_t o = 0;
        for (size_t i = 0; i < nf; i++) {
            o += (size_t)snprintf(src + o, total + 1 - o, "#line 1 \"%s\"\n", program_files[i]);
            memcpy(src + o, texts[i], lens[i]);
            o += lens[i];
            src[o++] = '\n';
        }
        src[o] = '\0';
    }
    for (size_t i = 0; i < nf; i++)
        idf_free(&dev->alloc, owned[i]);
    if (st)
        return st;

    char opts[512];
    snprintf(opts, sizeof opts,
             "-cl-std=CL1.2 -DMM_NB=%u -DGM_TM=%u -DGM_TN=%u -DGM_WM=%u -DGM_WN=%u -DIDFX_TYPE_F32=%d "
             "-DIDFX_TYPE_F16=%d -DIDFX_TYPE_Q4=%d -DIDFX_TYPE_Q8=%d%s%s%s",
             dev->tune.mm_nb, dev->tune.gm_tm, dev->tune.gm_tn, dev->tune.gm_wm, dev->tune.gm_wn, IDFX_TYPE_F32,
             IDFX_TYPE_F16, IDFX_TYPE_Q4, IDFX_TYPE_Q8, dev->probe.fp16 ? " -DIDF_USE_FP16=1" : "",
             dev->fp16_math ? " -DIDF_CT_HALF=1" : "", dev->sg_math ? " -DIDF_SUBGROUPS=1" : "");
    /* the key: everything that changes the binary */
    char head[1024];
    const int hl = snprintf(head, sizeof head, "v%u|%s|%s|%s|%s|%s|", CACHE_FORMAT_VERSION, dev->probe.platform,
                            dev->probe.device, dev->probe.driver, dev->probe.version, opts);
    XXH64_state_t *xs = XXH64_createState();
    uint64_t key = 0;
    if (xs) {
        XXH64_reset(xs, 0);
        XXH64_update(xs, head, (size_t)(hl > 0 && hl < (int)sizeof head ? hl : 0));
        XXH64_update(xs, src, strlen(src));
        key = XXH64_digest(xs);
        XXH64_freeState(xs);
    }
    char dir[400], path[512];
    const bool have_cache = key && idf_cl_cache_dir(dir, sizeof dir);
    if (have_cache)
        snprintf(path, sizeof path, "%s/idefics-cl-%016llx.bin", dir, (unsigned long long)key);
    const double t0 = idf_time_ms();
    if (have_cache && cache_load(dev, path, key, opts)) {
        dev->from_cache = true;
    } else {
        const char *s = src;
        cl_int e = CL_SUCCESS;
        dev->prog = dev->cl.clCreateProgramWithSource(dev->ctx, 1, &s, NULL, &e);
        if (!dev->prog || e != CL_SUCCESS) {
            idf_free(&dev->alloc, src);
            return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "clCreateProgramWithSource failed (%s %d)", idf_cl_err_name(e), (int)e);
        }
        e = dev->cl.clBuildProgram(dev->prog, 1, &dev->device, opts, NULL, NULL);
        if (e != CL_SUCCESS) {
            char blog[400] = "";
            size_t got = 0;
            dev->cl.clGetProgramBuildInfo(dev->prog, dev->device, CL_PROGRAM_BUILD_LOG, sizeof blog - 1, blog, &got);
            blog[got < sizeof blog ? got : sizeof blog - 1] = '\0';
            for (char *c = blog; *c; c++)
                if (*c == '\n')
                    *c = ' ';
            idf_free(&dev->alloc, src);
            return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "the OpenCL program does not build on %s (%s %d): %.300s",
                            dev->probe.device, idf_cl_err_name(e), (int)e, blog);
        }
        if (have_cache)
            cache_store(dev, path, key);
    }
    dev->build_ms = idf_time_ms() - t0;
    idf_free(&dev->alloc, src);
    return IDEFICS_OK;
}

/* The program, built for the tuning's tiled-GEMM block; when the built
 * gemm_tiled kernel allows fewer work-items than that block
 * (CL_KERNEL_WORK_GROUP_SIZE below the device's limit: Rusticl 22.3 answers
 * 32 for every kernel on llvmpipe), rebuilt once with a block that fits
 * (gemm_tiled.cl's size rule). */
static idefics_status build_fit(idf_ocl_device *dev, idf_err *err) {
    IDF_FORWARD(build_program(dev, err));
    if (dev->tune.gm_min_n == UINT_MAX)
        return IDEFICS_OK;
    cl_int e = CL_SUCCESS;
    cl_kernel k = dev->cl.clCreateKernel(dev->prog, "gemm_tiled", &e);
    size_t mx = 0;
    if (k && dev->cl.clGetKernelWorkGroupInfo(k, dev->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof mx, &mx, NULL) !=
                 CL_SUCCESS)
        mx = 0;
    if (k)
        dev->cl.clReleaseKernel(k);
    const unsigned block = (dev->tune.gm_tm / dev->tune.gm_wm) * (dev->tune.gm_tn / dev->tune.gm_wn);
    if (!mx || mx >= block)
        return IDEFICS_OK;
    const unsigned tm = dev->tune.gm_tm, tn = dev->tune.gm_tn;
    gemm_shrink(&dev->tune, (unsigned)mx, dev->probe.local_mem);
    idf_logf(&dev->log, IDEFICS_LOG_DEBUG, "opencl: gemm_tiled allows %zu work-items, not %u: block %ux%u -> %ux%u%s",
             mx, block, tm, tn, dev->tune.gm_tm, dev->tune.gm_tn, dev->tune.gm_min_n == UINT_MAX ? " (off)" : "");
    if (dev->tune.gm_min_n == UINT_MAX)
        return IDEFICS_OK; /* the kernel is never launched; the program stays */
    dev->cl.clReleaseProgram(dev->prog);
    dev->prog = NULL;
    return build_program(dev, err);
}

/* ============================================================== self-test */

static double nmse(const float *got, const float *want, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    if (!(num == num)) /* NaN */
        return INFINITY;
    return den > 0 ? num / den : num;
}

static float srand_f(uint64_t *s) {
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

/* A Q4 GEMV (decode shape, odd row count), an RMSNorm and an F16-KV causal
 * attention on this device against the reference backend. Drivers miscompile
 * kernels (wrong results, not errors), so a device is only used after its
 * answers are checked; a mismatch returns NO_DEVICE with what differed. */
static idefics_status self_test(idf_ocl_device *dev, idf_err *err) {
    const idf_alloc *al = &dev->alloc;
    idf_backend *cl = NULL, *ref = NULL;
    IDF_FORWARD(idf_backend_opencl_create(dev, al, &cl, err));
    idefics_status st = idf_backend_ref_create(1, al, &ref, err);
    if (st) {
        cl->free(cl);
        return st;
    }
    enum { M = 37, K = 256, N = 3, D = 300, NQ = 3, NKV = 20, H = 2, HD = 64 };
    uint64_t sd = 42;
    uint64_t qbytes = 0, unit;
    const uint64_t dims[2] = {M, K};
    idfx_tensor_nbytes(IDFX_TYPE_Q4, IDFX_LAYOUT_ROWTILE, 8, 2, dims, &qbytes, &unit);
    const size_t nfl = M * K + 2 * K + 4 * M + 4 * N * D + D + NQ * H * HD * 3 + 2 * NKV * H * HD;
    float *f = idf_calloc(al, nfl, sizeof(float));
    uint8_t *q = idf_malloc(al, (size_t)qbytes);
    uint16_t *kv = idf_malloc(al, 2 * NKV * H * HD * sizeof(uint16_t));
    const char *what = NULL;
    double e = 0;
    float *gx = NULL;
    if (!f || !q || !kv) {
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the OpenCL self-test");
        goto done;
    }
    float *wsrc = f, *x = wsrc + M * K, *y1 = x + 2 * K, *y2 = y1 + 2 * M, *nx = y2 + 2 * M, *n1 = nx + N * D,
          *n2 = n1 + N * D, *ng = n2 + 2 * N * D, *aq = ng + D, *o1 = aq + NQ * H * HD, *o2 = o1 + NQ * H * HD;
    for (size_t i = 0; i < (size_t)(M * K + 2 * K); i++)
        f[i] = srand_f(&sd);
    for (int i = 0; i < N * D; i++)
        nx[i] = 3.0f * srand_f(&sd);
    for (int i = 0; i < D; i++)
        ng[i] = 1.0f + 0.5f * srand_f(&sd);
    for (int i = 0; i < NQ * H * HD; i++)
        aq[i] = srand_f(&sd);
    for (int i = 0; i < 2 * NKV * H * HD; i++)
        kv[i] = idfx_fp32_to_fp16(srand_f(&sd));
    idfx_quantize_q4_ref(wsrc, M, K, 8, 0, q);
    const idf_weight w = {.name = "self-test", .data = q, .type = IDFX_TYPE_Q4, .layout = IDFX_LAYOUT_ROWTILE,
                          .tile_rows = 8, .rows = M, .cols = K};
    if ((st = cl->matmul(cl->ctx, &w, NULL, x, 1, y1, M)) || (st = ref->matmul(ref->ctx, &w, NULL, x, 1, y2, M))) {
        what = "q4 gemv";
        goto failed;
    }
    /* limits: fp32 device sums against double ones are far below them; a
     * tuning file may set its own (selftest_exp) */
    /* a half build (IDF_CT) rounds each product to 11 bits: 1e-4 still catches
     * a miscompiled kernel, whose error is of order 1 */
    const double lim_mm = dev->tune.selftest_exp ? pow(10.0, -(double)dev->tune.selftest_exp)
                          : dev->fp16_math      ? 1e-4
                                                : 1e-8;
    const double lim_norm = dev->tune.selftest_exp ? lim_mm : 1e-10;
    if ((e = nmse(y1, y2, M)) > lim_mm) {
        what = "q4 gemv";
        goto mismatch;
    }
    /* the tiled GEMM (prefill shapes): gm_min_n + 3 input rows, so the last
     * row and column blocks are partial */
    const int64_t GN = dev->tune.gm_min_n <= 4096 ? (int64_t)dev->tune.gm_min_n + 3 : 19;
    gx = idf_malloc(al, (size_t)GN * (K + 2 * M) * sizeof(float));
    if (!gx) {
        st = idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the OpenCL self-test");
        goto done;
    }
    for (int64_t i = 0; i < GN * K; i++)
        gx[i] = srand_f(&sd);
    float *gy1 = gx + GN * K, *gy2 = gy1 + GN * M;
    if ((st = cl->matmul(cl->ctx, &w, NULL, gx, GN, gy1, M)) || (st = ref->matmul(ref->ctx, &w, NULL, gx, GN, gy2, M))) {
        what = "q4 tiled gemm";
        goto failed;
    }
    if ((e = nmse(gy1, gy2, (size_t)(GN * M))) > lim_mm) {
        what = "q4 tiled gemm";
        goto mismatch;
    }
    if ((st = cl->rmsnorm(cl->ctx, nx, ng, 1e-6f, N, D, n1)) || (st = ref->rmsnorm(ref->ctx, nx, ng, 1e-6f, N, D, n2))) {
        what = "rmsnorm";
        goto failed;
    }
    if ((e = nmse(n1, n2, N * D)) > lim_norm) {
        what = "rmsnorm";
        goto mismatch;
    }
    idf_attn a = {.n_q = NQ, .n_kv = NKV, .n_heads = H, .head_dim = HD, .q = aq, .q_stride = H * HD, .k = kv,
                  .v = kv + NKV * H * HD, .kv_stride = H * HD, .kv_type = IDEFICS_KV_F16, .scale = 0.125f,
                  .causal = true, .q_pos0 = NKV - NQ, .out = o1, .out_stride = H * HD};
    if ((st = cl->attention(cl->ctx, &a))) {
        what = "attention";
        goto failed;
    }
    a.out = o2;
    if ((st = ref->attention(ref->ctx, &a))) {
        what = "attention";
        goto failed;
    }
    if ((e = nmse(o1, o2, NQ * H * HD)) > lim_mm) {
        what = "attention (f16 kv, causal)";
        goto mismatch;
    }
    goto done;
failed: {
    const char *detail = cl->last_error ? cl->last_error(cl->ctx) : "";
    st = idf_errf(err, IDEFICS_ERR_NO_DEVICE, "self-test %s failed on %s: %s%s%.300s", what, dev->probe.device,
                  idefics_status_str(st), detail[0] ? ": " : "", detail);
}
    goto done;
mismatch:
    st = idf_errf(err, IDEFICS_ERR_NO_DEVICE, "self-test %s on %s differs from the reference (nmse %.3g)", what,
                  dev->probe.device, e);
done:
    idf_free(al, gx);
    idf_free(al, f);
    idf_free(al, q);
    idf_free(al, kv);
    cl->free(cl);
    ref->free(ref);
    return st;
}

/* ============================================================ device open */

const idf_ocl_probe *idf_ocl_device_probe(const idf_ocl_device *dev) {
    return dev ? &dev->probe : NULL;
}
const idf_ocl_tuning *idf_ocl_device_tuning(const idf_ocl_device *dev) {
    return dev ? &dev->tune : NULL;
}

void idf_ocl_device_free(idf_ocl_device *dev) {
    if (!dev)
        return;
    const idf_alloc al = dev->alloc;
    for (size_t i = 0; i < dev->n_wbufs; i++) {
        for (uint32_t j = 0; j < dev->wbufs[i]->n; j++)
            if (dev->wbufs[i]->mem[j])
                dev->cl.clReleaseMemObject(dev->wbufs[i]->mem[j]);
        idf_free(&al, dev->wbufs[i]);
    }
    idf_free(&al, dev->wbufs);
    for (size_t i = 0; i < dev->n_consts; i++)
        dev->cl.clReleaseMemObject(dev->consts[i].mem);
    idf_free(&al, dev->consts);
    idf_dlclose(dev->clblast_lib);
    if (dev->prog)
        dev->cl.clReleaseProgram(dev->prog);
    if (dev->ctx)
        dev->cl.clReleaseContext(dev->ctx);
    idf_cl_unload(&dev->cl);
    idf_free(&al, dev);
}

static bool all_digits(const char *s) {
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

idefics_status idf_ocl_device_open(const char *want, bool auto_mode, const idf_alloc *alloc, const idf_log *log,
                                   idf_ocl_device **out, idf_err *err) {
    *out = NULL;
    const idf_alloc al = alloc ? *alloc : (idf_alloc){0};
    idf_ocl_device *dev = idf_calloc(&al, 1, sizeof *dev);
    if (!dev)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for the OpenCL device");
    dev->alloc = al;
    if (log)
        dev->log = *log;
    char why[256];
    if (!idf_cl_load(&dev->cl, why, sizeof why)) {
        idf_free(&al, dev);
        return idf_errf(err, IDEFICS_ERR_NO_DEVICE, "%s", why);
    }
    if (!want || !want[0])
        want = getenv("IDEFICS_DEVICE");
    if (want && !want[0])
        want = NULL;

    dev_ref *list = NULL;
    unsigned n = 0;
    idefics_status st = enumerate(&dev->cl, &al, &list, &n, err);
    int chosen = -1;
    if (st == IDEFICS_OK) {
        /* named: index, or a substring of the device name, platform, vendor or
         * version ("pocl", "adreno", "mali"); else the first GPU, then any other
         * device AUTO may use (explicit OPENCL: any device at all) */
        for (int pass = 0; pass < 2 && chosen < 0; pass++)
            for (unsigned i = 0; i < n && chosen < 0; i++) {
                probe_device(&dev->cl, list[i].pl, list[i].dev, &dev->probe);
                tuning_for(&al, &dev->probe, &dev->tune);
                if (want) {
                    if (all_digits(want) ? strtoul(want, NULL, 10) == i
                                         : ci_contains(dev->probe.device, want) || ci_contains(dev->probe.platform, want) ||
                                               ci_contains(dev->probe.vendor, want) || ci_contains(dev->probe.version, want))
                        chosen = (int)i;
                } else if (pass == 0 ? (dev->probe.type & CL_DEVICE_TYPE_GPU) &&
                                           !idf_ocl_auto_skip_reason(&dev->probe, &dev->tune)
                                     : !auto_mode || !idf_ocl_auto_skip_reason(&dev->probe, &dev->tune)) {
                    chosen = (int)i;
                }
            }
        if (chosen < 0)
            st = want ? idf_errf(err, IDEFICS_ERR_NO_DEVICE, "no OpenCL device matches \"%s\" (%u device(s))", want, n)
                      : idf_errf(err, IDEFICS_ERR_NO_DEVICE,
                                 "no OpenCL device qualifies for AUTO (%u device(s); AUTO takes GPU and accelerator "
                                 "devices only: a CPU-type one such as PoCL or llvmpipe is used when named, "
                                 "IDEFICS_DEVICE or params.device; `idefics devices` says why each is skipped)",
                                 n);
    }
    if (st == IDEFICS_OK) {
        dev->platform = list[chosen].pl;
        dev->device = list[chosen].dev;
        probe_device(&dev->cl, dev->platform, dev->device, &dev->probe);
        tuning_for(&al, &dev->probe, &dev->tune);
        tuning_clamp(&dev->tune, &dev->probe);
        cl_int e = CL_SUCCESS;
        const cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)dev->platform, 0};
        dev->ctx = dev->cl.clCreateContext(props, 1, &dev->device, NULL, NULL, &e);
        if (!dev->ctx || e != CL_SUCCESS)
            st = idf_errf(err, IDEFICS_ERR_NO_DEVICE, "clCreateContext on %s failed (%s %d)", dev->probe.device, idf_cl_err_name(e), (int)e);
    }
    idf_free(&al, list);
    if (st == IDEFICS_OK && dev->probe.max_wg < 16)
        st = idf_errf(err, IDEFICS_ERR_NO_DEVICE, "%s allows work-groups of only %u work-items", dev->probe.device,
                      dev->probe.max_wg);
    /* half arithmetic and subgroup reductions only where the tuning asks for
     * them and the device has them; such a build that fails to build or fails
     * its self-test is replaced by the plain one (float, local memory) */
    dev->fp16_math = st == IDEFICS_OK && dev->tune.fp16 && dev->probe.fp16;
    dev->sg_math = st == IDEFICS_OK && dev->tune.subgroups && dev->probe.subgroups &&
                   strcmp(dev->probe.subgroup_ext, "cl_qcom_reqd_sub_group_size") != 0; /* no reductions in that one */
    const bool variant = dev->fp16_math || dev->sg_math;
    if (st == IDEFICS_OK)
        st = build_fit(dev, err);
    if (st == IDEFICS_OK && variant)
        st = self_test(dev, err);
    if (st != IDEFICS_OK && variant && dev->ctx) {
        snprintf(dev->fp16_note, sizeof dev->fp16_note, "%s%sbuild dropped: %.140s", dev->fp16_math ? "fp16 " : "",
                 dev->sg_math ? "subgroup " : "", err ? err->msg : "self-test");
        if (dev->prog)
            dev->cl.clReleaseProgram(dev->prog);
        dev->prog = NULL;
        dev->fp16_math = dev->sg_math = false;
        st = build_fit(dev, err);
    }
    if (st == IDEFICS_OK && dev->tune.clblast) {
        /* optional: without the library the matmuls stay on our kernels */
        dev->clblast_lib = idf_dlopen("libclblast.so.1");
        if (!dev->clblast_lib)
            dev->clblast_lib = idf_dlopen("libclblast.so");
        dev->clblast_sgemm = (__typeof__(dev->clblast_sgemm))idf_dlsym(dev->clblast_lib, "CLBlastSgemm");
        idf_logf(&dev->log, IDEFICS_LOG_DEBUG, "opencl: CLBlast %s", dev->clblast_sgemm ? "loaded" : "not found");
    }
    if (st == IDEFICS_OK && !dev->fp16_math && !dev->sg_math)
        st = self_test(dev, err); /* the plain build (a variant was tested above) */
    if (st == IDEFICS_OK && dev->fp16_note[0])
        idf_logf(&dev->log, IDEFICS_LOG_INFO, "opencl: %s", dev->fp16_note);
    if (st == IDEFICS_OK && dev->probe.clamp[0]) /* tests: say which limits are not the driver's */
        idf_logf(&dev->log, IDEFICS_LOG_INFO, "opencl: limits clamped by IDEFICS_OPENCL_CLAMP: %s", dev->probe.clamp);
    if (st) {
        idf_ocl_device_free(dev);
        return st;
    }
    idf_logf(&dev->log, IDEFICS_LOG_DEBUG,
             "opencl: %s (%s, driver %s), %u CUs, fp16 %s (compute %s), subgroups %s, unified memory %s, max alloc %.0f MiB, "
             "tuning %s, program %s in %.0f ms",
             dev->probe.device, dev->probe.platform, dev->probe.driver, dev->probe.compute_units,
             dev->probe.fp16 ? "yes" : "no", dev->fp16_math ? "half" : "float", dev->probe.subgroups ? dev->probe.subgroup_ext : "no",
             dev->probe.unified_memory ? "yes" : "no", (double)dev->probe.max_alloc / 1048576.0, dev->tune.file,
             dev->from_cache ? "loaded from cache" : "built", dev->build_ms);
    *out = dev;
    return IDEFICS_OK;
}

/* ========================================================== model weights */

int64_t idf_ocl_rows_per_chunk(const idf_weight *w, uint64_t limit) {
    if (w->layout == IDFX_LAYOUT_ROWTILE) {
        const uint64_t qb = w->type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
        const uint64_t tile = (uint64_t)w->cols / IDFX_QK * w->tile_rows * (IDFX_SCALE_BYTES + qb);
        return tile ? (int64_t)(limit / tile) * (int64_t)w->tile_rows : 0;
    }
    const uint64_t row = (uint64_t)w->cols * (w->type == IDFX_TYPE_F32 ? 4 : 2);
    return row ? (int64_t)(limit / row) : 0;
}

/* Byte offset and size of rows [r0, r1) of w (r0 on a tile boundary). */
static void chunk_range(const idf_weight *w, int64_t r0, int64_t r1, uint64_t *off, uint64_t *len) {
    if (w->layout == IDFX_LAYOUT_ROWTILE) {
        const uint64_t qb = w->type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
        const uint64_t tile = (uint64_t)w->cols / IDFX_QK * w->tile_rows * (IDFX_SCALE_BYTES + qb);
        *off = (uint64_t)(r0 / w->tile_rows) * tile;
        *len = (uint64_t)((r1 - r0 + w->tile_rows - 1) / w->tile_rows) * tile;
    } else {
        const uint64_t row = (uint64_t)w->cols * (w->type == IDFX_TYPE_F32 ? 4 : 2);
        *off = (uint64_t)r0 * row;
        *len = (uint64_t)(r1 - r0) * row;
    }
}

static idefics_status bind_one(idf_ocl_device *dev, idf_weight *w, idf_err *err) {
    /* The kernels read ROWTILE; a GROUPTILE weight (a CPU-targeted file)
     * stays on the host, and supports_op sends its ops to the CPU. */
    if (!w->data || w->rows <= 0 || w->layout == IDFX_LAYOUT_GROUPTILE)
        return IDEFICS_OK;
    const uint64_t dims[2] = {(uint64_t)w->rows, (uint64_t)w->cols};
    uint64_t bytes, unit;
    if (!idfx_tensor_nbytes(w->type, w->layout, w->tile_rows, 2, dims, &bytes, &unit))
        return idf_errf(err, IDEFICS_ERR_CORRUPT, "weight %s has an invalid type/layout for OpenCL", w->name);
    /* Over the largest buffer: split along rows at tile boundaries. */
    const int64_t per = bytes > dev->probe.max_alloc ? idf_ocl_rows_per_chunk(w, dev->probe.max_alloc) : w->rows;
    if (per <= 0 || bytes > SIZE_MAX) { /* not even one tile fits: its ops stay on the CPU */
        dev->w_declined += bytes;
        return IDEFICS_OK;
    }
    const uint32_t n = (uint32_t)((w->rows + per - 1) / per);
    if (dev->n_wbufs == dev->cap_wbufs) {
        const size_t cap = dev->cap_wbufs ? 2 * dev->cap_wbufs : 256;
        idf_ocl_weight **nb = idf_realloc(&dev->alloc, dev->wbufs, cap * sizeof *nb);
        if (!nb)
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for OpenCL weight handles");
        dev->wbufs = nb;
        dev->cap_wbufs = cap;
    }
    idf_ocl_weight *ow = idf_calloc(&dev->alloc, 1, sizeof *ow + n * sizeof(cl_mem));
    if (!ow)
        return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for OpenCL weight handles");
    ow->rows_per = per;
    ow->n = n;
    dev->wbufs[dev->n_wbufs++] = ow; /* registered first, so a failure below is freed with the device */
    for (uint32_t c = 0; c < n; c++) {
        const int64_t r0 = (int64_t)c * per, r1 = r0 + per < w->rows ? r0 + per : w->rows;
        uint64_t off, len;
        chunk_range(w, r0, r1, &off, &len);
        const uint8_t *p = (const uint8_t *)w->data + off;
        const bool aligned = dev->probe.base_align == 0 || (uintptr_t)p % dev->probe.base_align == 0;
        const bool zero_copy = dev->tune.use_host_ptr && dev->probe.unified_memory && aligned;
        cl_int e = CL_SUCCESS;
        ow->mem[c] = dev->cl.clCreateBuffer(
            dev->ctx, CL_MEM_READ_ONLY | (zero_copy ? CL_MEM_USE_HOST_PTR : CL_MEM_COPY_HOST_PTR), (size_t)len,
            (void *)(uintptr_t)p, &e);
        if (!ow->mem[c] || e != CL_SUCCESS)
            return idf_errf(err,
                            e == CL_MEM_OBJECT_ALLOCATION_FAILURE || e == CL_OUT_OF_RESOURCES ? IDEFICS_ERR_OUT_OF_MEMORY
                                                                                               : IDEFICS_ERR_BACKEND,
                            "cannot make an OpenCL buffer of %.1f MiB for weight %s (%s %d)", (double)len / 1048576.0,
                            w->name, idf_cl_err_name(e), (int)e);
        if (zero_copy)
            dev->w_zero_copy += len;
        else
            dev->w_uploaded += len;
    }
    if (n > 1)
        dev->w_split++;
    w->backend_data = ow;
    return IDEFICS_OK;
}

/* fn on every matrix weight of m (the same list the forward pass multiplies by). */
typedef idefics_status (*weight_fn)(idf_ocl_device *dev, idf_weight *w, idf_err *err);

static idefics_status each_weight(idf_ocl_device *dev, idefics_model *m, weight_fn fn, idf_err *err) {
    const idf_config *c = &m->cfg;
    idf_weights *w = m->w;
    IDF_FORWARD(fn(dev, &w->patch, err));
    for (uint32_t l = 0; w->vl && l < c->v_layers; l++) {
        idf_vision_layer *L = &w->vl[l];
        idf_weight *ws[] = {&L->q, &L->k, &L->v, &L->o, &L->fc1, &L->fc2};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            IDF_FORWARD(fn(dev, ws[i], err));
    }
    for (uint32_t b = 0; w->pb && c->use_resampler && b < c->p_depth; b++) {
        idf_perceiver_block *B = &w->pb[b];
        idf_weight *ws[] = {&B->q, &B->k, &B->v, &B->o, &B->fc, &B->c_proj};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            IDF_FORWARD(fn(dev, ws[i], err));
    }
    IDF_FORWARD(fn(dev, &w->embed, err));
    IDF_FORWARD(fn(dev, &w->lm_head, err));
    if (c->additional_vocab) {
        IDF_FORWARD(fn(dev, &w->embed_add, err));
        IDF_FORWARD(fn(dev, &w->lm_add, err));
    }
    for (uint32_t l = 0; w->dl && l < c->n_layers; l++) {
        idf_decoder_layer *L = &w->dl[l];
        idf_weight *ws[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            IDF_FORWARD(fn(dev, ws[i], err));
    }
    for (uint32_t j = 0; w->xb && j < c->n_cross; j++) {
        idf_cross_block *B = &w->xb[j];
        idf_weight *ws[] = {&B->q, &B->k, &B->v, &B->o, &B->gate, &B->up, &B->down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            IDF_FORWARD(fn(dev, ws[i], err));
    }
    return IDEFICS_OK;
}

/* ---- the model's fp32 vectors */

static idefics_status const_add(idf_ocl_device *dev, const float *p, uint64_t n, idf_err *err) {
    if (!p || !n || n * 4 > dev->probe.max_alloc || n * 4 > SIZE_MAX)
        return IDEFICS_OK;
    const size_t bytes = (size_t)n * 4;
    for (size_t i = 0; i < dev->n_consts; i++) /* shared vectors (a scalar gate broadcast) are bound once */
        if (dev->consts[i].p == (const uint8_t *)p && dev->consts[i].bytes >= bytes)
            return IDEFICS_OK;
    if (dev->n_consts == dev->cap_consts) {
        const size_t cap = dev->cap_consts ? 2 * dev->cap_consts : 256;
        idf_ocl_const *nc = idf_realloc(&dev->alloc, dev->consts, cap * sizeof *nc);
        if (!nc)
            return idf_errf(err, IDEFICS_ERR_OUT_OF_MEMORY, "out of memory for OpenCL vector handles");
        dev->consts = nc;
        dev->cap_consts = cap;
    }
    const bool aligned = dev->probe.base_align == 0 || (uintptr_t)p % dev->probe.base_align == 0;
    const bool zero_copy = dev->tune.use_host_ptr && dev->probe.unified_memory && aligned;
    cl_int e = CL_SUCCESS;
    cl_mem m = dev->cl.clCreateBuffer(dev->ctx, CL_MEM_READ_ONLY | (zero_copy ? CL_MEM_USE_HOST_PTR : CL_MEM_COPY_HOST_PTR),
                                      bytes, (void *)(uintptr_t)p, &e);
    if (!m || e != CL_SUCCESS)
        return idf_errf(err, IDEFICS_ERR_BACKEND, "cannot make an OpenCL buffer for a model vector (%s %d)", idf_cl_err_name(e), (int)e);
    dev->consts[dev->n_consts++] = (idf_ocl_const){(const uint8_t *)p, bytes, m};
    return IDEFICS_OK;
}

static int const_cmp(const void *a, const void *b) {
    const uintptr_t x = (uintptr_t)((const idf_ocl_const *)a)->p, y = (uintptr_t)((const idf_ocl_const *)b)->p;
    return x < y ? -1 : x > y;
}

/* Every fp32 vector an op reads from the model (model.h), so no op wraps one per call. */
static idefics_status bind_consts(idf_ocl_device *dev, idefics_model *m, idf_err *err) {
    const idf_config *c = &m->cfg;
    const idf_weights *w = m->w;
    const uint64_t D = c->v_dim, H = c->hidden, T = (uint64_t)c->v_n_patches + 1;
#define CADD(ptr, n) IDF_FORWARD(const_add(dev, (ptr), (n), err))
    CADD(w->class_emb, D);
    CADD(w->pos_emb, T * D);
    CADD(w->pre_ln_w, D);
    CADD(w->pre_ln_b, D);
    CADD(w->latents, (uint64_t)c->p_latents * D);
    CADD(w->p_ln_w, D);
    CADD(w->p_ln_b, D);
    CADD(w->norm, H);
    for (uint32_t l = 0; w->vl && l < c->v_layers; l++) {
        const idf_vision_layer *L = &w->vl[l];
        const float *vd[] = {L->q_b, L->k_b, L->v_b, L->o_b, L->fc2_b, L->ln1_w, L->ln1_b, L->ln2_w, L->ln2_b};
        for (size_t i = 0; i < sizeof vd / sizeof vd[0]; i++)
            CADD(vd[i], D);
        CADD(L->fc1_b, c->v_intermediate);
    }
    for (uint32_t b = 0; w->pb && c->use_resampler && b < c->p_depth; b++) {
        const idf_perceiver_block *B = &w->pb[b];
        const float *vd[] = {B->ctx_ln_w, B->ctx_ln_b, B->lat_ln_w, B->lat_ln_b, B->mlp_ln_w, B->mlp_ln_b};
        for (size_t i = 0; i < sizeof vd / sizeof vd[0]; i++)
            CADD(vd[i], D);
        const float *hd[] = {B->q_ln_w, B->q_ln_b, B->k_ln_w, B->k_ln_b};
        for (size_t i = 0; i < sizeof hd / sizeof hd[0]; i++)
            CADD(hd[i], c->p_head_dim);
    }
    for (uint32_t l = 0; w->dl && l < c->n_layers; l++) {
        CADD(w->dl[l].ln_in, H);
        CADD(w->dl[l].ln_post, H);
    }
    for (uint32_t j = 0; w->xb && j < c->n_cross; j++) {
        const idf_cross_block *B = &w->xb[j];
        const float *hv[] = {B->gate_attn, B->gate_dense, B->ln_in, B->ln_post};
        for (size_t i = 0; i < sizeof hv / sizeof hv[0]; i++)
            CADD(hv[i], H);
        CADD(B->q_norm, c->head_dim);
        CADD(B->k_norm, c->head_dim);
    }
#undef CADD
    if (dev->n_consts)
        qsort(dev->consts, dev->n_consts, sizeof *dev->consts, const_cmp);
    return IDEFICS_OK;
}

cl_mem idf_ocl_const_find(const idf_ocl_device *dev, const void *p, size_t bytes, size_t *off) {
    const uintptr_t a = (uintptr_t)p;
    size_t lo = 0, hi = dev->n_consts; /* the last entry starting at or before p */
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if ((uintptr_t)dev->consts[mid].p <= a)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (!lo)
        return NULL;
    const idf_ocl_const *k = &dev->consts[lo - 1];
    if (a - (uintptr_t)k->p > k->bytes || bytes > k->bytes - (a - (uintptr_t)k->p))
        return NULL;
    *off = (size_t)(a - (uintptr_t)k->p);
    return k->mem;
}

static idefics_status unbind_one(idf_ocl_device *dev, idf_weight *w, idf_err *err) {
    (void)dev;
    (void)err;
    w->backend_data = NULL;
    return IDEFICS_OK;
}

void idf_ocl_unbind_weights(idf_ocl_device *dev, idefics_model *m) {
    if (m && m->w)
        each_weight(dev, m, unbind_one, NULL);
}

idefics_status idf_ocl_bind_weights(idf_ocl_device *dev, idefics_model *m, idf_err *err) {
    IDF_FORWARD(each_weight(dev, m, bind_one, err));
    IDF_FORWARD(bind_consts(dev, m, err));
    idf_logf(&dev->log, IDEFICS_LOG_DEBUG,
             "opencl: weights %.1f MiB zero-copy, %.1f MiB uploaded (%u split over the %.0f MiB max alloc), %.1f MiB "
             "left to the CPU",
             (double)dev->w_zero_copy / 1048576.0, (double)dev->w_uploaded / 1048576.0, dev->w_split,
             (double)dev->probe.max_alloc / 1048576.0, (double)dev->w_declined / 1048576.0);
    return IDEFICS_OK;
}
