/*
 * cpu_kernels.h - the contract between the CPU backend (backend_cpu.c) and its
 * per-ISA kernel files (q4_scalar.c, q4_avx2.c, q4_avx512.c, q4_neon.c). Each
 * kernel file is compiled with its own target flags (runtime/meson.build), so
 * one binary holds every level; backend_cpu.c picks one at run time from
 * platform/cpu_features.h and calls it only on a CPU that has it.
 *
 * Quantized activations (idf_qact): the matmul input x[n, k] is quantized once
 * per call to int8 in groups of 32 along k with one fp32 scale per group
 * (x ~= d * q, q in [-127, 127]), so the inner loops are integer dot products
 * against the int8 Q4 codebook values or Q8 weights. corr holds, per row and
 * group, 8 int32: -128 * (q[4j] + q[4j+1] + q[4j+2] + q[4j+3]) for j = 0..7,
 * the correction that lets an unsigned x signed byte dot product (x86 VNNI
 * vpdpbusd) run on weights stored with a +128 bias: sum (w + 128) q - 128 sum q.
 *
 * A tile kernel computes, for one tile (ROWTILE or GROUPTILE) of R weight rows (quant.h) and
 * nx <= q4_max_nx / q8_max_nx activation rows (IDF_CPU_NX where 0),
 *     y[i * ldy + r] = sum_g dw[g][r] * dx[i][g] * (int dot of group g)  (+ bias[r])
 * for r < rows_valid (the last tile's padding rows are never written).
 */
#ifndef IDF_CPU_KERNELS_H
#define IDF_CPU_KERNELS_H

#include <stdint.h>

#define IDF_CPU_NX 4     /* activation rows per kernel call (register blocking), default */
#define IDF_CPU_NX_MAX 8 /* the most any kernel takes (idf_cpu_kernels.q4_max_nx) */
/* Bytes ahead of the weight stream that the one-row (decode) kernels prefetch.
 * Decode reads every weight byte once from file-backed 4 KB pages, where the
 * hardware prefetcher stops at each page boundary, and the kernels' work per
 * byte keeps few loads in flight. Measured on Zen 5, 2 threads, 9B decode:
 * none 6.2 tok/s; 2048 8.7; 4096 9.6-9.8; 6144 10.2-10.5; 8192 10.3-10.4;
 * 12288 and 16384 no better (while the host gave us ~64 GB/s of read
 * bandwidth; at ~42 GB/s 4096-16384 measured alike). */
#ifndef IDF_CPU_PREFETCH
#define IDF_CPU_PREFETCH 6144
#endif
/* Prefetch for data read once (x86 prefetchnta, AArch64 PLDL1STRM): the
 * weights of a decode step are not read again before they are evicted. */
#define IDF_PREFETCH_STREAM(p) __builtin_prefetch((const void *)(p), 0, 0)
/* The lines of `bytes` bytes at p + IDF_CPU_PREFETCH (bytes a multiple of 16,
 * a constant in the kernels, so the loop unrolls). */
#define IDF_PREFETCH_AHEAD(p, bytes)                                                                                   \
    do {                                                                                                               \
        for (int pf_ = 0; pf_ < (bytes); pf_ += 64)                                                                    \
            IDF_PREFETCH_STREAM((const uint8_t *)(p) + IDF_CPU_PREFETCH + pf_);                                       \
    } while (0)

typedef struct idf_qact {
    int8_t *q;     /* [n, ldg * 32] */
    float *d;      /* [n, ldg] */
    int32_t *corr; /* [n, ldg, 8] */
    int32_t *corr4; /* [n, ldg, 4]: corr[j] + corr[j + 4], the correction of a
                       16-byte lane holding bytes 4j.. of both group halves (Q4) */
    int32_t *corr1; /* [n, ldg]: the sum of a group's 8 corr, -128 * sum of its q */
    int64_t k, ng; /* x's row length (= its row stride) and k / 32 */
    int64_t ldg;   /* row stride of q, d, corr in groups (>= ng): odd, so rows of a
                      power-of-two k do not all fall in the same L1 sets */
} idf_qact;

