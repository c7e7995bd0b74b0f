/*
 * backend_opencl.h - the OpenCL backend's shared pieces (runtime-internal).
 *
 * Two levels, matching the model/session split of the public API:
 *   idf_ocl_device  made once per model at load (model.c pick_backend): the
 *                   loaded OpenCL library, the chosen device, its probe and
 *                   tuning, the context, the built program, and the device
 *                   buffers of the model's weights (idf_weight.backend_data).
 *                   Immutable after load, shared by every session.
 *   idf_backend     one per session (backend.c): its own command queue,
 *                   kernels (clSetKernelArg is not thread-safe) and scratch.
 * backend_opencl.c has the device, backend_opencl_ops.c the ops.
 */
#ifndef IDF_BACKEND_OPENCL_H
#define IDF_BACKEND_OPENCL_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "opencl_loader.h"

/* Per-device-family numbers from boards/gpu/NAME.ini (docs/OPENCL.md). */
typedef struct idf_ocl_tuning {
    unsigned mm_lanes, mm_nb;  /* Q4/Q8 matmul: lanes per row, input rows per work-item */
    unsigned f_lanes, f_rows;  /* F16/F32 matmul: lanes per row, rows per work-group */
    unsigned wg_norm, wg_attn, wg_elem;
    unsigned gm_tm, gm_tn, gm_wm, gm_wn; /* tiled GEMM: block of y per work-group, per work-item */
    unsigned gm_min_n;         /* input rows from which matmuls use the tiled GEMM */
    bool fp16;                 /* half compute type (IDF_CT) where the device has cl_khr_fp16 */
    bool subgroups;            /* subgroup reductions in the Q4/Q8 matmuls where the device has them */
    bool auto_select;          /* AUTO may pick the device (a family file may opt out) */
    bool host_cpu;             /* the device executes on the host CPU cores whatever type it reports (llvmpipe) */
    bool use_host_ptr;         /* wrap host memory with CL_MEM_USE_HOST_PTR */
    bool clblast;              /* F32-weight matmuls with n >= clblast_min_n through CLBlast, when it loads */
    unsigned selftest_exp;     /* 0, or N: the self-test allows NMSE 10^-N in every check (quirk; tests) */
    unsigned clblast_min_n;
    uint64_t max_alloc_kb;     /* 0, or a lower buffer-size limit than the driver reports (quirk; tests) */
    char file[64];             /* the tuning file used, e.g. "gpu/pocl-cpu.ini" */
} idf_ocl_tuning;

/* What the start-up probe found out about a device. */
typedef struct idf_ocl_probe {
    char platform[128], device[128], vendor[128], driver[64], version[128], c_version[64];
    cl_device_type type;
    bool fp16;                 /* cl_khr_fp16: half arithmetic */
    bool subgroups;            /* cl_khr_subgroups, cl_intel_subgroups or cl_qcom_reqd_sub_group_size */
    char subgroup_ext[40];     /* which of those */
    bool images;               /* CL_DEVICE_IMAGE_SUPPORT */
    bool unified_memory;       /* CL_DEVICE_HOST_UNIFIED_MEMORY */
    uint64_t max_alloc, global_mem, local_mem; /* max_alloc: the driver's value, lowered by tuning max_alloc_kb */
    unsigned compute_units, max_wg, base_align; /* base_align in bytes */
    uint64_t image1d_buffer_max; /* CL_DEVICE_IMAGE_MAX_BUFFER_SIZE, texels */
    /* IDEFICS_OPENCL_CLAMP (tests: a CPU device made to report a small GPU's
     * limits): max_alloc, local_mem and max_wg above are already lowered to
     * it; no_zero_copy turns host-pointer buffers off whatever the tuning says */
    bool no_zero_copy;
    char clamp[96]; /* what was clamped ("local 16384, wg 256, ..."), or "" */
} idf_ocl_probe;

typedef struct idf_ocl_device idf_ocl_device;

/* Open the device for a model: load the library, pick the device (want: index
 * or name substring; NULL/"" = env IDEFICS_DEVICE, else the first device that
 * qualifies), probe, build (or load the cached) program, run the self-test.
 * auto_mode: skip devices idf_ocl_auto_skip_reason names unless named.
 * Any failure returns IDEFICS_ERR_NO_DEVICE (or OUT_OF_MEMORY) with the reason. */
idefics_status idf_ocl_device_open(const char *want, bool auto_mode, const idf_alloc *alloc, const idf_log *log,
                                   idf_ocl_device **out, idf_err *err);
void idf_ocl_device_free(idf_ocl_device *dev);
const idf_ocl_probe *idf_ocl_device_probe(const idf_ocl_device *dev);
const idf_ocl_tuning *idf_ocl_device_tuning(const idf_ocl_device *dev);

/* A model weight on the device (idf_weight.backend_data): one buffer, or, for
 * a weight over CL_DEVICE_MAX_MEM_ALLOC_SIZE, n buffers of rows_per rows each
 * (whole ROWTILE tiles), which matmul runs one after another. */
typedef struct idf_ocl_weight {
    int64_t rows_per; /* rows per chunk (all but the last) */
    uint32_t n;
    cl_mem mem[];
} idf_ocl_weight;

/* Rows per chunk so that a chunk of w fits in limit bytes (whole tiles for
 * ROWTILE); 0 when not even one tile or row fits. */
