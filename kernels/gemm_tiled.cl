/*
 * gemm_tiled.cl - y[n, m] = x[n, k] W[m, k]^T (+ bias) for many input rows at
 * once (prefill chunks, the vision tower, the perceiver: n >= the tuning's
 * gm_min_n), W in any stored type: Q4/Q8 ROWTILE (quant/quant.h) or row-major
 * F32/F16. Decode (n = 1) and small n stay on matmul_q4/q8/f.cl.
 *
 * Data layout: W as in matmul_q4.cl / matmul_q8.cl / matmul_f.cl (ROWTILE
 * element (r, j): tile r / R, scale at ((j / 32) * R + r % R) * 2 bytes, the
 * group's quant bytes after the ng * R scales). x [n, k] fp32, y [n] rows ldy
 * floats apart; x, bias and y are (buffer, byte offset) pairs (prelude.cl).
 *
 * Work-item mapping: a work-group owns a GM_TM x GM_TN block of y (GM_TM
 * weight rows by GM_TN input rows) and has (GM_TM / GM_WM, GM_TN / GM_WN)
 * work-items; each keeps GM_WM x GM_WN float accumulators, its weight rows
 * GM_TM / GM_WM apart and its input rows GM_TN / GM_WN apart, so neighbouring
 * work-items read neighbouring tile rows. K is walked one group of IDFX_QK
 * (32) values at a time: the work-group dequantises the GM_TM x 32 weight
 * tile into local memory (every weight byte is read from global memory once
 * per work-group, so once per GM_TN input rows: read/w = ceil(n / GM_TN)),
 * loads the GM_TN x 32 input tile next to it, and every work-item multiplies
 * out of local memory. Tile rows are padded by one element so column walks
 * do not hit one local-memory bank. Weight rows past m and input rows past n
 * are zeros in the tiles and are never stored; an F16/F32 k that is not a
 * multiple of 32 is zero-padded in the last step.
 * Compute type: tiles are IDF_CT (half on fp16 builds: half the local memory,
 * twice the ALU rate on Adreno/Mali); one step's 32 products are summed in
 * IDF_CT and added to the float accumulators, so the reduction over K is fp32.
 * book is the Q4 codebook (quant.h says why it is an argument).
 *
 * Size rule (backend_opencl.c tuning_clamp and gemm_fit): the block is fixed
 * at build time (reqd_work_group_size), so the build options are chosen from
 * the limits: (GM_TM / GM_WM) * (GM_TN / GM_WN) work-items within
 * CL_DEVICE_MAX_WORK_GROUP_SIZE, and (GM_TM + GM_TN) * 33 + 16 IDF_CT of
 * tiles within CL_DEVICE_LOCAL_MEM_SIZE; GM_TN halves first, then GM_TM. If
 * the built kernel's CL_KERNEL_WORK_GROUP_SIZE is smaller still, the program
 * is rebuilt once with a block that fits it; where no block fits, matmuls
 * stay on matmul_q4/q8/f.cl.
 */
#ifndef GM_TM
#define GM_TM 32 /* weight rows per work-group: more rows share each loaded input tile */
#endif
#ifndef GM_TN
#define GM_TN 32 /* input rows per work-group: each weight byte is read ceil(n / GM_TN) times */
#endif
#ifndef GM_WM
#define GM_WM 4 /* weight rows per work-item (register block) */
#endif
#ifndef GM_WN
#define GM_WN 4 /* input rows per work-item (register block) */
#endif
#define GM_LX (GM_TM / GM_WM)
#define GM_LY (GM_TN / GM_WN)
#define GM_PAD (IDFX_QK + 1)

