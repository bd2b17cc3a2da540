/*
 * Numerics core of ln_deploy's normalization kernels, shared by the CUDA kernels and the host.
 *
 * Everything a kernel computes per element or per row statistic is written once here as
 * __host__ __device__ code, and the launch-strategy choice is a pure host function, so a CPU
 * test can check both without a GPU. Rules the kernels follow (see docs/kernels.md):
 *   - statistics in fp32; variance = mean of squared deviations from the mean of the row held
 *     on chip (never E[x^2] - E[x]^2); epsilon comes from the caller (the model);
 *   - the mean is kept as x[0] + offset with offset = sum(x - x[0]) / n, and deviations are
 *     (x - x[0]) - offset: exact for a constant row (the output is the bias), and accurate for
 *     rows with a large common offset (|x| ~ 1e4, spread ~ 1e-2), where a rounded fp32 mean
 *     alone would cost several percent;
 *   - explicit fmaf() wherever a fused multiply-add is meant; the kernels are compiled with
 *     --fmad=false and the host with -ffp-contract=off, so both round identically;
 *   - the per-row reduction tree is fixed by the strategy, which in the default mode depends
 *     only on (hidden, dtype): a row's output is bitwise independent of the batch around it.
 */
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "lnKernels.h"

#if defined(__CUDACC__)
#define LN_HD __host__ __device__ __forceinline__
#else
#define LN_HD inline
#endif

