/*
 * norm.cl - RMSNorm and LayerNorm over rows of dim floats.
 *
 * Data layout: x, y [n, dim] row-major fp32; w (and b) [dim]. y may be x.
 * Every array is a (buffer, byte offset) pair (prelude.cl IDF_AT).
 * Work-item mapping: one work-group per row (group id = row), the work-items
 * stride over the row (element t by work-item t % wg, adjacent work-items on
 * adjacent floats) and reduce in local memory (red: wg floats, wg a power of
 * two). Each work-item reads its own elements before writing them, so y == x
 * is safe. LayerNorm takes two passes (mean, then variance about the mean),
 * as torch does, rather than E[x^2] - mean^2, which cancels badly.
 *
 * Size rule (backend_opencl_ops.c norm): the tuning's wg_norm, halved until it
 * fits the kernel's work-group limit (capped by the device's) and wg floats
 * fit the local memory left to the kernel. Smallest: one work-item, 4 bytes.
 */
__kernel void rmsnorm(__global const float *x, ulong xo, __global const float *w, ulong wo, float eps, uint dim,
                      __global float *y, ulong yo, __local float *red) {
    x = IDF_AT(__global const float *, x, xo);
    w = IDF_AT(__global const float *, w, wo);
    y = IDF_AT(__global float *, y, yo);
    const uint lid = get_local_id(0), wg = get_local_size(0);
    __global const float *xr = x + (size_t)get_group_id(0) * dim;
    __global float *yr = y + (size_t)get_group_id(0) * dim;
    float ss = 0.0f;
    for (uint t = lid; t < dim; t += wg)
        ss += xr[t] * xr[t];
    ss = idf_wg_sum(ss, red);
    const float inv = 1.0f / sqrt(ss / (float)dim + eps);
    for (uint t = lid; t < dim; t += wg)
        yr[t] = w[t] * (xr[t] * inv);
}

__kernel void layernorm(__global const float *x, ulong xo, __global const float *w, ulong wo,
                        __global const float *b, ulong bo, uint has_bias, float eps, uint dim, __global float *y,
                        ulong yo, __local float *red) {
    x = IDF_AT(__global const float *, x, xo);
    w = IDF_AT(__global const float *, w, wo);
    b = IDF_AT(__global const float *, b, bo);
    y = IDF_AT(__global float *, y, yo);
    const uint lid = get_local_id(0), wg = get_local_size(0);
    __global const float *xr = x + (size_t)get_group_id(0) * dim;
    __global float *yr = y + (size_t)get_group_id(0) * dim;
    float s = 0.0f;
    for (uint t = lid; t < dim; t += wg)
        s += xr[t];
    const float mean = idf_wg_sum(s, red) / (float)dim;
    float v = 0.0f;
    for (uint t = lid; t < dim; t += wg)
        v += (xr[t] - mean) * (xr[t] - mean);
    const float inv = 1.0f / sqrt(idf_wg_sum(v, red) / (float)dim + eps);
    for (uint t = lid; t < dim; t += wg)
        yr[t] = (xr[t] - mean) * inv * w[t] + (has_bias ? b[t] : 0.0f);
}
