/*
 * matmul_q4.cl - y[n, m] = x[n, k] W[m, k]^T (+ bias) with W in Q4 ROWTILE
 * (quant/quant.h), read as the converter wrote it.
 *
 * Data layout: tile t holds rows [t*R, t*R + R): first ng*R fp16 scales
 * d[g][r] (2 bytes each), then ng*R groups of 16 quant bytes (byte j: weight
 * 32g+j low nibble, 32g+j+16 high nibble); w = d * IDFX_Q4_CODEBOOK[nibble].
 *
 * Work-item mapping: RG * lanes work-items per work-group, where RG (rows
 * per group) is R or, when a tile is taller than the kernel may have
 * work-items, a power of two dividing R: a tile is then covered by R / RG
 * neighbouring groups. Local id = r + RG * lane, so for a fixed group g the
 * RG rows are read by RG neighbouring work-items as one contiguous run (16 RG
 * bytes of quants, 2 RG of scales): coalesced on GPUs. Lane l takes groups l,
 * l + lanes, ...; the lanes' partial sums meet in local memory. Dimension 1
 * walks the input rows NB at a time: each work-item dequantises a group once
 * and uses it for NB rows of x (decode uses the NB = 1 kernel, so nothing is
 * wasted). Every weight byte is read once per NB input rows (prefill with
 * n >= the tuning's gm_min_n uses gemm_tiled.cl instead, which reads it once
 * per GM_TN rows). x, bias and y are (buffer, byte offset) pairs
 * (prelude.cl); book is the Q4 codebook (quant.h says why it is an argument).
 * Compute type: the 16 dequantised pairs and the group's dot product are
 * IDF_CT (half on fp16 builds); the sum over groups is float.
 *
 * Size rule (backend_opencl_ops.c matmul_chunk): start from RG = R and
 * lanes = the tuning's mm_lanes; halve lanes, then RG, until RG * lanes fits
 * the kernel's CL_KERNEL_WORK_GROUP_SIZE (never above the device's
 * CL_DEVICE_MAX_WORK_GROUP_SIZE) and the local memory it needs, RG * lanes *
 * NB floats of partial sums + 16 IDF_CT, fits CL_DEVICE_LOCAL_MEM_SIZE less
 * what the kernel uses itself. Any device with work-groups of 1 and 68 bytes
 * of local memory can run it.
 */
#ifndef MM_NB
#define MM_NB 4 /* input rows per work-item in the prefill kernel: more = fewer weight reads, more registers */
#endif

static inline void q4_tile(__global const uchar *w, uint R, uint RG, uint ng, uint rows, __global const float *x,
                           uint n, uint k, __global const float *bias, uint has_bias, __global float *y, uint ldy,
                           __local float *red, __constant char *book, __local IDF_CT *cb, const int nb) {
    const uint lid = get_local_id(0), lanes = get_local_size(0) / RG, per_tile = R / RG;
    const uint r = lid % RG, lane = lid / RG, tile = get_group_id(0) / per_tile;
    const uint rr = (get_group_id(0) % per_tile) * RG + r, row = tile * R + rr; /* rr: the row within its tile */
    const uint i0 = get_global_id(1) * nb;
    for (uint i = lid; i < 16; i += get_local_size(0)) /* groups can be smaller than 16 (R = 1) */
        cb[i] = (IDF_CT)book[i]; /* local copy: divergent constant reads serialise on mobile GPUs */
    barrier(CLK_LOCAL_MEM_FENCE);

    __global const uchar *tb = w + (size_t)tile * ng * R * (IDFX_SCALE_BYTES + IDFX_Q4_QBYTES);
    __global const half *sc = (__global const half *)tb;
    __global const uchar *qs = tb + (size_t)ng * R * IDFX_SCALE_BYTES;
    float acc[MM_NB];
    for (int b = 0; b < nb; b++)
        acc[b] = 0.0f;
    for (uint g = lane; g < ng; g += lanes) {
        const float d = vload_half(g * R + rr, sc);
        __global const uchar *q = qs + (size_t)(g * R + rr) * IDFX_Q4_QBYTES;
        IDF_CT wl[16], wh[16];
        for (int j = 0; j < 16; j++) {
            const uchar v = q[j];
            wl[j] = cb[v & 15];
            wh[j] = cb[v >> 4];
        }
        for (int b = 0; b < nb; b++) {
            if (i0 + b >= n)
                break;
            __global const float *xr = x + (size_t)(i0 + b) * k + g * IDFX_QK;
            IDF_CT s = 0;
            for (int j = 0; j < 16; j++)
                s += wl[j] * (IDF_CT)xr[j] + wh[j] * (IDF_CT)xr[j + 16];
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

/* red: RG * lanes * NB floats; cb: 16 IDF_CT (local, sized by the host). */
__kernel void matmul_q4(__global const uchar *w, uint R, uint RG, uint ng, uint rows, __global const float *x, ulong xo,
                        uint n, uint k, __global const float *bias, ulong bo, uint has_bias, __global float *y,
                        ulong yo, uint ldy, __local float *red, __constant char *book, __local IDF_CT *cb) {
    q4_tile(w, R, RG, ng, rows, IDF_AT(__global const float *, x, xo), n, k, IDF_AT(__global const float *, bias, bo),
            has_bias, IDF_AT(__global float *, y, yo), ldy, red, book, cb, MM_NB);
}

__kernel void matmul_q4_nb1(__global const uchar *w, uint R, uint RG, uint ng, uint rows, __global const float *x,
                            ulong xo, uint n, uint k, __global const float *bias, ulong bo, uint has_bias,
                            __global float *y, ulong yo, uint ldy, __local float *red, __constant char *book,
                            __local IDF_CT *cb) {
    q4_tile(w, R, RG, ng, rows, IDF_AT(__global const float *, x, xo), n, k, IDF_AT(__global const float *, bias, bo),
            has_bias, IDF_AT(__global float *, y, yo), ldy, red, book, cb, 1);
}
