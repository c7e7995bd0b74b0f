/*
 * attention.cl - softmax(q k^T * scale + mask) v per head: causal
 * self-attention over the KV cache, cross-attention to image latents, vision
 * and perceiver attention (backend.h, idf_attn).
 *
 * Data layout: q [n_q] rows q_stride floats apart, head h at h * head_dim;
 * k, v [n_kv] rows kv_stride elements apart, fp32 (attention_f32), fp16
 * (attention_f16, read with vload_half: no cl_khr_fp16 needed) or Q8
 * (attention_q8: quant.h blocks of 32, an fp16 scale then 32 int8, 34 bytes);
 * optional mask [n_q, n_kv] additive; out like q with out_stride. Every array
 * arrives as (buffer, byte offset), prelude.cl.
 *
 * The algorithm is the CPU backend's (backend_cpu.c): online softmax, split
 * across the key sequence, no score matrix. attention_* runs one work-group
 * per (head, query row, block of kb keys) = group ids (0, 1, 2): the query
 * head, scaled, is staged in local memory; the block's keys are taken wg at
 * a time, work-item t % wg scoring key t; a running max m and sum l are kept
 * through local reductions (the partial sums rescaled by e^(m_old - m_new)
 * when the max grows), and work-item d % wg accumulates output dimensions d
 * (up to ATT_MAXD of them) over the chunk's probabilities (adjacent
 * work-items read adjacent values of a V row: coalesced). Each group writes
 * its (m, l, acc[head_dim]) to part; attention_merge, one work-group per
 * (head, query row), rescales the blocks to their common max and divides.
 * Splitting the keys keeps every compute unit busy on one decode row at any
 * depth. A row whose every key is masked (-inf) or that sees no key outputs
 * zeros, as the reference does.
 * Size rule (backend_opencl_ops.c attn_wg): the tuning's wg_attn, halved
 * until it fits both kernels' work-group limits (capped by the device's) and
 * head_dim + 2 wg floats fit the local memory left to the kernel; a work-item
 * owns at most ATT_MAXD output dimensions (head_dim <= ATT_MAXD wg). Declined
 * (the op runs on the CPU) when no size fits.
 */
#define ATT_MAXD 4 /* output dimensions per work-item: head_dim <= ATT_MAXD * wg (host-checked) */

static inline float kv_ld(__global const void *p, size_t idx, const int kvt) {
    if (kvt == 0)
        return ((__global const float *)p)[idx];
    if (kvt == 1)
        return vload_half(idx, (__global const half *)p);
    __global const uchar *b = (__global const uchar *)p + (idx / 32) * 34;
    return vload_half(0, (__global const half *)b) * (float)((__global const char *)b)[2 + idx % 32];
}