/* Where one tile's scales and quants are (quant.h, ROWTILE or GROUPTILE): the
 * R fp16 scales of group g at s + g * s_step, the R rows' quant bytes of group
 * g at q + g * q_step (row r's at + r * 16 for Q4, + r * 32 for Q8). */
typedef struct idf_tile {
    const uint8_t *s, *q;
    int64_t s_step, q_step;
    int R;
} idf_tile;

/* One tile of a Q4 or Q8 tiled weight against activation rows x0 .. x0+nx-1;
 * ng: groups per row. */
typedef void (*idf_cpu_tile_fn)(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                                int64_t ldy, int rows_valid, const float *bias);

/* 16 weight rows of Q4 tiled data, rows 0-7 from tile A's rows 0-7 and rows
 * 8-15 from tile B's (two adjacent R = 8 tiles, or two views of one R >= 16
 * tile), against activation rows x0 .. x0+nx-1 (nx <= q4_max_nx):
 *     y[i * ldy + r] = sum_g dw[g][r] * dx[i][g] * (int dot of group g) (+ bias[r]), r < 16.
 * Optional: where a kernel file has none, or rows are missing, the backend
 * runs q4_tile. */
typedef void (*idf_cpu_rows16_fn)(const idf_tile *A, const idf_tile *B, int64_t ng, const idf_qact *a, int64_t x0,
                                  int nx, float *y, int64_t ldy, const float *bias);

/* One tile of a Q4 tiled weight against the SUM of activation rows x0 and x1
 * (the two levels of one decode row, backend_cpu.c ACT2), in one pass:
 *     y[r] = sum_g dw[g][r] * (dx0[g] * dot0 + dx1[g] * dot1) (+ bias[r]), r < rows_valid.
 * Optional (NULL: q4_tile over both rows, then a sum); needs R % q4_sum2_min_r == 0. */
typedef void (*idf_cpu_tile_sum2_fn)(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int64_t x1,
                                     float *y, int rows_valid, const float *bias);

/* fp32 block: y[i * ldy + r] = dot(x[i], w[r]) (+ bias[r]) for i < nx, r < nr,
 * x rows k floats apart, w rows k floats apart (already fp32). */
typedef void (*idf_cpu_f32_fn)(const float *w, int nr, const float *x, int nx, int64_t k, float *y, int64_t ldy,
                               const float *bias);

/* Quantize n rows of x[k] (k a multiple of 32) into a, rows r0 .. r0+n-1.
 * Every ISA gives the same bytes as idf_cpu_quant_scalar (same fp32 products,
 * round to nearest even), so the integer sums stay identical across ISAs. */
typedef void (*idf_cpu_quant_fn)(const float *x, int64_t r0, int64_t n, idf_qact *a);

/* n IEEE fp16 values (little-endian, any alignment) to fp32: exact. */
typedef void (*idf_cpu_fp16_fn)(const void *src, int64_t n, float *dst);

/* Attention kernels (attn.inc; backend_cpu.c has the algorithm). A KV row is
 * n_heads * hd elements of kv_type (idefics_kv_type) at `row` (Q8: the row
 * starts on a quant.h block); head h is elements [h * hd, (h + 1) * hd).
 * Decode works on the cache itself, converting F16/Q8 in registers:
 *   qk_row: s[(i * n_heads + h) * s_ld] = dot(q[i * q_stride + h * hd ..], head h)
 *   pv_row: acc[(i * n_heads + h) * hd + e] += p[(i * n_heads + h) * p_ld] * head h [e]
 * for i < nq, h < n_heads. Prefill tiles keep keys along rows (no transposed
 * block; K and V may be the fp32 cache itself, ldk/ldv its row stride):
 *   gemm_qk: St[t * lds + i] = sum_d K[t * ldk + d] Qt[d * ldq + i], t < nt, i < nq (a multiple of attn_vl)
 *   gemm_pv: O[i * ldo + e] += sum_t P[t * ldp + i] V[t * ldv + e], i < nq (a multiple of 4), e < ne
 *            (a multiple of attn_vl)
 *   softmax_cols: the online-softmax step on St [nt][nq] (-inf = masked): probabilities relative to
 *            the new running max m[i], l[i] updated, corr[i] = e^(m_old - m_new) for the caller's O
 *            row i; base: nq floats of scratch
 * softmax_exp: s[t] = exp(s[t] - mx) for t < n (mx >= every s[t], finite); returns the sum. */
