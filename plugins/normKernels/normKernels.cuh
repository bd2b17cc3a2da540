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

#include <atomic>

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
    int32_t staged;       // streaming kernel: x (+ residual) of the row kept in dynamic shared memory
    // Low address bits (& 15) of x | residual | sum | y and of scale | bias. A chunk starts a
    // multiple of 16 bytes into its row, so a row's loads share the alignment of its start.
    uint32_t rowMis;
    uint32_t weightMis;
};

// Alignment bits shared by every chunk of row `off` (elements from the tensors' starts).
template <typename T>
__device__ __forceinline__ unsigned rowMisalignment(KernelParams const& p, int64_t off)
{
    return (p.rowMis | static_cast<unsigned>(off * static_cast<int64_t>(sizeof(T)))) & 15u;
}

template <typename T, int N>
struct alignas(16) Chunk
{
    T v[N];
};

// Makes the compiler forget what it derived from a chunk's registers (e.g. the 8-32 floats each
// pass converts the row to): each pass converts again instead of keeping them live, which is what
// holds the row kernels at 64 registers. The bits are untouched.
template <typename T, int N>
__device__ __forceinline__ void forgetDerived(Chunk<T, N>& c)
{
    uint32_t* w = reinterpret_cast<uint32_t*>(&c);
#pragma unroll
    for (int k = 0; k < static_cast<int>(sizeof(c) / 4); ++k)
        asm volatile("" : "+r"(w[k]));
}

// One logical chunk (N elements: 16 bytes of x's type, 16 or 32 of an fp32 scale/bias) from p + e0,
// e0 a multiple of N. The load width follows the address: 16, 8 or 4 bytes at a time for a full chunk, element by element for the row's partial last
// chunk or a 2-byte aligned address. The values, and so every bit computed from them, do not
// depend on the width: the same element-to-thread mapping whatever the alignment.
template <typename T, int N, bool kVecOnly>
__device__ __forceinline__ Chunk<T, N> loadChunk(T const* p, int e0, int n, unsigned a)
{
    Chunk<T, N> c;
    T const* q = p + e0;
    if (kVecOnly || (e0 + N <= n && (a & 15u) == 0))
        c = *reinterpret_cast<Chunk<T, N> const*>(q);
    else if (e0 + N <= n && (a & 7u) == 0)
    {
        uint2 const* s = reinterpret_cast<uint2 const*>(q);
        uint2* d = reinterpret_cast<uint2*>(&c);
#pragma unroll
        for (int k = 0; k < static_cast<int>(sizeof(c) / 8); ++k)
            d[k] = s[k];
    }
    else if (e0 + N <= n && (a & 3u) == 0)
    {
        uint32_t const* s = reinterpret_cast<uint32_t const*>(q);
        uint32_t* d = reinterpret_cast<uint32_t*>(&c);
#pragma unroll
        for (int k = 0; k < static_cast<int>(sizeof(c) / 4); ++k)
            d[k] = s[k];
    }
    else
    {
#pragma unroll
        for (int j = 0; j < N; ++j)
            c.v[j] = e0 + j < n ? q[j] : fromFloat<T>(0.0f);
    }
    return c;
}

template <typename T, int N, bool kVecOnly>
__device__ __forceinline__ void storeChunk(T* p, int e0, int n, Chunk<T, N> const& c, unsigned a)
{
    T* q = p + e0;
    if (kVecOnly || (e0 + N <= n && (a & 15u) == 0))
        *reinterpret_cast<Chunk<T, N>*>(q) = c;
    else if (e0 + N <= n && (a & 7u) == 0)
    {
        uint2* d = reinterpret_cast<uint2*>(q);
        uint2 const* s = reinterpret_cast<uint2 const*>(&c);
#pragma unroll
        for (int k = 0; k < static_cast<int>(sizeof(c) / 8); ++k)
            d[k] = s[k];
    }
    else if (e0 + N <= n && (a & 3u) == 0)
    {
        uint32_t* d = reinterpret_cast<uint32_t*>(q);
        uint32_t const* s = reinterpret_cast<uint32_t const*>(&c);
#pragma unroll
        for (int k = 0; k < static_cast<int>(sizeof(c) / 4); ++k)
            d[k] = s[k];
    }
    else
    {
#pragma unroll
        for (int j = 0; j < N; ++j)
            if (e0 + j < n)
                q[j] = c.v[j];
    }
}

