/*
 * cmd_devices.c - `idefics devices [--json]`: the devices a model could run
 * on, through the public API only (idefics_list_devices): the native CPU
 * backend with the kernel set it runs here, then every OpenCL device with its
 * limits, the tuning file it matched, and whether AUTO would use it or why
 * not. The index printed is what --device N / IDEFICS_DEVICE=N select.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cli_faults.h"
#include "idefics.h"

static const char *type_name(idefics_device_type t) {
    switch (t) {
    case IDEFICS_DEVICE_CPU:
        return "cpu";
    case IDEFICS_DEVICE_GPU:
        return "gpu";
    case IDEFICS_DEVICE_ACCELERATOR:
        return "accelerator";
    default:
        return "other";
    }
}

static void json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_json(const idefics_device_info *d, int n, const char *note) {
    printf("{\"devices\": [");
    for (int i = 0; i < n; i++) {
        printf("%s\n  {\"backend\": \"%s\", \"index\": %d, \"name\": ", i ? "," : "",
               d[i].backend == IDEFICS_BACKEND_OPENCL ? "opencl" : "cpu", d[i].index);
        json_string(d[i].name);
        printf(", \"platform\": ");
        json_string(d[i].platform);
        printf(", \"version\": ");
        json_string(d[i].version);
        printf(", \"kernels\": ");
        json_string(d[i].kernels);
        printf(", \"type\": \"%s\", \"memory_bytes\": %" PRIu64 ", \"local_memory_bytes\": %" PRIu64
               ", \"max_alloc_bytes\": %" PRIu64 ", \"max_work_group\": %" PRIu32 ", \"compute_units\": %" PRIu32
               ", \"auto\": %s, \"auto_skip_reason\": ",
               type_name(d[i].type), d[i].memory_bytes, d[i].local_memory_bytes, d[i].max_alloc_bytes,
               d[i].max_work_group, d[i].compute_units, d[i].auto_ok ? "true" : "false");
        json_string(d[i].auto_why);
        printf("}");
    }
    printf("\n], \"opencl_note\": ");
    json_string(note);
    printf("}\n");
}

static void print_text(const idefics_device_info *d, int n, const char *note) {
    for (int i = 0; i < n; i++) {
        if (d[i].backend != IDEFICS_BACKEND_OPENCL) {
            printf("cpu: the native CPU backend, %u cores, kernels %s\n", d[i].compute_units, d[i].kernels);
            printf("    AUTO            uses it when no OpenCL device qualifies\n");
            continue;
        }
        printf("[%d] %s (%s)\n", d[i].index, d[i].name, type_name(d[i].type));
        printf("    platform        %s\n", d[i].platform);
        printf("    version         %s\n", d[i].version);
        printf("    compute units   %u, max work-group %u\n", d[i].compute_units, d[i].max_work_group);
        printf("    memory          global %.0f MiB, max alloc %.0f MiB, local %.0f KiB\n",
               (double)d[i].memory_bytes / 1048576.0, (double)d[i].max_alloc_bytes / 1048576.0,
               (double)d[i].local_memory_bytes / 1024.0);
        printf("    tuning          %s\n", d[i].kernels);
        if (d[i].auto_ok)
            printf("    AUTO            may use it (after the start-up self-test)\n");
        else
            printf("    AUTO            skips it: %s; used when named (--device %d)\n", d[i].auto_why, d[i].index);
    }
    if (note[0])
        printf("no OpenCL device: %s\n", note);
}

int cmd_devices(int argc, char **argv) {
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: idefics devices [--json]\n\nLists the native CPU backend (with the kernel set it runs "
                   "here) and every OpenCL\ndevice, and whether AUTO would use each (IDEFICS_OPENCL_LIB overrides "
                   "the OpenCL library).\n  --json   one JSON object instead of text\n");
            return 0;
        }
        if (!strcmp(argv[i], "--json")) {
            json = true;
            continue;
        }
        fprintf(stderr, "idefics devices: unexpected argument \"%s\" (usage: idefics devices [--json])\n", argv[i]);
        return 2;
    }
    char note[512];
    int n = 0;
    idefics_status st = idefics_list_devices(NULL, 0, &n, note, sizeof note);
    idefics_device_info *d = st == IDEFICS_OK && n > 0 ? calloc((size_t)n, sizeof *d) : NULL;
    if (st == IDEFICS_OK && d) {
        int n2 = 0;
        st = idefics_list_devices(d, n, &n2, note, sizeof note);
        n = n2 < n ? n2 : n; /* a device that vanished in between */
    }
    if (st != IDEFICS_OK || !d) {
        fprintf(stderr, "idefics devices: %s%s%s\n", idefics_status_str(st), note[0] ? ": " : "", note);
        free(d);
        return 1;
    }
    if (json)
        print_json(d, n, note);
    else
        print_text(d, n, note);
    free(d);
    return cli_check_stdout("devices"); /* stdout on a full disk: exit 1, not 0 */
}