__kernel __attribute__((reqd_work_group_size(GM_LX, GM_LY, 1))) void
gemm_tiled(__global const uchar *w, uint type, uint R, uint rows, __global const float *x, ulong xo, uint n, uint k,
           __global const float *bias, ulong bo, uint has_bias, __global float *y, ulong yo, uint ldy,
           __constant char *book) {
    __local IDF_CT wt[GM_TM * GM_PAD];
    __local IDF_CT xt[GM_TN * GM_PAD];
    __local IDF_CT cb[16];
    x = IDF_AT(__global const float *, x, xo);
    bias = IDF_AT(__global const float *, bias, bo);
    y = IDF_AT(__global float *, y, yo);
    const uint lx = get_local_id(0), ly = get_local_id(1), lid = ly * GM_LX + lx, nl = GM_LX * GM_LY;
    const uint m0 = get_group_id(0) * GM_TM, i0 = get_group_id(1) * GM_TN;
    for (uint i = lid; i < 16; i += nl)
        cb[i] = (IDF_CT)book[i]; /* local copy: divergent constant reads serialise on mobile GPUs */
    const uint ng = (k + IDFX_QK - 1) / IDFX_QK;
    const uint qb = type == IDFX_TYPE_Q4 ? IDFX_Q4_QBYTES : IDFX_Q8_QBYTES;
    const size_t tile_bytes = (size_t)ng * R * (IDFX_SCALE_BYTES + qb); /* ROWTILE: k % 32 == 0 */
    float acc[GM_WM][GM_WN];
    for (int a = 0; a < GM_WM; a++)
        for (int b = 0; b < GM_WN; b++)
            acc[a][b] = 0.0f;
    barrier(CLK_LOCAL_MEM_FENCE);

    for (uint g = 0; g < ng; g++) {
        if (type == IDFX_TYPE_Q4) { /* one quant byte per work-item step: two weights */
            for (uint e = lid; e < GM_TM * 16; e += nl) {
                const uint r = e / 16, j = e % 16, row = m0 + r;
                IDF_CT lo = 0, hi = 0;
                if (row < rows) {
                    __global const uchar *tb = w + (size_t)(row / R) * tile_bytes;
                    const uint rr = row % R;
                    const IDF_CT d = (IDF_CT)vload_half(g * R + rr, (__global const half *)tb);
                    const uchar v =
                        tb[(size_t)ng * R * IDFX_SCALE_BYTES + (size_t)(g * R + rr) * IDFX_Q4_QBYTES + j];
                    lo = d * cb[v & 15];
                    hi = d * cb[v >> 4];
                }
                wt[r * GM_PAD + j] = lo;
                wt[r * GM_PAD + j + 16] = hi;
            }
        } else if (type == IDFX_TYPE_Q8) {
            for (uint e = lid; e < GM_TM * IDFX_QK; e += nl) {
                const uint r = e / IDFX_QK, j = e % IDFX_QK, row = m0 + r;
                IDF_CT v = 0;
                if (row < rows) {
                    __global const uchar *tb = w + (size_t)(row / R) * tile_bytes;
                    const uint rr = row % R;
                    const IDF_CT d = (IDF_CT)vload_half(g * R + rr, (__global const half *)tb);
                    v = d * (IDF_CT)((__global const char *)tb)[(size_t)ng * R * IDFX_SCALE_BYTES +
                                                                (size_t)(g * R + rr) * IDFX_Q8_QBYTES + j];
                }
                wt[r * GM_PAD + j] = v;
            }
        } else { /* F32 / F16, row-major */
            for (uint e = lid; e < GM_TM * IDFX_QK; e += nl) {
                const uint r = e / IDFX_QK, j = e % IDFX_QK, row = m0 + r, col = g * IDFX_QK + j;
                IDF_CT v = 0;
                if (row < rows && col < k) {
                    const size_t o = (size_t)row * k + col;
                    v = type == IDFX_TYPE_F16 ? (IDF_CT)vload_half(o, (__global const half *)w)
                                              : (IDF_CT)((__global const float *)w)[o];
                }
                wt[r * GM_PAD + j] = v;
            }
        }
        for (uint e = lid; e < GM_TN * IDFX_QK; e += nl) {
            const uint i = e / IDFX_QK, j = e % IDFX_QK, col = g * IDFX_QK + j;
            xt[i * GM_PAD + j] = i0 + i < n && col < k ? (IDF_CT)x[(size_t)(i0 + i) * k + col] : (IDF_CT)0;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        IDF_CT s[GM_WM][GM_WN];
        for (int a = 0; a < GM_WM; a++)
            for (int b = 0; b < GM_WN; b++)
                s[a][b] = 0;
        for (int j = 0; j < IDFX_QK; j++) {
            IDF_CT wv[GM_WM], xv[GM_WN];
            for (int a = 0; a < GM_WM; a++)
                wv[a] = wt[(lx + a * GM_LX) * GM_PAD + j];
            for (int b = 0; b < GM_WN; b++)
                xv[b] = xt[(ly + b * GM_LY) * GM_PAD + j];
            for (int a = 0; a < GM_WM; a++)
                for (int b = 0; b < GM_WN; b++)
                    s[a][b] += wv[a] * xv[b];
        }
        for (int a = 0; a < GM_WM; a++)
            for (int b = 0; b < GM_WN; b++)
                acc[a][b] += (float)s[a][b];
        barrier(CLK_LOCAL_MEM_FENCE); /* the tiles are overwritten by the next step */
    }
    for (int a = 0; a < GM_WM; a++) {
        const uint row = m0 + lx + a * GM_LX;
        if (row >= rows)
            continue;
        const float bv = has_bias ? bias[row] : 0.0f;
        for (int b = 0; b < GM_WN; b++) {
            const uint i = i0 + ly + b * GM_LY;
            if (i < n)
                y[(size_t)i * ldy + row] = acc[a][b] + bv;
        }
    }
}
