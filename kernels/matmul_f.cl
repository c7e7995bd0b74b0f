/*
 * matmul_f.cl - y[n, m] = x[n, k] W[m, k]^T (+ bias) with W row-major F32 or
 * F16 (the vision patch embedding, tensors the converter left unquantised,
 * --quant f16/f32 files).
 *
 * Data layout: W row r at element r * k; F16 is IEEE binary16, read with
 * vload_half4 / vload_half (no cl_khr_fp16 needed).
 *
 * Work-item mapping: a work-group is (FM_LANES, RW): RW rows, FM_LANES lanes
 * per row, lane-fastest so the lanes of one row read adjacent 4-element chunks
 * (coalesced); chunk c goes to lane c % lanes, the tail (k % 4) to lane 0; the
 * lanes' sums meet in local memory. Dimension 2 takes NB input rows per
 * work-item, reusing each loaded weight chunk NB times (prefill with n >=
 * gm_min_n uses gemm_tiled.cl). x, bias and y are (buffer, byte offset)
 * pairs. Arithmetic is float: an F16/F32 row dot is one long reduction.
 *
 * Size rule (backend_opencl_ops.c matmul_chunk): start from the tuning's
 * f_lanes x f_rows; halve the rows, then the lanes, until lanes * rows fits
 * the kernel's CL_KERNEL_WORK_GROUP_SIZE (capped by the device's) and the
 * partial sums, lanes * rows * NB floats, fit the local memory left to the
 * kernel. Smallest: one work-item and 4 * NB bytes.
 */
#ifndef MM_NB
#define MM_NB 4 /* input rows per work-item in the prefill kernel */
#endif

static inline float4 f_load4(__global const void *w, size_t off, int is_f16) {
    return is_f16 ? vload_half4(0, (__global const half *)w + off) : vload4(0, (__global const float *)w + off);
}
static inline float f_load1(__global const void *w, size_t off, int is_f16) {
    return is_f16 ? vload_half(0, (__global const half *)w + off) : ((__global const float *)w)[off];
}

static inline void f_rows(__global const void *w, int is_f16, uint rows, __global const float *x, uint n, uint k,
                   __global const float *bias, uint has_bias, __global float *y, uint ldy, __local float *red,
                   const int nb) {
    const uint lane = get_local_id(0), lanes = get_local_size(0), rl = get_local_id(1);
    const uint row = get_global_id(1), i0 = get_global_id(2) * nb;
    const uint rr = row < rows ? row : rows - 1; /* padding work-items compute a real row and drop it */
    const size_t wb = (size_t)rr * k;
    float acc[MM_NB];
    for (int b = 0; b < nb; b++)
        acc[b] = 0.0f;
    const uint n4 = k / 4;
    for (uint c = lane; c < n4; c += lanes) {
        const float4 wv = f_load4(w, wb + 4 * c, is_f16);
        for (int b = 0; b < nb; b++) {
            if (i0 + b >= n)
                break;
            acc[b] += dot(wv, vload4(0, x + (size_t)(i0 + b) * k + 4 * c));
        }
    }
    if (lane == 0)
        for (uint j = 4 * n4; j < k; j++) {
            const float wv = f_load1(w, wb + j, is_f16);
            for (int b = 0; b < nb; b++) {
                if (i0 + b >= n)
                    break;
                acc[b] += wv * x[(size_t)(i0 + b) * k + j];
            }
        }
    for (int b = 0; b < nb; b++)
        red[(rl * lanes + lane) * nb + b] = acc[b];
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lane == 0 && row < rows) {
        const float bv = has_bias ? bias[row] : 0.0f;
        for (int b = 0; b < nb; b++) {
            if (i0 + b >= n)
                break;
            float s = 0.0f;
            for (uint l = 0; l < lanes; l++)
                s += red[(rl * lanes + l) * nb + b];
            y[(size_t)(i0 + b) * ldy + row] = s + bv;
        }
    }
}

__kernel void matmul_f(__global const void *w, uint is_f16, uint rows, __global const float *x, ulong xo, uint n,
                       uint k, __global const float *bias, ulong bo, uint has_bias, __global float *y, ulong yo,
                       uint ldy, __local float *red) {
    f_rows(w, (int)is_f16, rows, IDF_AT(__global const float *, x, xo), n, k, IDF_AT(__global const float *, bias, bo),
           has_bias, IDF_AT(__global float *, y, yo), ldy, red, MM_NB);
}

__kernel void matmul_f_nb1(__global const void *w, uint is_f16, uint rows, __global const float *x, ulong xo, uint n,
                           uint k, __global const float *bias, ulong bo, uint has_bias, __global float *y, ulong yo,
                           uint ldy, __local float *red) {
    f_rows(w, (int)is_f16, rows, IDF_AT(__global const float *, x, xo), n, k, IDF_AT(__global const float *, bias, bo),
           has_bias, IDF_AT(__global float *, y, yo), ldy, red, 1);
}
