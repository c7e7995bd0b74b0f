/*
 * opencl_loader.h - OpenCL found at run time: dlopen the ICD loader (or a
 * vendor library) and fill a table of entry points, so the library has no
 * link-time OpenCL dependency and runs unchanged where there is none.
 *
 * Search order: $IDEFICS_OPENCL_LIB (only it, when set), libOpenCL.so.1,
 * libOpenCL.so, then the places Android vendors put theirs (Adreno, Mali).
 * The table lives in the caller's context (no globals). Required entry points
 * make the load fail when absent; optional ones (OpenCL 2.x, extensions) are
 * NULL when the library lacks them, and callers check before use.
 */
#ifndef IDF_OPENCL_LOADER_H
#define IDF_OPENCL_LOADER_H

#ifndef CL_TARGET_OPENCL_VERSION
#define CL_TARGET_OPENCL_VERSION 300
#endif
#define CL_USE_DEPRECATED_OPENCL_1_2_APIS
#include <CL/cl.h>

#include <stdbool.h>
#include <stddef.h>

/* X(name): one entry point; the type is taken from the declaration in cl.h
 * (only its type: nothing links against it). */
#define IDF_CL_REQUIRED(X)                                                                                            \
    X(clGetPlatformIDs) X(clGetPlatformInfo) X(clGetDeviceIDs) X(clGetDeviceInfo) X(clCreateContext)                 \
    X(clReleaseContext) X(clReleaseCommandQueue) X(clCreateBuffer) X(clReleaseMemObject)                            \
    X(clCreateProgramWithSource) X(clCreateProgramWithBinary) X(clBuildProgram) X(clGetProgramInfo)                 \
    X(clGetProgramBuildInfo) X(clReleaseProgram) X(clCreateKernel) X(clReleaseKernel) X(clSetKernelArg)             \
    X(clGetKernelWorkGroupInfo) X(clEnqueueNDRangeKernel) X(clEnqueueReadBuffer) X(clEnqueueWriteBuffer)            \
    X(clEnqueueMapBuffer) X(clEnqueueUnmapMemObject) X(clFinish) X(clFlush) X(clWaitForEvents) X(clReleaseEvent)    \
    X(clGetEventProfilingInfo) X(clEnqueueFillBuffer)

/* clCreateCommandQueue is deprecated in 2.0 and may be missing from a 3.0-only
 * vendor library; the device code uses whichever of the two queue
 * constructors exists. */
#define IDF_CL_OPTIONAL(X)                                                                                            \
    X(clCreateCommandQueue) X(clCreateCommandQueueWithProperties) X(clGetKernelSubGroupInfo)                         \
    X(clGetExtensionFunctionAddressForPlatform) X(clCreateSubBuffer)

typedef struct idf_cl_api {
    void *lib;              /* dlopen handle */
    char lib_path[256];     /* which library was opened */
#define IDF_CL_MEMBER(n) __typeof__(n) *n;
    IDF_CL_REQUIRED(IDF_CL_MEMBER)
    IDF_CL_OPTIONAL(IDF_CL_MEMBER)
#undef IDF_CL_MEMBER
} idf_cl_api;

/* Fill *api. Returns false with a one-line reason in why (the libraries tried,
 * or the first missing entry point); *api is then zeroed and holds nothing. */
bool idf_cl_load(idf_cl_api *api, char *why, size_t why_size);
void idf_cl_unload(idf_cl_api *api); /* zeroed or loaded api; idempotent */

/* ---- the program binary cache's file system side ---- */

/* The cache folder ($IDEFICS_CACHE_DIR, else $XDG_CACHE_HOME/idefics, else
 * $HOME/.cache/idefics), created if missing; false when there is none. */
bool idf_cl_cache_dir(char *buf, size_t size);
/* Write a whole file atomically: a temp file in the same folder, then rename,
 * so a concurrent reader sees the old file or the new one, never a part. */
bool idf_cl_cache_write(const char *path, const void *data, size_t len);

#endif /* IDF_OPENCL_LOADER_H */