typedef void (*idf_cpu_qk_row_fn)(const void *row, int kv_type, int n_heads, int hd, const float *q, int64_t q_stride,
                                  int nq, float *s, int64_t s_ld);
typedef void (*idf_cpu_pv_row_fn)(const void *row, int kv_type, int n_heads, int hd, const float *p, int64_t p_ld,
                                  int nq, float *acc);
typedef void (*idf_cpu_gemm_qk_fn)(const float *K, int64_t ldk, int nt, const float *Qt, int64_t ldq, int nq, int hd,
                                   float *St, int64_t lds);
typedef void (*idf_cpu_gemm_pv_fn)(const float *P, int64_t ldp, int nq, const float *V, int64_t ldv, int nt, int ne,
                                   float *O, int64_t ldo);
typedef void (*idf_cpu_softmax_cols_fn)(float *St, int64_t ld, int nt, int nq, float *m, float *l, float *corr,
                                        float *base);
typedef float (*idf_cpu_softmax_fn)(float *s, int n, float mx);
/* Activations in place (vec_f32.inc): gelu (erf form), quick_gelu, and
 * g = silu(g) * u. */
typedef void (*idf_cpu_act_fn)(float *x, int64_t n);
typedef void (*idf_cpu_silu_mul_fn)(float *g, const float *u, int64_t n);

typedef struct idf_cpu_kernels {
    const char *name; /* "scalar", "avx2", "avx512vnni", "neon", "neon-dotprod" */
    idf_cpu_tile_fn q4_tile, q8_tile;
    idf_cpu_rows16_fn q4_rows16; /* NULL: q4_tile only */
    idf_cpu_tile_sum2_fn q4_tile_sum2; /* NULL: decode's two levels run as two rows */
    int q4_sum2_min_r;
    int q4_min_r, q8_min_r; /* the tile kernels need R % min_r == 0; else scalar runs */
    int q4_max_nx, q8_max_nx; /* activation rows one tile call takes (<= IDF_CPU_NX_MAX; 0 = IDF_CPU_NX) */
    idf_cpu_f32_fn f32_block;
    idf_cpu_quant_fn quant;
    idf_cpu_fp16_fn fp16_row;
    idf_cpu_qk_row_fn attn_qk_row;
    idf_cpu_pv_row_fn attn_pv_row;
    idf_cpu_gemm_qk_fn attn_gemm_qk;
    idf_cpu_gemm_pv_fn attn_gemm_pv;
    idf_cpu_softmax_cols_fn attn_softmax_cols;
    int attn_vl; /* fp32 lanes of the attention kernels: the padding unit of gemm_qk's nt and gemm_pv's ne */
    idf_cpu_softmax_fn softmax_exp;
    idf_cpu_act_fn gelu, quick_gelu;
    idf_cpu_silu_mul_fn silu_mul;
} idf_cpu_kernels;

/* Each is defined in its kernel file; a file built for another architecture
 * defines none (see meson.build). */
void idf_cpu_kernels_scalar(idf_cpu_kernels *k);
void idf_cpu_kernels_avx2(idf_cpu_kernels *k);
void idf_cpu_kernels_avx512(idf_cpu_kernels *k);
void idf_cpu_kernels_neon(idf_cpu_kernels *k);
void idf_cpu_kernels_neon_dotprod(idf_cpu_kernels *k);

/* Shared scalar pieces (q4_scalar.c) that SIMD files reuse for odd shapes. */
void idf_cpu_q4_tile_scalar(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                            int64_t ldy, int rows_valid, const float *bias);
void idf_cpu_q8_tile_scalar(const idf_tile *tl, int64_t ng, const idf_qact *a, int64_t x0, int nx, float *y,
                            int64_t ldy, int rows_valid, const float *bias);
void idf_cpu_quant_scalar(const float *x, int64_t r0, int64_t n, idf_qact *a);
void idf_cpu_fp16_row_scalar(const void *src, int64_t n, float *dst);

#endif /* IDF_CPU_KERNELS_H */
