/*
 * rope.cl - rotate-half RoPE, in place.
 *
 * Data layout: x [n] rows (at byte offset xo), stride floats apart, each n_heads heads of
 * head_dim floats; row i is at position pos0 + i; pair (d, d + head_dim/2)
 * rotates by angle pos * theta^(-2d/head_dim).
 * Work-item mapping: global (head_dim/2, n_heads, n): one work-item per pair,
 * dimension 0 fastest so neighbouring work-items touch neighbouring floats.
 * inv_freq [head_dim/2] comes from the host (1 / powf(theta, 2d/head_dim),
 * the table transformers builds): OpenCL's pow may differ by ulps, and at
 * position 2000 one ulp of inv_freq is a visible angle error. The angle is
 * pos * inv_freq in fp32, as in transformers.
 * Size rule: no local size (the driver chooses within its limits), no local
 * memory; any device runs it.
 */
__kernel void rope(__global float *x, ulong xo, __global const float *inv_freq, uint stride, uint head_dim, int pos0) {
    x = IDF_AT(__global float *, x, xo);
    const uint d = get_global_id(0), h = get_global_id(1), i = get_global_id(2), half_dim = head_dim / 2;
    const float ang = (float)(pos0 + (int)i) * inv_freq[d];
    const float cs = cos(ang), sn = sin(ang);
    __global float *xh = x + (size_t)i * stride + (size_t)h * head_dim;
    const float a = xh[d], b = xh[d + half_dim];
    xh[d] = a * cs - b * sn;
    xh[d + half_dim] = b * cs + a * sn;
}
