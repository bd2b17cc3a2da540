/*
 * Fused normalization kernels (forward, inference): LayerNorm and RMSNorm, each optionally
 * preceded by a residual add (s = x + residual, optionally written out) and followed by an
 * optional bias. T = element type of x/residual/y/sum (float, __half, __nv_bfloat16);
 * W = type of scale/bias (T or float). All arithmetic goes through normCore.h.
 *
 * Rows are split into logical 16-byte chunks (N = 16 / sizeof(T) elements); thread t of a row's
 * group owns chunks t, t + G, t + 2G, ... Whether a chunk is fetched with one vector load or N
 * scalar loads depends on pointer alignment, but the arithmetic on it does not: alignment can
 * differ between a row alone and the same row in a batch, its bits cannot.
 *
 * Only included by the per-type translation units (normKernels{F32,F16,BF16}.cu), each of which
 * instantiates launchNorm<T, W> for its types: three small files compile in parallel.
 */
#pragma once

#include <cuda_runtime.h>

#include "normCore.h"

namespace ln_deploy
{
namespace kernels
{

using namespace ln_deploy::core;

struct KernelParams
{
    void const* x;
    void const* residual;
    void const* scale;
    void const* bias;
    void* y;
    void* sumOut;
    float* workspace;
    int64_t rows;
    int64_t n;
    float eps;
    int32_t rms;
    int32_t G;            // threads per row
    int32_t log2G;
    int32_t rowsPerBlock;
    int32_t iters;        // multi-pass and split kernels (runtime)
    int32_t splits;
    int32_t chunksPerSplit;
    int32_t vecOk;        // every pointer 16-byte aligned and hidden % N == 0
};

template <typename T, int N>
struct alignas(16) Chunk
{
    T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Chunk<T, N> loadChunk(T const* p, int e0, int n, bool vecOk)
{
    Chunk<T, N> c;
    if (vecOk && e0 + N <= n)
        c = *reinterpret_cast<Chunk<T, N> const*>(p + e0);
    else
    {
#pragma unroll
        for (int j = 0; j < N; ++j)
            c.v[j] = e0 + j < n ? p[e0 + j] : fromFloat<T>(0.0f);
    }
    return c;
}

template <typename T, int N>
__device__ __forceinline__ void storeChunk(T* p, int e0, int n, bool vecOk, Chunk<T, N> const& c)
{
    if (vecOk && e0 + N <= n)
        *reinterpret_cast<Chunk<T, N>*>(p + e0) = c;
    else
    {
#pragma unroll
        for (int j = 0; j < N; ++j)
            if (e0 + j < n)
                p[e0 + j] = c.v[j];
    }
}

// A full, 16-byte aligned chunk: the register kernel's only path (it runs only when vecOk).
template <typename T, int N>
__device__ __forceinline__ Chunk<T, N> loadChunkVec(T const* p, int e0)
{
    return *reinterpret_cast<Chunk<T, N> const*>(p + e0);
}

// x (+ residual) for one chunk; writes the sum output when asked (exactly once per element).
template <typename T, int N, bool kVecOnly>
__device__ __forceinline__ Chunk<T, N> loadInput(KernelParams const& p, int64_t off, int e0, bool writeSum)
{
    int const n = static_cast<int>(p.n);
    Chunk<T, N> c = kVecOnly ? loadChunkVec<T, N>(static_cast<T const*>(p.x) + off, e0)
                             : loadChunk<T, N>(static_cast<T const*>(p.x) + off, e0, n, p.vecOk);
    if (p.residual != nullptr)
    {
        Chunk<T, N> const r = kVecOnly ? loadChunkVec<T, N>(static_cast<T const*>(p.residual) + off, e0)
                                       : loadChunk<T, N>(static_cast<T const*>(p.residual) + off, e0, n, p.vecOk);
#pragma unroll
        for (int j = 0; j < N; ++j)
            c.v[j] = addResidual(c.v[j], r.v[j]);
        if (writeSum && p.sumOut != nullptr)
            storeChunk<T, N>(static_cast<T*>(p.sumOut) + off, e0, n, kVecOnly || p.vecOk, c);
    }
    return c;
}

// The row's first element (after the residual add): the shift of the LayerNorm mean.
template <typename T>
__device__ __forceinline__ float rowShift(KernelParams const& p, int64_t off)
{
    T v = static_cast<T const*>(p.x)[off];
    if (p.residual != nullptr)
        v = addResidual(v, static_cast<T const*>(p.residual)[off]);
    return toFloat(v);
}

// Sum over the G threads of a row. Every lane ends with the same value; the tree depends on G
// only (see groupReduceHost in normHostReference.h, which mirrors it).
__device__ __forceinline__ float groupReduce(float v, int G, float* red, int firstWarp)
{
    int const width = G < kWarp ? G : kWarp;
    for (int off = width >> 1; off > 0; off >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    if (G <= kWarp)
        return v;
    if ((threadIdx.x & (kWarp - 1)) == 0)
        red[threadIdx.x / kWarp] = v;
    __syncthreads();
    float t = red[firstWarp];
    for (int w = 1; w < G / kWarp; ++w)
        t += red[firstWarp + w];
    return t;
}

template <typename T, typename W, int N, bool kVecOnly>
__device__ __forceinline__ void writeOutput(
    KernelParams const& p, int64_t off, int e0, Chunk<T, N> const& v, float shift, float offset, float rstd)
{
    int const n = static_cast<int>(p.n);
    Chunk<W, N> const w = kVecOnly ? loadChunkVec<W, N>(static_cast<W const*>(p.scale), e0)
                                   : loadChunk<W, N>(static_cast<W const*>(p.scale), e0, n, p.vecOk);
    Chunk<W, N> b;
    if (p.bias != nullptr)
        b = kVecOnly ? loadChunkVec<W, N>(static_cast<W const*>(p.bias), e0)
                     : loadChunk<W, N>(static_cast<W const*>(p.bias), e0, n, p.vecOk);
    Chunk<T, N> o;
#pragma unroll
    for (int j = 0; j < N; ++j)
        o.v[j] = fromFloat<T>(
            normalizeOne(toFloat(v.v[j]), shift, offset, rstd, toFloat(w.v[j]), p.bias != nullptr ? toFloat(b.v[j]) : 0.0f));
    storeChunk<T, N>(static_cast<T*>(p.y) + off, e0, n, kVecOnly || p.vecOk, o);
}

// Rows held in registers: ITERS chunks of 16 bytes per thread, G threads per row (G < 32:
// 32/G rows per warp; G >= 32: a warp or a block per row). Grid-stride over row groups.
// Runs only when vecOk (aligned pointers, hidden % N == 0): every chunk is full or absent. In-row
// indices are 32-bit (hidden <= 2^24) to keep register pressure down.
template <typename T, typename W, int ITERS>
__global__ void __launch_bounds__(kMaxRegisterThreads) normRegisterKernel(KernelParams p)
{
    constexpr int N = 16 / sizeof(T);
    __shared__ float red[2][kMaxRegisterThreads / kWarp];
    int const G = p.G;
    int const group = threadIdx.x >> p.log2G;
    int const tN = (threadIdx.x & (G - 1)) * N; // first element of this thread's first chunk
    int const GN = G * N;                       // distance between a thread's chunks
    int const firstWarp = (group * G) / kWarp;
    int64_t const step = static_cast<int64_t>(gridDim.x) * p.rowsPerBlock;
    for (int64_t base = static_cast<int64_t>(blockIdx.x) * p.rowsPerBlock; base < p.rows; base += step)
    {
        int64_t const row = base + group;
        // lanes past the last row own no element but still take part in shuffles and barriers
        int const nRow = row < p.rows ? static_cast<int>(p.n) : 0;
        int64_t const off = row * p.n;
        Chunk<T, N> v[ITERS];
#pragma unroll
        for (int i = 0; i < ITERS; ++i)
        {
            if (tN + i * GN < nRow)
                v[i] = loadInput<T, N, true>(p, off, tN + i * GN, true);
            else
            {
#pragma unroll
                for (int j = 0; j < N; ++j)
                    v[i].v[j] = fromFloat<T>(0.0f);
            }
        }
        float const shift = !p.rms && nRow > 0 ? rowShift<T>(p, off) : 0.0f;
        float offset = 0.0f;
        if (!p.rms)
        {
            float acc = 0.0f;
#pragma unroll
            for (int i = 0; i < ITERS; ++i)
#pragma unroll
                for (int j = 0; j < N; ++j)
                    if (tN + i * GN + j < nRow)
                        acc = acc + (toFloat(v[i].v[j]) - shift);
            offset = meanOffset(groupReduce(acc, G, red[0], firstWarp), p.n);
        }
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < ITERS; ++i)
#pragma unroll
            for (int j = 0; j < N; ++j)
                if (tN + i * GN + j < nRow)
                    acc = accumulateSquare(acc, deviation(toFloat(v[i].v[j]), shift, offset));
        float const rstd = finishRstd(groupReduce(acc, G, red[1], firstWarp), p.n, p.eps);
#pragma unroll
        for (int i = 0; i < ITERS; ++i)
        {
            if (tN + i * GN < nRow)
                writeOutput<T, W, N, true>(p, off, tN + i * GN, v[i], shift, offset, rstd);
            // With 8 chunks held, hoisting every chunk's scale/bias loads (32 bytes each for fp32
            // scale) above the stores would exceed 128 registers: fence every other chunk.
            if (ITERS >= 8 && (i & 1))
                asm volatile("" ::: "memory");
        }
        if (G > kWarp)
            __syncthreads(); // red[] is rewritten for the next row
    }
}

// Streaming kernel: the same chunk ownership and reduction tree as the register kernel with the
// same (G, iters), but the row is re-read (from L1/L2) in each pass instead of held. Used for
// rows too long for registers (G = 1024, iters > 8) and for every strategy whose pointers are
// misaligned or whose hidden size is not a multiple of N (scalar loads), so the choice between
// vector and scalar loads never changes a row's bits.
template <typename T, typename W>
__global__ void __launch_bounds__(kMaxThreadsPerRow) normStreamKernel(KernelParams p)
{
    constexpr int N = 16 / sizeof(T);
    __shared__ float red[2][kMaxThreadsPerRow / kWarp];
    int const G = p.G;
    int const group = threadIdx.x >> p.log2G;
    int const tN = (threadIdx.x & (G - 1)) * N;
    int const GN = G * N;
    int const firstWarp = (group * G) / kWarp;
    int64_t const step = static_cast<int64_t>(gridDim.x) * p.rowsPerBlock;
    for (int64_t base = static_cast<int64_t>(blockIdx.x) * p.rowsPerBlock; base < p.rows; base += step)
    {
        int64_t const row = base + group;
        int const nRow = row < p.rows ? static_cast<int>(p.n) : 0;
        int64_t const off = row * p.n;
        float const shift = !p.rms && nRow > 0 ? rowShift<T>(p, off) : 0.0f;
        float offset = 0.0f;
        if (!p.rms)
        {
            float acc = 0.0f;
            for (int i = 0; i < p.iters; ++i)
            {
                int const e0 = tN + i * GN;
                if (e0 >= nRow)
                    break;
                Chunk<T, N> const v = loadInput<T, N, false>(p, off, e0, true);
#pragma unroll
                for (int j = 0; j < N; ++j)
                    if (e0 + j < nRow)
                        acc = acc + (toFloat(v.v[j]) - shift);
            }
            offset = meanOffset(groupReduce(acc, G, red[0], firstWarp), p.n);
        }
        float acc = 0.0f;
        for (int i = 0; i < p.iters; ++i)
        {
            int const e0 = tN + i * GN;
            if (e0 >= nRow)
                break;
            Chunk<T, N> const v = loadInput<T, N, false>(p, off, e0, p.rms != 0);
#pragma unroll
            for (int j = 0; j < N; ++j)
                if (e0 + j < nRow)
                    acc = accumulateSquare(acc, deviation(toFloat(v.v[j]), shift, offset));
        }
        float const rstd = finishRstd(groupReduce(acc, G, red[1], firstWarp), p.n, p.eps);
        for (int i = 0; i < p.iters; ++i)
        {
            int const e0 = tN + i * GN;
            if (e0 >= nRow)
                break;
            writeOutput<T, W, N, false>(p, off, e0, loadInput<T, N, false>(p, off, e0, false), shift, offset, rstd);
        }
        if (G > kWarp)
            __syncthreads();
    }
}

// Opt-in split-row kernels (batch_invariant = 0): grid (splits, rows). Phase 1: CTA j of a row
// reduces its slice to (shifted sum S_j, M2_j about its own mean) in workspace; phase 2 merges
// the row's slices in slice order and normalizes its slice.
__device__ __forceinline__ void splitRange(KernelParams const& p, int N, int64_t& begin, int64_t& end, int64_t& count)
{
    int64_t const C = (p.n + N - 1) / N;
    begin = static_cast<int64_t>(blockIdx.x) * p.chunksPerSplit;
    end = begin + p.chunksPerSplit < C ? begin + p.chunksPerSplit : C;
    count = (end * N < p.n ? end * N : p.n) - begin * N;
}

template <typename T, typename W>
__global__ void __launch_bounds__(kSplitThreads) normSplitStatsKernel(KernelParams p)
{
    constexpr int N = 16 / sizeof(T);
    __shared__ float red[2][kSplitThreads / kWarp];
    int64_t const row = blockIdx.y;
    int64_t const off = row * p.n;
    int64_t begin, end, count;
    splitRange(p, N, begin, end, count);
    float sum = 0.0f;
    float const shift = p.rms ? 0.0f : rowShift<T>(p, off);
    float offset = 0.0f; // of this CTA's mean from shift
    if (!p.rms)
    {
        float acc = 0.0f;
        for (int c = static_cast<int>(begin) + threadIdx.x; c < end; c += kSplitThreads)
        {
            Chunk<T, N> const v = loadInput<T, N, false>(p, off, c * N, true);
#pragma unroll
            for (int j = 0; j < N; ++j)
                if (c * N + j < p.n)
                    acc = acc + (toFloat(v.v[j]) - shift);
        }
        sum = groupReduce(acc, kSplitThreads, red[0], 0);
        offset = meanOffset(sum, count);
    }
    float acc = 0.0f;
    for (int c = static_cast<int>(begin) + threadIdx.x; c < end; c += kSplitThreads)
    {
        Chunk<T, N> const v = loadInput<T, N, false>(p, off, c * N, p.rms != 0);
#pragma unroll
        for (int j = 0; j < N; ++j)
            if (c * N + j < p.n)
                acc = accumulateSquare(acc, deviation(toFloat(v.v[j]), shift, offset));
    }
    float const m2 = groupReduce(acc, kSplitThreads, red[1], 0);
    if (threadIdx.x == 0)
    {
        float* ws = p.workspace + (row * p.splits + blockIdx.x) * 2;
        ws[0] = sum;
        ws[1] = m2;
    }
}

template <typename T, typename W>
__global__ void __launch_bounds__(kSplitThreads) normSplitApplyKernel(KernelParams p)
{
    constexpr int N = 16 / sizeof(T);
    int64_t const row = blockIdx.y;
    int64_t const off = row * p.n;
    float const* ws = p.workspace + row * p.splits * 2;
    int64_t const C = (p.n + N - 1) / N;
    float const shift = p.rms ? 0.0f : rowShift<T>(p, off);
    float offset = 0.0f;
    float total = 0.0f;
    if (!p.rms)
    {
        float ssum = 0.0f;
        for (int j = 0; j < p.splits; ++j)
            ssum += ws[2 * j];
        offset = meanOffset(ssum, p.n);
        for (int j = 0; j < p.splits; ++j)
        {
            int64_t const b = static_cast<int64_t>(j) * p.chunksPerSplit;
            int64_t const e = b + p.chunksPerSplit < C ? b + p.chunksPerSplit : C;
            int64_t const cnt = (e * N < p.n ? e * N : p.n) - b * N;
            total = mergeM2(total, ws[2 * j + 1], cnt, meanOffset(ws[2 * j], cnt), offset);
        }
    }
    else
        for (int j = 0; j < p.splits; ++j)
            total += ws[2 * j + 1];
    float const rstd = finishRstd(total, p.n, p.eps);
    int64_t begin, end, count;
    splitRange(p, N, begin, end, count);
    for (int c = static_cast<int>(begin) + threadIdx.x; c < end; c += kSplitThreads)
        writeOutput<T, W, N, false>(p, off, c * N, loadInput<T, N, false>(p, off, c * N, false), shift, offset, rstd);
}

inline bool aligned16(void const* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Typed launcher: validated arguments and a strategy from selectStrategy; returns a cudaError_t.
template <typename T, typename W>
int launchNorm(ln_norm_args const& a, ln_strategy const& s, int smCount, cudaStream_t stream)
{
    constexpr int N = 16 / sizeof(T);
    KernelParams p{};
    p.x = a.x;
    p.residual = a.residual;
    p.scale = a.scale;
    p.bias = a.bias;
    p.y = a.y;
    p.sumOut = a.sum_out;
    p.workspace = static_cast<float*>(a.workspace);
    p.rows = a.rows;
    p.n = a.hidden;
    p.eps = a.epsilon;
    p.rms = a.kind == LN_KIND_RMS_NORM;
    p.G = s.threads_per_row;
    p.log2G = 0;
    while ((1 << p.log2G) < p.G)
        ++p.log2G;
    p.rowsPerBlock = s.rows_per_block;
    p.iters = s.iters;
    p.splits = s.splits;
    p.chunksPerSplit = s.chunks_per_split;
    p.vecOk = a.hidden % N == 0 && aligned16(a.x) && aligned16(a.y) && aligned16(a.scale)
        && (a.residual == nullptr || aligned16(a.residual)) && (a.sum_out == nullptr || aligned16(a.sum_out))
        && (a.bias == nullptr || aligned16(a.bias));
    // A few waves of resident blocks; the grid size never changes a row's reduction tree.
    int64_t const residentBlocks = static_cast<int64_t>(smCount) * (2048 / s.block_threads);
    auto gridFor = [&](int64_t blocks) {
        int64_t const cap = residentBlocks * 8;
        return static_cast<unsigned>(blocks < cap ? blocks : cap);
    };
    switch (s.kernel)
    {
    case LN_KERNEL_REGISTER:
    case LN_KERNEL_MULTIPASS:
    {
        unsigned const grid = gridFor(ceilDiv(a.rows, s.rows_per_block));
        if (s.kernel == LN_KERNEL_MULTIPASS || !p.vecOk)
            normStreamKernel<T, W><<<grid, s.block_threads, 0, stream>>>(p);
        else
        {
            switch (s.iters)
            {
            case 1: normRegisterKernel<T, W, 1><<<grid, s.block_threads, 0, stream>>>(p); break;
            case 2: normRegisterKernel<T, W, 2><<<grid, s.block_threads, 0, stream>>>(p); break;
            case 4: normRegisterKernel<T, W, 4><<<grid, s.block_threads, 0, stream>>>(p); break;
            case 8: normRegisterKernel<T, W, 8><<<grid, s.block_threads, 0, stream>>>(p); break;
            default: return cudaErrorInvalidValue;
            }
        }
        return cudaGetLastError();
    }
    case LN_KERNEL_SPLIT_ROW:
    {
        dim3 const grid(s.splits, static_cast<unsigned>(a.rows));
        normSplitStatsKernel<T, W><<<grid, kSplitThreads, 0, stream>>>(p);
        cudaError_t const e = cudaGetLastError();
        if (e != cudaSuccess)
            return e;
        normSplitApplyKernel<T, W><<<grid, kSplitThreads, 0, stream>>>(p);
        return cudaGetLastError();
    }
    default: return cudaErrorInvalidValue;
    }
}

} // namespace kernels
} // namespace ln_deploy

// Explicit instantiation, one line per (T, W) pair in the per-type translation units.
#define LN_DEPLOY_INSTANTIATE_LAUNCH(T, W)                                                                             \
    template int ln_deploy::kernels::launchNorm<T, W>(ln_norm_args const&, ln_strategy const&, int, cudaStream_t);
