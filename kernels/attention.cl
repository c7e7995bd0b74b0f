/*
 * attention.cl - softmax(q k^T * scale + mask) v per head: causal
 * self-attention over the KV cache, cross-attention to image latents, vision
 * and perceiver attention (backend.h, idf_attn).
 *
 * Data layout: q [n_q] rows q_stride floats apart, head h at h * head_dim;
 * k, v [n_kv] rows kv_stride elements apart, fp32 (attention_f32) or fp16
 * (attention_f16, read with vload_half: no cl_khr_fp16 needed); optional mask
 * [n_q, n_kv] additive; out like q with out_stride. sc is scratch, n_kv floats
 * per (row, head). Every array arrives as (buffer, byte offset), prelude.cl.
 * Work-item mapping: one work-group per (head, query row) = group ids (0, 1).
 * The query head is staged in local memory; pass 1: work-item t % wg scores
 * key t (a dot product along the key row) into sc; pass 2: max and sum of
 * exp through local reductions; pass 3: work-item d % wg accumulates output
 * dimension d over the keys (adjacent work-items read adjacent values of a
 * V row: coalesced). Scores stay fp32 end to end. A row whose every key is
 * masked (-inf) or that sees no key outputs zeros, as the reference does.
 * Size rule (backend_opencl_ops.c ocl_attention): the tuning's wg_attn, halved
 * until it fits the kernel's work-group limit (capped by the device's) and
 * head_dim + wg floats fit the local memory left to the kernel; declined
 * (CPU) when not even one work-item's share fits.
 */
static inline float kv_ld(__global const void *p, size_t idx, int f16) {
    return f16 ? vload_half(idx, (__global const half *)p) : ((__global const float *)p)[idx];
}

static inline void attend(__global const float *q, uint q_stride, __global const void *k, __global const void *v,
                   uint kv_stride, uint n_kv, uint head_dim, float scale, uint causal, int q_pos0,
                   __global const float *mask, uint has_mask, __global float *out, uint out_stride,
                   __global float *sc, __local float *qs, __local float *red, const int f16) {
    const uint h = get_group_id(0), i = get_group_id(1), n_heads = get_num_groups(0);
    const uint lid = get_local_id(0), wg = get_local_size(0);
    uint n_see = n_kv;
    if (causal && (uint)(q_pos0 + (int)i + 1) < n_see)
        n_see = (uint)(q_pos0 + (int)i + 1);
    __global float *s = sc + ((size_t)i * n_heads + h) * n_kv;
    __global float *o = out + (size_t)i * out_stride + (size_t)h * head_dim;
    for (uint d = lid; d < head_dim; d += wg)
        qs[d] = q[(size_t)i * q_stride + (size_t)h * head_dim + d];
    barrier(CLK_LOCAL_MEM_FENCE);

    float mx = -INFINITY;
    for (uint t = lid; t < n_see; t += wg) {
        const size_t kb = (size_t)t * kv_stride + (size_t)h * head_dim;
        float dot_ = 0.0f;
        for (uint d = 0; d < head_dim; d++)
            dot_ += qs[d] * kv_ld(k, kb + d, f16);
        float sv = dot_ * scale;
        if (has_mask)
            sv += mask[(size_t)i * n_kv + t];
        s[t] = sv;
        mx = fmax(mx, sv);
    }
    mx = idf_wg_max(mx, red);
    if (n_see == 0 || mx == -INFINITY) {
        for (uint d = lid; d < head_dim; d += wg)
            o[d] = 0.0f;
        return;
    }
    float sum = 0.0f;
    for (uint t = lid; t < n_see; t += wg) {
        const float p = exp(s[t] - mx);
        s[t] = p;
        sum += p;
    }
    sum = idf_wg_sum(sum, red);
    barrier(CLK_GLOBAL_MEM_FENCE); /* every p in sc is visible to the whole work-group */
    const float inv = 1.0f / sum;
    for (uint d = lid; d < head_dim; d += wg) {
        float acc = 0.0f;
        for (uint t = 0; t < n_see; t++)
            acc += s[t] * kv_ld(v, (size_t)t * kv_stride + (size_t)h * head_dim + d, f16);
        o[d] = acc * inv;
    }
}

__kernel void attention_f32(__global const float *q, ulong qo, uint q_stride, __global const void *k, ulong ko,
                            __global const void *v, ulong vo, uint kv_stride, uint n_kv, uint head_dim, float scale,
                            uint causal, int q_pos0, __global const float *mask, ulong mo, uint has_mask,
                            __global float *out, ulong oo, uint out_stride, __global float *sc, __local float *qs,
                            __local float *red) {
    q = IDF_AT(__global const float *, q, qo);
    k = IDF_AT(__global const void *, k, ko);
    v = IDF_AT(__global const void *, v, vo);
    mask = IDF_AT(__global const float *, mask, mo);
    out = IDF_AT(__global float *, out, oo);
    attend(q, q_stride, k, v, kv_stride, n_kv, head_dim, scale, causal, q_pos0, mask, has_mask, out, out_stride, sc,
           qs, red, 0);
}

__kernel void attention_f16(__global const float *q, ulong qo, uint q_stride, __global const void *k, ulong ko,
                            __global const void *v, ulong vo, uint kv_stride, uint n_kv, uint head_dim, float scale,
                            uint causal, int q_pos0, __global const float *mask, ulong mo, uint has_mask,
                            __global float *out, ulong oo, uint out_stride, __global float *sc, __local float *qs,
                            __local float *red) {
    q = IDF_AT(__global const float *, q, qo);
    k = IDF_AT(__global const void *, k, ko);
    v = IDF_AT(__global const void *, v, vo);
    mask = IDF_AT(__global const float *, mask, mo);
    out = IDF_AT(__global float *, out, oo);
    attend(q, q_stride, k, v, kv_stride, n_kv, head_dim, scale, causal, q_pos0, mask, has_mask, out, out_stride, sc,
           qs, red, 1);
}