namespace ln_deploy
{
namespace core
{

constexpr int kWarp = 32;
constexpr int kMaxThreadsPerRow = 1024;  // streaming kernel (rows too long for registers)
// Register kernel: up to 1024 threads per row, 4 x 16 bytes of the row per thread. With
// __launch_bounds__(1024, 1) every configuration fits 64 registers (>= 50% occupancy).
constexpr int kMaxRegisterThreads = 1024;
constexpr int kMaxRegisterIters = 4;
constexpr int kRegisterBudget = 64; // registers per thread, every kernel (tests/kernels/test_kernel_build.py)
constexpr int kMinBlockThreads = 128;  // rows are packed into blocks of at least this many threads
constexpr int kSplitThreads = 256;     // block size of the opt-in split-row kernel
constexpr int kMaxSplitCtas = 1024;    // rows * splits bound of the split-row kernel
constexpr int kSplitMinChunksPerCta = kSplitThreads; // >= one 16-byte chunk per thread per CTA

// ---- element conversions (round to nearest even, as PyTorch) --------------------------------
LN_HD float toFloat(float v) { return v; }
LN_HD float toFloat(__half v) { return __half2float(v); }
LN_HD float toFloat(__nv_bfloat16 v)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // bf16 -> fp32 is exact: the bits shifted up (what __bfloat162float compiles to before sm_90;
    // from sm_90 its cvt form costs the bf16 row kernels their 64-register budget)
    return __uint_as_float(static_cast<unsigned>(__bfloat16_as_ushort(v)) << 16);
#else
    return __bfloat162float(v);
#endif
}

template <typename T>
LN_HD T fromFloat(float v);
template <>
LN_HD float fromFloat<float>(float v) { return v; }
template <>
LN_HD __half fromFloat<__half>(float v) { return __float2half_rn(v); }
template <>
LN_HD __nv_bfloat16 fromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// x + residual, rounded to the input type first: the same value PyTorch's eager `x + r`
// produces, the value written to the optional sum output and the value that is normalized.
template <typename T>
LN_HD T addResidual(T x, T r) { return fromFloat<T>(toFloat(x) + toFloat(r)); }

// ---- per-row statistics -------------------------------------------------------------------
// LayerNorm: mean = shift + offset, shift = the row's first element, offset = sum(x - shift) / n.
// RMSNorm: shift = offset = 0.
LN_HD float meanOffset(float shiftedSum, int64_t n) { return shiftedSum / static_cast<float>(n); }

// x - mean, computed as (x - shift) - offset (x - shift is exact for x within 2x of shift).
LN_HD float deviation(float x, float shift, float offset) { return (x - shift) - offset; }

// Accumulate one squared deviation.
LN_HD float accumulateSquare(float acc, float d) { return fmaf(d, d, acc); }

// 1 / sqrt(var + eps) with IEEE sqrt and division (not rsqrtf), identical on host and device.
LN_HD float finishRstd(float sumSquares, int64_t n, float eps)
{
    return 1.0f / sqrtf(sumSquares / static_cast<float>(n) + eps);
}

// y = (x - mean) * rstd * w + b; b = 0 when there is no bias (fmaf(t, w, 0) == t * w rounded).
LN_HD float normalizeOne(float x, float shift, float offset, float rstd, float w, float b)
{
    return fmaf(deviation(x, shift, offset) * rstd, w, b);
}

// Split-row kernel: merge per-CTA (n_j, offset_j, M2_j about the CTA's own mean) into the row's M2
// with the exact parallel-variance identity M2 = sum(M2_j + n_j (m_j - mean)^2); both means are
// offsets from the same shift.
LN_HD float mergeM2(float acc, float m2j, int64_t nj, float offsetj, float offset)
{
    float const d = offsetj - offset;
    return acc + fmaf(static_cast<float>(nj) * d, d, m2j);
}

// ---- strategy selection: a pure host function of (hidden, dtype, mode) ---------------------
LN_HD int elementBytes(int32_t dtype) { return dtype == LN_DTYPE_F32 ? 4 : 2; }
LN_HD int vecElems(int32_t dtype) { return 16 / elementBytes(dtype); }

inline int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int32_t pow2Ceil(int64_t v)
{
    int32_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

/*
 * Default (batch-invariant) choice, by the number of 16-byte chunks C in a row:
 *   C <= 32         -> threads_per_row = pow2ceil(C) <= 32, one chunk each: several rows per warp;
 *   C <= 4 * 1024   -> up to 4 chunks per thread, pow2ceil(C / chunks) threads: a warp (medium
 *                      rows) or a block of up to 1024 threads (long rows) per row, the row held in
 *                      registers; that is hidden <= 16384 (fp32) / 32768 (fp16, bf16);
 *   larger          -> streaming kernel (1024 threads; the row staged in shared memory when it
 *                      fits the device's opt-in limit, else re-read from L1/L2 in each pass).
 * Alignment and hidden % vec never enter: misaligned or odd rows run the same kernel with
 * narrower loads, so the tree (and every bit) is the same.
 * `rows` is accepted but only consulted in the opt-in split mode (batch_invariant == 0), which
 * splits a long row over several CTAs when there are too few rows to fill the GPU.
 */
inline int selectStrategy(int64_t hidden, int32_t dtype, int64_t rows, int32_t batchInvariant, int32_t smCount,
    ln_strategy* out)
{
    if (out == nullptr || rows < 0)
        return LN_ERR_INVALID_ARGUMENT;
    if (dtype != LN_DTYPE_F32 && dtype != LN_DTYPE_F16 && dtype != LN_DTYPE_BF16)
        return LN_ERR_UNSUPPORTED_DTYPE;
    if (hidden < 1 || hidden > LN_MAX_HIDDEN)
        return LN_ERR_HIDDEN_RANGE;
    ln_strategy s{};
    s.vec = vecElems(dtype);
    int64_t const chunks = ceilDiv(hidden, s.vec);
    s.kernel = LN_KERNEL_REGISTER;
    s.splits = 1;
    s.chunks_per_split = static_cast<int32_t>(chunks);
    if (chunks <= kWarp)
    {
        s.threads_per_row = pow2Ceil(chunks);
        s.iters = 1;
    }
    else
    {
        s.iters = pow2Ceil(ceilDiv(chunks, kWarp));
        if (s.iters > kMaxRegisterIters)
            s.iters = kMaxRegisterIters;
        s.threads_per_row = pow2Ceil(ceilDiv(chunks, s.iters));
        if (s.threads_per_row > kMaxRegisterThreads)
        {
            s.kernel = LN_KERNEL_MULTIPASS;
            s.threads_per_row = kMaxThreadsPerRow;
            s.iters = static_cast<int32_t>(ceilDiv(chunks, kMaxThreadsPerRow));
        }
    }
    s.block_threads = s.threads_per_row > kMinBlockThreads ? s.threads_per_row : kMinBlockThreads;
    s.rows_per_block = s.block_threads / s.threads_per_row;

    if (!batchInvariant && rows > 0 && smCount > 0 && chunks >= 2 * kSplitMinChunksPerCta)
    {
        // Few long rows: one CTA per row would leave most SMs idle. The split count depends on
        // `rows`, so the reduction tree does too: this is why the mode is opt-in.
        int64_t splits = (2 * static_cast<int64_t>(smCount)) / rows;
        int64_t const byLength = chunks / kSplitMinChunksPerCta;
        int64_t const byWorkspace = kMaxSplitCtas / rows;
        splits = splits < byLength ? splits : byLength;
        splits = splits < byWorkspace ? splits : byWorkspace;
        if (splits >= 2)
        {
            int64_t const per = ceilDiv(chunks, splits);
            s.kernel = LN_KERNEL_SPLIT_ROW;
            s.splits = static_cast<int32_t>(ceilDiv(chunks, per)); // no empty CTA
            s.chunks_per_split = static_cast<int32_t>(per);
            s.threads_per_row = kSplitThreads;
            s.iters = static_cast<int32_t>(ceilDiv(per, kSplitThreads));
            s.block_threads = kSplitThreads;
            s.rows_per_block = 1;
        }
    }
    *out = s;
    return LN_OK;
}

// Workspace of the split-row kernel: two floats per (row, split), rows * splits <= kMaxSplitCtas.
inline size_t workspaceBytes(int32_t batchInvariant)
{
    return batchInvariant ? 0 : static_cast<size_t>(kMaxSplitCtas) * 2 * sizeof(float);
}

} // namespace core
} // namespace ln_deploy
