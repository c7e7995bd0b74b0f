/*
 * act.cl - elementwise activations and residual ops, in place over fp32.
 *
 * Data layout: flat float arrays of n elements (gated_add: h, a [rows, dim],
 * gate [dim] broadcast over rows).
 * Every array is a (buffer, byte offset) pair (prelude.cl IDF_AT).
 * Work-item mapping: one work-item per element, global size rounded up to the
 * work-group size; work-items past n do nothing.
 *
 * Size rule (backend_opencl_ops.c elem): the tuning's wg_elem, halved until it
 * fits the kernel's work-group limit (capped by the device's); no local memory.
 */
__kernel void gelu(__global float *x, ulong xo, uint n) { /* exact (erf) GELU, as HF "gelu" */
    x = IDF_AT(__global float *, x, xo);
    const uint i = get_global_id(0);
    if (i < n)
        x[i] = 0.5f * x[i] * (1.0f + erf(x[i] * 0.70710678118654752f));
}

__kernel void quick_gelu(__global float *x, ulong xo, uint n) {
    x = IDF_AT(__global float *, x, xo);
    const uint i = get_global_id(0);
    if (i < n)
        x[i] = x[i] / (1.0f + exp(-1.702f * x[i]));
}

__kernel void relu(__global float *x, ulong xo, uint n) {
    x = IDF_AT(__global float *, x, xo);
    const uint i = get_global_id(0);
    if (i < n)
        x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

__kernel void silu_mul(__global float *g, ulong go, __global const float *u, ulong uo, uint n) {
    g = IDF_AT(__global float *, g, go);
    u = IDF_AT(__global const float *, u, uo);
    const uint i = get_global_id(0);
    if (i < n)
        g[i] = g[i] / (1.0f + exp(-g[i])) * u[i];
}

__kernel void add(__global float *y, ulong yo, __global const float *x, ulong xo, uint n) {
    y = IDF_AT(__global float *, y, yo);
    x = IDF_AT(__global const float *, x, xo);
    const uint i = get_global_id(0);
    if (i < n)
        y[i] += x[i];
}

__kernel void scale(__global float *x, ulong xo, float s, uint n) {
    x = IDF_AT(__global float *, x, xo);
    const uint i = get_global_id(0);
    if (i < n)
        x[i] *= s;
}

__kernel void gated_add(__global float *h, ulong ho, __global const float *gate, ulong go, __global const float *a,
                        ulong ao, uint dim, uint n) {
    h = IDF_AT(__global float *, h, ho);
    gate = IDF_AT(__global const float *, gate, go);
    a = IDF_AT(__global const float *, a, ao);
    const uint i = get_global_id(0);
    if (i < n)
        h[i] += gate[i % dim] * a[i];
}
