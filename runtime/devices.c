/*
 * devices.c - idefics_list_devices (include/idefics.h): the native CPU backend
 * and every OpenCL device, with what AUTO would do with each and why.
 *
 * The OpenCL entries come from idf_ocl_list_devices (probe and tuning match
 * only: no context, no program build), and AUTO's verdict from the same rule
 * model loading applies (idf_ocl_auto_skip_reason), so the list and the
 * choice cannot disagree.
 */
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "internal.h"
#include "platform.h"
#ifdef IDF_HAVE_OPENCL
#include "backend_opencl.h"
#endif

typedef struct list_ctx {
    idefics_device_info *out;
    int max, n;
} list_ctx;

static idefics_device_info *next_slot(list_ctx *lc) {
    idefics_device_info *d = lc->n < lc->max ? &lc->out[lc->n] : NULL;
    lc->n++;
    if (d)
        memset(d, 0, sizeof *d);
    return d;
}

#ifdef IDF_HAVE_OPENCL
static void add_ocl(void *ud, int index, const idf_ocl_probe *p, const idf_ocl_tuning *t) {
    idefics_device_info *d = next_slot(ud);
    if (!d)
        return;
    d->backend = IDEFICS_BACKEND_OPENCL;
    d->index = index;
    snprintf(d->name, sizeof d->name, "%s", p->device);
    snprintf(d->platform, sizeof d->platform, "%s", p->platform);
    snprintf(d->version, sizeof d->version, "%.90s; driver %.60s", p->version, p->driver);
    snprintf(d->kernels, sizeof d->kernels, "%s", t->file);
    d->type = (p->type & CL_DEVICE_TYPE_CPU)           ? IDEFICS_DEVICE_CPU
              : (p->type & CL_DEVICE_TYPE_GPU)         ? IDEFICS_DEVICE_GPU
              : (p->type & CL_DEVICE_TYPE_ACCELERATOR) ? IDEFICS_DEVICE_ACCELERATOR
                                                       : IDEFICS_DEVICE_OTHER;
    d->memory_bytes = p->global_mem;
    d->local_memory_bytes = p->local_mem;
    d->max_alloc_bytes = p->max_alloc;
    d->max_work_group = p->max_wg;
    d->compute_units = p->compute_units;
    const char *why = idf_ocl_auto_skip_reason(p, t);
    d->auto_ok = why == NULL;
    snprintf(d->auto_why, sizeof d->auto_why, "%s", why ? why : "");
}
#endif

idefics_status idefics_list_devices(idefics_device_info *out, int max, int *n_devices, char *err, size_t err_size) {
    if (err && err_size)
        err[0] = '\0';
    if (!n_devices || max < 0 || (!out && max > 0)) {
        if (err && err_size)
            snprintf(err, err_size, "idefics_list_devices: needs n_devices, and out when max > 0");
        return IDEFICS_ERR_INVALID_ARG;
    }
    list_ctx lc = {out, max, 0};
    idefics_device_info *cpu = next_slot(&lc);
    if (cpu) {
        cpu->backend = IDEFICS_BACKEND_CPU;
        snprintf(cpu->name, sizeof cpu->name, "cpu");
        snprintf(cpu->platform, sizeof cpu->platform, "idefics");
        snprintf(cpu->version, sizeof cpu->version, "%s", idefics_version_string());
        cpu->type = IDEFICS_DEVICE_CPU;
        cpu->compute_units = (uint32_t)idf_cpu_count();
        /* the kernel set the CPU backend picks here (IDEFICS_CPU_ISA may cap it) */
        idf_backend *b = NULL;
        idf_err e;
        idf_err_clear(&e);
        if (idf_backend_cpu_create(1, NULL, &b, &e) == IDEFICS_OK) {
            snprintf(cpu->kernels, sizeof cpu->kernels, "%s", b->name);
            b->free(b);
        } else {
            snprintf(cpu->kernels, sizeof cpu->kernels, "unavailable: %.40s", e.msg);
        }
        cpu->auto_ok = true; /* AUTO's choice whenever no OpenCL device qualifies */
    }
#ifdef IDF_HAVE_OPENCL
    idf_err e;
    idf_err_clear(&e);
    if (idf_ocl_list_devices(NULL, add_ocl, &lc, &e) != IDEFICS_OK && err && err_size)
        snprintf(err, err_size, "%s", e.msg);
#else
    if (err && err_size)
        snprintf(err, err_size, "this build has no OpenCL backend (CL/cl.h was not found at build time)");
#endif
    *n_devices = lc.n;
    return IDEFICS_OK;
}
