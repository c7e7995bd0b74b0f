/*
 * cmd_devices.c - `idefics devices`: every OpenCL platform and device this
 * machine offers, with what the backend's probe finds (fp16, subgroups,
 * unified memory, limits), the tuning file it matched and whether AUTO would
 * consider it. The index printed is what --device N / IDEFICS_DEVICE=N select.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cli_faults.h"
#include "idefics.h"
#ifdef IDF_HAVE_OPENCL
#include "backend_opencl.h"
#endif

#ifdef IDF_HAVE_OPENCL
static void print_dev(void *ud, int index, const idf_ocl_probe *p, const idf_ocl_tuning *t) {
    (void)ud;
    const char *type = (p->type & CL_DEVICE_TYPE_GPU) ? "GPU"
                       : (p->type & CL_DEVICE_TYPE_CPU) ? "CPU"
                       : (p->type & CL_DEVICE_TYPE_ACCELERATOR) ? "accelerator"
                                                                : "other";
    printf("[%d] %s (%s)\n", index, p->device, type);
    printf("    platform        %s\n", p->platform);
    printf("    vendor          %s\n", p->vendor);
    printf("    version         %s; %s; driver %s\n", p->version, p->c_version, p->driver);
    printf("    compute units   %u, max work-group %u\n", p->compute_units, p->max_wg);
    printf("    memory          global %.0f MiB, max alloc %.0f MiB, local %.0f KiB, unified with host: %s\n",
           (double)p->global_mem / 1048576.0, (double)p->max_alloc / 1048576.0, (double)p->local_mem / 1024.0,
           p->unified_memory ? "yes" : "no");
    printf("    fp16 math       %s\n", p->fp16 ? "yes (cl_khr_fp16)" : "no (fp16 storage only, via vload_half)");
    printf("    subgroups       %s\n", p->subgroups ? p->subgroup_ext : "no");
    printf("    images          %s", p->images ? "yes" : "no");
    if (p->images)
        printf(", image1d_buffer up to %llu texels", (unsigned long long)p->image1d_buffer_max);
    printf("\n    base align      %u bytes\n", p->base_align);
    printf("    tuning          %s: mm_lanes %u, mm_nb %u, f_lanes %u, f_rows %u, wg norm/attn/elem %u/%u/%u, "
           "host ptr %s\n",
           t->file, t->mm_lanes, t->mm_nb, t->f_lanes, t->f_rows, t->wg_norm, t->wg_attn, t->wg_elem,
           t->use_host_ptr ? "yes" : "no");
    printf("    AUTO            %s\n", t->auto_select ? "may use it (after the start-up self-test)" : "skips it unless named");
}
#endif

int cmd_devices(int argc, char **argv) {
    if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        printf("usage: idefics devices\n\nLists OpenCL devices (IDEFICS_OPENCL_LIB overrides the library).\n");
        return 0;
    }
#ifdef IDF_HAVE_OPENCL
    idf_err err;
    idf_err_clear(&err);
    const idefics_status st = idf_ocl_list_devices(NULL, print_dev, NULL, &err);
    if (st != IDEFICS_OK) {
        printf("no OpenCL device: %s\n", err.msg);
        cli_check_stdout("devices");
        return 1;
    }
    return cli_check_stdout("devices"); /* stdout on a full disk: exit 1, not 0 */
#else
    printf("this build has no OpenCL backend (CL/cl.h was not found at build time)\n");
    return 1;
#endif
}