static inline void attend_part(__global const float *q, uint q_stride, __global const void *k,
                               __global const void *v, uint kv_stride, uint n_kv, uint head_dim, float scale,
                               uint causal, int q_pos0, __global const float *mask, uint has_mask,
                               __global float *part, uint kb, __local float *qs, __local float *sc,
                               __local float *red, const int kvt) {
    const uint h = get_group_id(0), i = get_group_id(1), b = get_group_id(2);
    const uint n_heads = get_num_groups(0), nb = get_num_groups(2);
    const uint lid = get_local_id(0), wg = get_local_size(0);
    uint n_see = n_kv;
    if (causal && (uint)(q_pos0 + (int)i + 1) < n_see)
        n_see = (uint)(q_pos0 + (int)i + 1);
    const uint t_begin = b * kb, t_end = min(n_see, t_begin + kb);
    __global float *pp = part + (((size_t)i * n_heads + h) * nb + b) * (head_dim + 2);
    for (uint d = lid; d < head_dim; d += wg)
        qs[d] = q[(size_t)i * q_stride + (size_t)h * head_dim + d] * scale;
    barrier(CLK_LOCAL_MEM_FENCE);

    float m = -INFINITY, l = 0.0f, acc[ATT_MAXD];
    for (uint r = 0; r < ATT_MAXD; r++)
        acc[r] = 0.0f;
    for (uint c0 = t_begin; c0 < t_end; c0 += wg) { /* uniform across the work-group */
        const uint t = c0 + lid;
        float s = -INFINITY;
        if (t < t_end) {
            const size_t kbase = (size_t)t * kv_stride + (size_t)h * head_dim;
            float dot_ = 0.0f;
            for (uint d = 0; d < head_dim; d++)
                dot_ += qs[d] * kv_ld(k, kbase + d, kvt);
            s = dot_;
            if (has_mask)
                s += mask[(size_t)i * n_kv + t];
        }
        const float m_new = fmax(m, idf_wg_max(s, red));
        if (m_new == -INFINITY) /* everything so far masked */
            continue;
        const float p = s == -INFINITY ? 0.0f : exp(s - m_new);
        sc[lid] = p;
        const float csum = idf_wg_sum(p, red); /* its barriers also publish sc */
        const float corr = m == -INFINITY ? 0.0f : exp(m - m_new);
        l = l * corr + csum;
        m = m_new;
        const uint nc = min(wg, t_end - c0);
        for (uint r = 0; r < ATT_MAXD; r++) {
            const uint d = lid + r * wg;
            if (d < head_dim) {
                float a = acc[r] * corr;
                for (uint j = 0; j < nc; j++)
                    a += sc[j] * kv_ld(v, (size_t)(c0 + j) * kv_stride + (size_t)h * head_dim + d, kvt);
                acc[r] = a;
            }
        }
        barrier(CLK_LOCAL_MEM_FENCE); /* sc is rewritten by the next chunk */
    }
    if (lid == 0) {
        pp[0] = m;
        pp[1] = l;
    }
    for (uint r = 0; r < ATT_MAXD; r++) {
        const uint d = lid + r * wg;
        if (d < head_dim)
            pp[2 + d] = acc[r];
    }
}

#define ATT_KERNEL(name, kvt)                                                                                      \
    __kernel void name(__global const float *q, ulong qo, uint q_stride, __global const void *k, ulong ko,         \
                       __global const void *v, ulong vo, uint kv_stride, uint n_kv, uint head_dim, float scale,    \
                       uint causal, int q_pos0, __global const float *mask, ulong mo, uint has_mask,               \
                       __global float *part, uint kb, __local float *qs, __local float *sc, __local float *red) {  \
        q = IDF_AT(__global const float *, q, qo);                                                                 \
        k = IDF_AT(__global const void *, k, ko);                                                                  \
        v = IDF_AT(__global const void *, v, vo);                                                                  \
        mask = IDF_AT(__global const float *, mask, mo);                                                           \
        attend_part(q, q_stride, k, v, kv_stride, n_kv, head_dim, scale, causal, q_pos0, mask, has_mask, part, kb, \
                    qs, sc, red, kvt);                                                                             \
    }

ATT_KERNEL(attention_f32, 0)
ATT_KERNEL(attention_f16, 1)
ATT_KERNEL(attention_q8, 2)

/* part [n_q][n_heads][nb][head_dim + 2] -> out: one work-group per (head, query row). */
__kernel void attention_merge(__global const float *part, uint nb, uint head_dim, __global float *out, ulong oo,
                              uint out_stride) {
    out = IDF_AT(__global float *, out, oo);
    const uint h = get_group_id(0), i = get_group_id(1), n_heads = get_num_groups(0);
    const uint lid = get_local_id(0), wg = get_local_size(0);
    const size_t per = head_dim + 2;
    __global const float *pp = part + ((size_t)i * n_heads + h) * nb * per;
    __global float *o = out + (size_t)i * out_stride + (size_t)h * head_dim;
    float M = -INFINITY;
    for (uint b = 0; b < nb; b++)
        M = fmax(M, pp[b * per]);
    if (M == -INFINITY) {
        for (uint d = lid; d < head_dim; d += wg)
            o[d] = 0.0f;
        return;
    }
    float L = 0.0f;
    for (uint b = 0; b < nb; b++)
        if (pp[b * per] != -INFINITY)
            L += pp[b * per + 1] * exp(pp[b * per] - M);
    const float inv = 1.0f / L;
    for (uint d = lid; d < head_dim; d += wg) {
        float a = 0.0f;
        for (uint b = 0; b < nb; b++)
            if (pp[b * per] != -INFINITY)
                a += exp(pp[b * per] - M) * pp[b * per + 2 + d];
        o[d] = a * inv;
    }
}
