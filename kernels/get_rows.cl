/*
 * get_rows.cl - embedding gather: y[i, :] = W[ids[i], :] as fp32, W stored
 * F32, F16 (row-major) or Q4/Q8 (ROWTILE, quant/quant.h).
 *
 * Data layout: ids [n] int32 (checked on the host to lie in [0, rows));
 * y [n, k] fp32. ROWTILE element (r, j): tile r / R, scale at
 * ((j/32) * R + r % R) * 2 bytes, quants after the ng * R scales.
 * Work-item mapping: global (k, n), one work-item per output element,
 * dimension 0 along the row. book is the Q4 codebook (quant.h says why it is
 * an argument).
 *
 * Size rule: no local size (NULL: the driver chooses within its limits) and
 * no local memory; any device runs it.
 */
__kernel void get_rows(__global const uchar *w, uint type, uint R, uint k, __global const int *ids, ulong io,
                       __global float *y, ulong yo, __constant char *book) {
    ids = IDF_AT(__global const int *, ids, io);
    y = IDF_AT(__global float *, y, yo);
    const uint j = get_global_id(0), i = get_global_id(1);
    const size_t r = (size_t)ids[i];
    float v;
    if (type == IDFX_TYPE_F32) {
        v = ((__global const float *)w)[r * k + j];
    } else if (type == IDFX_TYPE_F16) {
        v = vload_half(r * k + j, (__global const half *)w);
    } else {
        const uint ng = k / IDFX_QK, g = j / IDFX_QK, e = j % IDFX_QK, rr = (uint)(r % R);
        const uint qb = type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
        __global const uchar *tb = w + (r / R) * (size_t)ng * R * (IDFX_SCALE_BYTES + qb);
        const float d = vload_half(g * R + rr, (__global const half *)tb);
        __global const uchar *q = tb + (size_t)ng * R * IDFX_SCALE_BYTES + (size_t)(g * R + rr) * qb;
        if (type == IDFX_TYPE_Q8)
            v = d * (float)((__global const char *)q)[e];
        else
            v = d * (float)book[e < 16 ? (q[e] & 15) : (q[e - 16] >> 4)];
    }
    y[(size_t)i * k + j] = v;
}
