/*
 * matmul_q8.cl - y[n, m] = x[n, k] W[m, k]^T (+ bias) with W in Q8 ROWTILE
 * (quant/quant.h).
 *
 * Data layout: tile t holds rows [t*R, t*R + R): ng*R fp16 scales d[g][r],
 * then ng*R groups of 32 int8 quants; w = d * q.
 *
 * Work-item mapping: as matmul_q4.cl: RG * lanes work-items per work-group
 * (RG = R, or a power of two dividing R when a tile is taller than the
 * kernel may have work-items; R / RG groups then share a tile), local id =
 * r + RG * lane (neighbouring work-items read neighbouring rows' 32-byte
 * runs), lanes split the groups, local-memory reduction; dimension 1 takes NB
 * input rows per work-item. x, bias and y are (buffer, byte offset) pairs.
 * Compute type: a group's 32 products are IDF_CT (half on fp16 builds), the
 * sum over groups float.
 *
 * Size rule: matmul_q4.cl's (backend_opencl_ops.c matmul_chunk): RG * lanes
 * within the kernel's work-group limit, RG * lanes * NB floats within the
 * local memory left to the kernel; lanes shrink first, then RG.
 */
#ifndef MM_NB
#define MM_NB 4 /* input rows per work-item in the prefill kernel */
#endif

static inline void q8_tile(__global const uchar *w, uint R, uint RG, uint ng, uint rows, __global const float *x,
                           uint n, uint k, __global const float *bias, uint has_bias, __global float *y, uint ldy,
                           __local float *red, const int nb) {
    const uint lid = get_local_id(0), lanes = get_local_size(0) / RG, per_tile = R / RG;
    const uint r = lid % RG, lane = lid / RG, tile = get_group_id(0) / per_tile;
    const uint rr = (get_group_id(0) % per_tile) * RG + r, row = tile * R + rr; /* rr: the row within its tile */
    const uint i0 = get_global_id(1) * nb;
    __global const uchar *tb = w + (size_t)tile * ng * R * (IDFX_SCALE_BYTES + IDFX_Q8_QBYTES);
    __global const half *sc = (__global const half *)tb;
    __global const char *qs = (__global const char *)(tb + (size_t)ng * R * IDFX_SCALE_BYTES);
    float acc[MM_NB];
    for (int b = 0; b < nb; b++)
        acc[b] = 0.0f;
    for (uint g = lane; g < ng; g += lanes) {
        const float d = vload_half(g * R + rr, sc);
        __global const char *q = qs + (size_t)(g * R + rr) * IDFX_Q8_QBYTES;
        IDF_CT wq[32];
        for (int j = 0; j < 32; j++)
            wq[j] = (IDF_CT)q[j];
        for (int b = 0; b < nb; b++) {
            if (i0 + b >= n)
                break;
            __global const float *xr = x + (size_t)(i0 + b) * k + g * IDFX_QK;
            IDF_CT s = 0;
            for (int j = 0; j < 32; j++)
                s += wq[j] * (IDF_CT)xr[j];
            acc[b] += d * (float)s;
        }
    }
    const uint parts = idf_rows_partials(acc, nb, RG, red);
    if (lane == 0 && row < rows) {
        const float bv = has_bias ? bias[row] : 0.0f;
        for (int b = 0; b < nb; b++) {
            if (i0 + b >= n)
                break;
            float s = 0.0f;
            for (uint l = 0; l < parts; l++)
                s += red[(l * RG + r) * nb + b];
            y[(size_t)(i0 + b) * ldy + row] = s + bv;
        }
    }
}

__kernel void matmul_q8(__global const uchar *w, uint R, uint RG, uint ng, uint rows, __global const float *x, ulong xo,
                        uint n, uint k, __global const float *bias, ulong bo, uint has_bias, __global float *y,
                        ulong yo, uint ldy, __local float *red) {
    q8_tile(w, R, RG, ng, rows, IDF_AT(__global const float *, x, xo), n, k, IDF_AT(__global const float *, bias, bo),
            has_bias, IDF_AT(__global float *, y, yo), ldy, red, MM_NB);
}

__kernel void matmul_q8_nb1(__global const uchar *w, uint R, uint RG, uint ng, uint rows, __global const float *x,
                            ulong xo, uint n, uint k, __global const float *bias, ulong bo, uint has_bias,
                            __global float *y, ulong yo, uint ldy, __local float *red) {
    q8_tile(w, R, RG, ng, rows, IDF_AT(__global const float *, x, xo), n, k, IDF_AT(__global const float *, bias, bo),
            has_bias, IDF_AT(__global float *, y, yo), ldy, red, 1);
}