int64_t idf_ocl_rows_per_chunk(const idf_weight *w, uint64_t limit);

/* Give every matrix weight of model m its device buffers (backend_data):
 * zero-copy on unified memory where the data is aligned, else uploaded once;
 * split along rows at tile boundaries when over the device's max alloc. */
struct idefics_model;
idefics_status idf_ocl_bind_weights(idf_ocl_device *dev, struct idefics_model *m, idf_err *err);
/* Forget them again (backend_data = NULL), before freeing the device when a
 * model falls back to the CPU after a failed bind. */
void idf_ocl_unbind_weights(idf_ocl_device *dev, struct idefics_model *m);

/* A session's backend on dev (which must outlive it). */
idefics_status idf_backend_opencl_create(idf_ocl_device *dev, const idf_alloc *alloc, idf_backend **out,
                                         idf_err *err);
/* A backend that owns its own device (op tests, benchmarks): explicit device
 * choice (env IDEFICS_DEVICE), n_threads unused. */
idefics_status idf_backend_opencl_create_standalone(int n_threads, const idf_alloc *alloc, idf_backend **out,
                                                    idf_err *err);

/* Every platform and device, probed, for `idefics devices`. fn gets the flat
 * index (what IDEFICS_DEVICE=N selects) and whether AUTO would consider it. */
typedef void (*idf_ocl_list_fn)(void *ud, int index, const idf_ocl_probe *p, const idf_ocl_tuning *t);

/* Why AUTO would not use a device, or NULL when it would. AUTO takes only
 * GPU and accelerator devices: never CL_DEVICE_TYPE_CPU (PoCL, Rusticl's
 * llvmpipe, Intel's CPU runtime), never one whose tuning file says host_cpu
 * = 1 (known to run on the host cores whatever type it reports), never one
 * whose tuning says auto_select = 0. The native CPU backend is faster on the
 * same cores; such a device is used only when named. */
const char *idf_ocl_auto_skip_reason(const idf_ocl_probe *p, const idf_ocl_tuning *t);
idefics_status idf_ocl_list_devices(const idf_alloc *alloc, idf_ocl_list_fn fn, void *ud, idf_err *err);

/* The symbolic name of an OpenCL error code ("CL_INVALID_WORK_GROUP_SIZE"),
 * or "unknown OpenCL error" for codes outside the 1.2-3.0 and common
 * extension sets. */
const char *idf_cl_err_name(cl_int e);

/* ---- inside the backend (backend_opencl.c <-> backend_opencl_ops.c) ---- */

struct idf_ocl_device {
    idf_alloc alloc;
    idf_log log;
    idf_cl_api cl;
    cl_platform_id platform;
    cl_device_id device;
    cl_context ctx;
    cl_program prog;
    idf_ocl_probe probe;
    idf_ocl_tuning tune;
    idf_ocl_weight **wbufs; /* made by idf_ocl_bind_weights, released with the device */
    size_t n_wbufs, cap_wbufs;
    /* The model's fp32 vectors (norm weights, biases, gates, embeddings), by
     * address: read-only device buffers made with the weights, so ops find them
     * instead of wrapping them per call (idf_ocl_const_find). */
    struct idf_ocl_const *consts; /* sorted by p */
    size_t n_consts, cap_consts;
    uint64_t w_zero_copy, w_uploaded, w_declined; /* bytes */
    unsigned w_split;                             /* weights stored as several buffers */
    double build_ms;
    bool from_cache;
    bool fp16_math; /* the program was built with IDF_CT = half (tuning fp16 and cl_khr_fp16), self-tested */
    bool sg_math;   /* ... with IDF_SUBGROUPS (tuning subgroups and cl_khr/cl_intel_subgroups), self-tested */
    char fp16_note[192]; /* why a half build was dropped, for the log */
    /* CLBlast (optional, tuning clblast = 1): dlopen'ed libclblast.so.1; it
     * links libOpenCL itself, so its entry takes our (ICD) objects. */
    void *clblast_lib;
    int (*clblast_sgemm)(int layout, int a_trans, int b_trans, size_t m, size_t n, size_t k, float alpha, cl_mem a,
                         size_t a_off, size_t a_ld, cl_mem b, size_t b_off, size_t b_ld, float beta, cl_mem c,
                         size_t c_off, size_t c_ld, cl_command_queue *queue, cl_event *event);
};

typedef struct idf_ocl_const {
    const uint8_t *p;
    size_t bytes;
    cl_mem mem;
} idf_ocl_const;

/* The model buffer holding [p, p + bytes) and the byte offset of p in it; NULL if none. */
cl_mem idf_ocl_const_find(const idf_ocl_device *dev, const void *p, size_t bytes, size_t *off);

/* Per-op counters a session's backend keeps (benchmarks read them). */
typedef struct idf_ocl_op_stats {
    uint64_t calls;
    double ms;          /* wall time of the op, enqueue to results visible on the host */
    uint64_t bytes_rd;  /* buffer bytes the kernels read (weights, activations) */
    uint64_t w_bytes;   /* of which weight bytes */
    uint64_t lib_calls; /* calls that ran in CLBlast rather than our kernels */
} idf_ocl_op_stats;

const idf_ocl_op_stats *idf_ocl_backend_stats(const idf_backend *b); /* [IDF_OP_COUNT] */
void idf_ocl_backend_stats_reset(idf_backend *b);

#endif /* IDF_BACKEND_OPENCL_H */
