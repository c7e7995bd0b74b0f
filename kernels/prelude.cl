/*
 * prelude.cl - prepended to every OpenCL program, before quant/quant.h and the
 * op files. Valid OpenCL C 1.2.
 *
 * Conventions shared by the op files:
 *   - arithmetic is fp32; fp16 data (F16 weights, the F16 KV cache, Q4/Q8 scales)
 *     is read with vload_half, which needs no cl_khr_fp16 (PoCL has none);
 *   - sizes and strides arrive as uint (every tensor the backend hands a kernel
 *     is checked to have fewer than 2^31 elements) and index math is done in
 *     size_t where a product can pass 2^32 bytes;
 *   - tunables are -D build options chosen from boards/gpu/NAME.ini; each op file
 *     gives defaults with #ifndef.
 */
#if defined(IDF_USE_FP16) && defined(cl_khr_fp16)
#pragma OPENCL EXTENSION cl_khr_fp16 : enable
#endif

/* IDF_SUBGROUPS (tuning subgroups = 1 and the device lists cl_khr_subgroups
 * or cl_intel_subgroups): the Q4/Q8 matmul reductions use sub_group_reduce_add
 * before local memory. A compiler that does not define the extension after
 * all gets the local-memory path. Not runnable on PoCL (no subgroups). */
#if defined(IDF_SUBGROUPS) && defined(cl_khr_subgroups)
#pragma OPENCL EXTENSION cl_khr_subgroups : enable
#elif defined(IDF_SUBGROUPS) && defined(cl_intel_subgroups)
#pragma OPENCL EXTENSION cl_intel_subgroups : enable
#elif defined(IDF_SUBGROUPS)
#undef IDF_SUBGROUPS
#endif

/* The lanes' partial sums of one ROWTILE work-group (local id = r + R *
 * lane, acc[nb] each) into red; afterwards red[(j * R + r) * nb + b] for j <
 * the returned count hold the partials of row r, input row b. With
 * subgroups, each subgroup first sums its own lanes per row (R reductions per
 * input row; every work-item takes part, as the built-ins require), so local
 * memory holds one value per (subgroup, row) instead of one per work-item. */
static inline uint idf_rows_partials(const float *acc, int nb, uint R, __local float *red) {
    const uint lid = get_local_id(0);
#ifdef IDF_SUBGROUPS
    /* red holds R * lanes * nb floats: enough when a subgroup spans >= R
     * work-items (then there are at most `lanes` subgroups); else local memory */
    if (get_max_sub_group_size() >= R) {
        const uint r = lid % R, sg = get_sub_group_id();
        for (int b = 0; b < nb; b++)
            for (uint rr = 0; rr < R; rr++) {
                const float v = sub_group_reduce_add(r == rr ? acc[b] : 0.0f);
                if (get_sub_group_local_id() == 0)
                    red[(sg * R + rr) * nb + b] = v;
            }
        barrier(CLK_LOCAL_MEM_FENCE);
        return get_num_sub_groups();
    }
#endif
    for (int b = 0; b < nb; b++)
        red[lid * nb + b] = acc[b];
    barrier(CLK_LOCAL_MEM_FENCE);
    return get_local_size(0) / R;
}

/* IDF_CT: the compute type of short inner products (one quant group, one
 * local-memory tile step: at most 32 products) and of dequantised weight
 * tiles. The backend builds the program with -DIDF_CT_HALF=1 only when the
 * tuning file says fp16 = 1 AND the device has cl_khr_fp16, and rebuilds with
 * float if the start-up self-test of that build fails. Long reductions (over
 * K, over keys, norms) always accumulate in float. PoCL (CI) has no
 * cl_khr_fp16, so only the float build is tested there. */
#if defined(IDF_CT_HALF) && defined(cl_khr_fp16)
#define IDF_CT half
#define IDF_CT4 half4
#else
#define IDF_CT float
#define IDF_CT4 float4
#endif

/* Buffers arrive as (cl_mem, byte offset) pairs: the backend keeps a
 * session's activations in a few long-lived buffers (device-resident
 * scratch), and an op's array is a range inside one. IDF_AT moves a kernel's
 * pointer argument to its range. */
#define IDF_AT(T, p, off) ((T)((__global const uchar *)(p) + (off)))

/* Sum of v over the work-group through red[] (get_local_size(0) floats, a
 * power of two). Every work-item gets the total. */
static inline float idf_wg_sum(float v, __local float *red) {
    const uint lid = get_local_id(0), n = get_local_size(0);
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = n / 2; s > 0; s >>= 1) {
        if (lid < s)
            red[lid] += red[lid + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE); /* red[] is reused by the caller's next reduction */
    return r;
}

static inline float idf_wg_max(float v, __local float *red) {
    const uint lid = get_local_id(0), n = get_local_size(0);
    red[lid] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = n / 2; s > 0; s >>= 1) {
        if (lid < s)
            red[lid] = fmax(red[lid], red[lid + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float r = red[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}