// x (+ residual) for one chunk; writes the sum output when asked (exactly once per element).
template <typename T, int N, bool kVecOnly>
__device__ __forceinline__ Chunk<T, N> loadInput(KernelParams const& p, int64_t off, int e0, bool writeSum)
{
    int const n = static_cast<int>(p.n);
    unsigned const mis = kVecOnly ? 0u : rowMisalignment<T>(p, off);
    Chunk<T, N> c = loadChunk<T, N, kVecOnly>(static_cast<T const*>(p.x) + off, e0, n, mis);
    if (p.residual != nullptr)
    {
        Chunk<T, N> const r = loadChunk<T, N, kVecOnly>(static_cast<T const*>(p.residual) + off, e0, n, mis);
#pragma unroll
        for (int j = 0; j < N; ++j)
            c.v[j] = addResidual(c.v[j], r.v[j]);
        if (writeSum && p.sumOut != nullptr)
            storeChunk<T, N, kVecOnly>(static_cast<T*>(p.sumOut) + off, e0, n, c, mis);
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
__device__ __forceinline__ void writeChunk(KernelParams const& p, int64_t off, int e0, Chunk<T, N> const& v,
    Chunk<W, N> const& w, Chunk<W, N> const& b, float shift, float offset, float rstd)
{
    Chunk<T, N> o;
#pragma unroll
    for (int j = 0; j < N; ++j)
        o.v[j] = fromFloat<T>(
            normalizeOne(toFloat(v.v[j]), shift, offset, rstd, toFloat(w.v[j]), p.bias != nullptr ? toFloat(b.v[j]) : 0.0f));
    storeChunk<T, N, kVecOnly>(
        static_cast<T*>(p.y) + off, e0, static_cast<int>(p.n), o, kVecOnly ? 0u : rowMisalignment<T>(p, off));
}

// scale and bias of one chunk (bias zero when absent)
template <typename W, int N, bool kVecOnly>
__device__ __forceinline__ void loadWeights(KernelParams const& p, int e0, Chunk<W, N>& w, Chunk<W, N>& b)
{
    int const n = static_cast<int>(p.n);
    w = loadChunk<W, N, kVecOnly>(static_cast<W const*>(p.scale), e0, n, p.weightMis);
    if (p.bias != nullptr)
        b = loadChunk<W, N, kVecOnly>(static_cast<W const*>(p.bias), e0, n, p.weightMis);
    else
    {
#pragma unroll
        for (int j = 0; j < N; ++j)
            b.v[j] = fromFloat<W>(0.0f);
    }
}

template <typename T, typename W, int N, bool kVecOnly>
__device__ __forceinline__ void writeOutput(
    KernelParams const& p, int64_t off, int e0, Chunk<T, N> const& v, float shift, float offset, float rstd)
{
    constexpr int H = 16 / sizeof(W); // weights per 16 bytes
    if constexpr (H >= N)
    {
        Chunk<W, N> w, b;
        loadWeights<W, N, kVecOnly>(p, e0, w, b);
        writeChunk<T, W, N, kVecOnly>(p, off, e0, v, w, b, shift, offset, rstd);
    }
    else
    {
        // fp32 weights of a 16-bit chunk are 32 bytes each: taken 16 bytes at a time, so that scale,
        // bias and the results of one half are live at once, not of the whole chunk
        Chunk<T, N> o;
#pragma unroll
        for (int h = 0; h < N / (H < N ? H : N); ++h)
        {
            Chunk<W, (H < N ? H : N)> w, b;
            loadWeights<W, (H < N ? H : N), kVecOnly>(p, e0 + h * H, w, b);
#pragma unroll
            for (int j = 0; j < H && j < N; ++j)
                o.v[h * H + j] = fromFloat<T>(normalizeOne(toFloat(v.v[h * H + j]), shift, offset, rstd, toFloat(w.v[j]),
                    p.bias != nullptr ? toFloat(b.v[j]) : 0.0f));
            asm volatile("" ::: "memory");
        }
        forgetDerived(o);
        storeChunk<T, N, kVecOnly>(
            static_cast<T*>(p.y) + off, e0, static_cast<int>(p.n), o, kVecOnly ? 0u : rowMisalignment<T>(p, off));
    }
}

// The ITERS chunks a thread owns of row `row` (zeros past the row or the last row).
template <typename T, int N, int ITERS, bool kVecOnly>
__device__ __forceinline__ void loadRow(KernelParams const& p, int64_t row, int tN, int GN, Chunk<T, N> (&v)[ITERS])
{
    int const nRow = row < p.rows ? static_cast<int>(p.n) : 0;
    int64_t const off = row * p.n;
#pragma unroll
    for (int i = 0; i < ITERS; ++i)
    {
        if (tN + i * GN < nRow)
            v[i] = loadInput<T, N, kVecOnly>(p, off, tN + i * GN, true);
        else
        {
#pragma unroll
            for (int j = 0; j < N; ++j)
                v[i].v[j] = fromFloat<T>(0.0f);
        }
        // the width-selecting path needs its address registers one chunk at a time (compiler-only
        // fence: the loads already issued stay in flight)
        if (!kVecOnly && ITERS >= 4)
            asm volatile("" ::: "memory");
    }
}

// Rows held in registers: ITERS (1, 2 or 4) chunks of 16 bytes per thread, G threads per row
// (G < 32: 32/G rows per warp; G >= 32: a warp or a block of up to 1024 threads per row). The grid
// is persistent (resident blocks x SMs) and strides over row groups. kVecOnly: every pointer
// 16-byte aligned and hidden % N == 0; otherwise each chunk is loaded with the widest access its
// address allows, and the row's partial last chunk element by element: same tree, same bits.
// With one chunk per thread, a thread's scale and bias are the same for every row: loaded once.
// With one or two, the next row's chunks are loaded before this row is reduced (prefetch).
// In-row indices are 32-bit (hidden <= 2^24). __launch_bounds__(1024, 1): <= 64 registers.
template <typename T, typename W, int ITERS, bool kVecOnly>
__global__ void __launch_bounds__(kMaxRegisterThreads, 1) normRegisterKernel(KernelParams p)
{
    constexpr int N = 16 / sizeof(T);
    constexpr bool kPrefetch = ITERS <= 2;
    constexpr bool kWeightsHeld = ITERS == 1;
    __shared__ float red[2][kMaxRegisterThreads / kWarp];
    int const G = p.G;
    int const group = threadIdx.x >> p.log2G;
    int const tN = (threadIdx.x & (G - 1)) * N; // first element of this thread's first chunk
    int const GN = G * N;                       // distance between a thread's chunks
    int const firstWarp = (group * G) / kWarp;
    int64_t const step = static_cast<int64_t>(gridDim.x) * p.rowsPerBlock;
    Chunk<W, N> wHeld, bHeld;
    if (kWeightsHeld && tN < p.n)
        loadWeights<W, N, kVecOnly>(p, tN, wHeld, bHeld);
    int64_t base = static_cast<int64_t>(blockIdx.x) * p.rowsPerBlock;
    Chunk<T, N> v[ITERS];
    if (kPrefetch)
        loadRow<T, N, ITERS, kVecOnly>(p, base + group, tN, GN, v);
    for (; base < p.rows; base += step)
    {
        int64_t const row = base + group;
        // lanes past the last row own no element but still take part in shuffles and barriers
        int const nRow = row < p.rows ? static_cast<int>(p.n) : 0;
        int64_t const off = row * p.n;
        Chunk<T, N> next[kPrefetch ? ITERS : 1];
        if (kPrefetch)
            loadRow<T, N, kPrefetch ? ITERS : 1, kVecOnly>(p, row + step, tN, GN, next);
        else
            loadRow<T, N, ITERS, kVecOnly>(p, row, tN, GN, v);
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
        {
            forgetDerived(v[i]);
#pragma unroll
            for (int j = 0; j < N; ++j)
                if (tN + i * GN + j < nRow)
                    acc = accumulateSquare(acc, deviation(toFloat(v[i].v[j]), shift, offset));
        }
        float const rstd = finishRstd(groupReduce(acc, G, red[1], firstWarp), p.n, p.eps);
#pragma unroll
        for (int i = 0; i < ITERS; ++i)
        {
            forgetDerived(v[i]);
            if (tN + i * GN < nRow)
            {
                if (kWeightsHeld)
                    writeChunk<T, W, N, kVecOnly>(p, off, tN, v[i], wHeld, bHeld, shift, offset, rstd);
                else
                    writeOutput<T, W, N, kVecOnly>(p, off, tN + i * GN, v[i], shift, offset, rstd);
            }
            // With 4 chunks held, hoisting every chunk's scale/bias loads above the stores would
            // exceed the 64-register budget: one chunk's weights in flight at a time.
            if (ITERS >= 4)
                asm volatile("" ::: "memory");
        }
        if (kPrefetch)
        {
#pragma unroll
            for (int i = 0; i < ITERS; ++i)
                v[i] = next[kPrefetch ? i : 0];
        }
        if (G > kWarp)
            __syncthreads(); // red[] is rewritten for the next row
    }
}

// Streaming kernel: the same chunk ownership and tree as a register kernel with the same (G, iters),
// for rows longer than the register kernel holds (G = 1024, iters > 4) and for 4-chunk rows whose
// pointers or size rule out the 16-byte path (their width-selecting loads do not fit 64 registers
// with the row held). With `staged`, the first pass keeps each thread's x (+ residual) chunks in
// dynamic shared memory and the later passes read them there (each thread reads back only what it
// wrote: no barrier needed); otherwise every pass re-reads the row from L1/L2.
template <typename T, typename W>
__global__ void __launch_bounds__(kMaxThreadsPerRow, 1) normStreamKernel(KernelParams p)
{
    constexpr int N = 16 / sizeof(T);
    __shared__ float red[2][kMaxThreadsPerRow / kWarp];
    extern __shared__ __align__(16) unsigned char stageRaw[];
    Chunk<T, N>* stage = reinterpret_cast<Chunk<T, N>*>(stageRaw);
    int const G = p.G;
    int const group = threadIdx.x >> p.log2G;
    int const t = threadIdx.x & (G - 1);
    int const tN = t * N;
    int const GN = G * N;
    int const firstWarp = (group * G) / kWarp;
    int64_t const step = static_cast<int64_t>(gridDim.x) * p.rowsPerBlock;
    for (int64_t base = static_cast<int64_t>(blockIdx.x) * p.rowsPerBlock; base < p.rows; base += step)
    {
        int64_t const row = base + group;
        int const nRow = row < p.rows ? static_cast<int>(p.n) : 0;
        int64_t const off = row * p.n;
        // pass `pass` over this thread's chunks; the first pass reads global memory (and writes the
        // sum output), later ones the staged copy when there is one
        auto chunkAt = [&](int i, bool first) {
            int const e0 = tN + i * GN;
            if (p.staged && !first)
                return stage[threadIdx.x + i * blockDim.x];
            Chunk<T, N> const c = loadInput<T, N, false>(p, off, e0, first);
            if (p.staged)
                stage[threadIdx.x + i * blockDim.x] = c;
            return c;
        };
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
                Chunk<T, N> const v = chunkAt(i, true);
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
            Chunk<T, N> const v = chunkAt(i, p.rms != 0);
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
            Chunk<T, N> const v
                = p.staged ? stage[threadIdx.x + i * blockDim.x] : loadInput<T, N, false>(p, off, e0, false);
            writeOutput<T, W, N, false>(p, off, e0, v, shift, offset, rstd);
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
__global__ void __launch_bounds__(kSplitThreads, kMaxRegisterThreads / kSplitThreads) normSplitStatsKernel(KernelParams p)
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
__global__ void __launch_bounds__(kSplitThreads, kMaxRegisterThreads / kSplitThreads) normSplitApplyKernel(KernelParams p)
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

// Resident blocks per SM of a kernel at a block size, queried once per (kernel, block size):
// the persistent grid is this times the SM count. Never enters a row's reduction.
template <typename Kernel>
int residentBlocks(Kernel kernel, int blockThreads, size_t dynamicSmem)
{
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, blockThreads, dynamicSmem) != cudaSuccess
        || blocks < 1)
    {
        (void) cudaGetLastError(); // not sticky; fall back to one block per SM
        blocks = 1;
    }
    return blocks;
}

// Largest dynamic shared memory a block may opt into on the current device (0 if unknown).
inline int optinSharedBytes()
{
    int dev = 0;
    int bytes = 0;
    if (cudaGetDevice(&dev) != cudaSuccess
        || cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess)
    {
        (void) cudaGetLastError();
        return 0;
    }
    return bytes;
}

template <typename T, typename W, int ITERS, bool kVecOnly>
int launchRegister(KernelParams const& p, int64_t groups, int blockThreads, int smCount, cudaStream_t stream)
{
    constexpr int vecOnly = kVecOnly ? 1 : 0;
    auto kernel = normRegisterKernel<T, W, ITERS, kVecOnly>;
    // queried once per kernel and block size (powers of two from 128 to 1024: one slot each)
    static std::atomic<int> cache[2][4];
    int slot = 0;
    while ((kMinBlockThreads << slot) < blockThreads && slot < 3)
        ++slot;
    int perSm = cache[vecOnly][slot].load(std::memory_order_relaxed);
    if (perSm == 0)
    {
        perSm = residentBlocks(kernel, blockThreads, 0);
        cache[vecOnly][slot].store(perSm, std::memory_order_relaxed);
    }
    int64_t const resident = static_cast<int64_t>(perSm) * smCount;
    unsigned const grid = static_cast<unsigned>(groups < resident ? groups : resident);
    kernel<<<grid, blockThreads, 0, stream>>>(p);
    return cudaGetLastError();
}

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
    // Only selects 16-byte loads without address checks; the arithmetic is the same either way.
    auto bits = [](void const* q) { return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(q) & 15u); };
    p.rowMis = bits(a.x) | bits(a.y) | bits(a.residual) | bits(a.sum_out);
    p.weightMis = bits(a.scale) | bits(a.bias);
    bool const vecOnly = a.hidden % N == 0 && p.rowMis == 0 && p.weightMis == 0;
    int64_t const groups = ceilDiv(a.rows, s.rows_per_block);
    bool const streamed = s.kernel == LN_KERNEL_MULTIPASS || (s.kernel == LN_KERNEL_REGISTER && s.iters >= 4 && !vecOnly);
    switch (streamed ? LN_KERNEL_MULTIPASS : s.kernel)
    {
    case LN_KERNEL_REGISTER:
        switch (s.iters * 2 + (vecOnly ? 1 : 0))
        {
        case 2: return launchRegister<T, W, 1, false>(p, groups, s.block_threads, smCount, stream);
        case 3: return launchRegister<T, W, 1, true>(p, groups, s.block_threads, smCount, stream);
        case 4: return launchRegister<T, W, 2, false>(p, groups, s.block_threads, smCount, stream);
        case 5: return launchRegister<T, W, 2, true>(p, groups, s.block_threads, smCount, stream);
        case 9: return launchRegister<T, W, 4, true>(p, groups, s.block_threads, smCount, stream);
        default: return cudaErrorInvalidValue;
        }
    case LN_KERNEL_MULTIPASS:
    {
        // Stage the row in shared memory when it fits the device's opt-in limit (> 48 KB).
        size_t const stageBytes = static_cast<size_t>(s.iters) * s.block_threads * 16;
        size_t const staticBytes = 2 * (kMaxThreadsPerRow / kWarp) * sizeof(float);
        int const optin = optinSharedBytes();
        p.staged = optin > 0 && stageBytes + staticBytes <= static_cast<size_t>(optin);
        size_t const dyn = p.staged ? stageBytes : 0;
        auto kernel = normStreamKernel<T, W>;
        if (p.staged)
        {
            static std::atomic<size_t> granted{0};
            if (granted.load(std::memory_order_relaxed) < dyn)
            {
                cudaError_t const e
                    = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(dyn));
                if (e != cudaSuccess)
                    return e;
                granted.store(dyn, std::memory_order_relaxed);
            }
        }
        int64_t const resident = static_cast<int64_t>(residentBlocks(kernel, s.block_threads, dyn)) * smCount;
        unsigned const grid = static_cast<unsigned>(groups < resident ? groups : resident);
        kernel<<<grid, s.block_threads, dyn, stream>>>(p);
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
