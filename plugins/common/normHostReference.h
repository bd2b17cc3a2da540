/*
 * Host emulation of the normalization kernels, bit for bit.
 *
 * Uses the strategy the device would use and walks the same per-thread chunk order and the same
 * reduction tree (warp butterfly, then warps summed in order), calling the same normCore.h
 * functions. A CPU test compares it with a float64 reference; a GPU test compares the device
 * kernels with it bitwise, so the CPU tests speak for the device's rounding too.
 */
#pragma once

#include <vector>

#include "normCore.h"

namespace ln_deploy
{
namespace core
{

// The device's group reduction: xor-butterfly within each warp (or sub-warp group of G lanes),
// then, when G > 32, the warps' totals added in warp order.
inline float groupReduceHost(std::vector<float>& part, int G)
{
    int const width = G < kWarp ? G : kWarp;
    std::vector<float> tmp(part.size());
    for (int off = width / 2; off > 0; off /= 2)
    {
        for (int l = 0; l < G; ++l)
            tmp[l] = part[l] + part[l ^ off];
        part.swap(tmp);
    }
    if (G <= kWarp)
        return part[0];
    float t = part[0];
    for (int w = 1; w < G / kWarp; ++w)
        t += part[w * kWarp];
    return t;
}

template <typename T, typename W>
int normRowsHost(ln_norm_args const& a, int32_t smCount)
{
    ln_strategy s;
    int const rc = selectStrategy(a.hidden, a.dtype, a.rows, a.batch_invariant, smCount, &s);
    if (rc != LN_OK)
        return rc;
    int64_t const n = a.hidden;
    int64_t const C = ceilDiv(n, s.vec);
    bool const rms = a.kind == LN_KIND_RMS_NORM;
    W const* scale = static_cast<W const*>(a.scale);
    W const* bias = static_cast<W const*>(a.bias);
    std::vector<float> part;
    for (int64_t row = 0; row < a.rows; ++row)
    {
        T const* x = static_cast<T const*>(a.x) + row * n;
        T const* r = a.residual ? static_cast<T const*>(a.residual) + row * n : nullptr;
        auto val = [&](int64_t e) { return toFloat(r ? addResidual(x[e], r[e]) : x[e]); };
        if (a.sum_out)
            for (int64_t e = 0; e < n; ++e)
                static_cast<T*>(a.sum_out)[row * n + e] = addResidual(x[e], r[e]);
        float const shift = rms ? 0.0f : val(0);
        float offset = 0.0f;
        float rstd;
        if (s.kernel != LN_KERNEL_SPLIT_ROW)
        {
            int const G = s.threads_per_row;
            // thread t owns chunks t, t + G, t + 2G, ...; elements of a chunk in order
            auto threadSum = [&](int t, float off, bool square) {
                float acc = 0.0f;
                for (int64_t i = 0; i < s.iters; ++i)
                    for (int v = 0; v < s.vec; ++v)
                    {
                        int64_t const e = (i * G + t) * s.vec + v;
                        if (e < n)
                            acc = square ? accumulateSquare(acc, deviation(val(e), shift, off)) : acc + (val(e) - shift);
                    }
                return acc;
            };
            if (!rms)
            {
                part.assign(G, 0.0f);
                for (int t = 0; t < G; ++t)
                    part[t] = threadSum(t, 0.0f, false);
                offset = meanOffset(groupReduceHost(part, G), n);
            }
            part.assign(G, 0.0f);
            for (int t = 0; t < G; ++t)
                part[t] = threadSum(t, offset, true);
            rstd = finishRstd(groupReduceHost(part, G), n, a.epsilon);
        }
        else
        {
            // CTA j owns chunks [j*P, min(C, (j+1)*P)); its thread t owns begin+t, begin+t+256, ...
            int const S = s.splits;
            int64_t const P = s.chunks_per_split;
            std::vector<float> sums(S), m2s(S), means(S);
            std::vector<int64_t> counts(S);
            for (int j = 0; j < S; ++j)
            {
                int64_t const begin = j * P;
                int64_t const end = (j + 1) * P < C ? (j + 1) * P : C;
                int64_t const eEnd = end * s.vec < n ? end * s.vec : n;
                counts[j] = eEnd - begin * s.vec;
                auto threadSum = [&](int t, float off, bool square) {
                    float acc = 0.0f;
                    for (int64_t c = begin + t; c < end; c += kSplitThreads)
                        for (int v = 0; v < s.vec; ++v)
                        {
                            int64_t const e = c * s.vec + v;
                            if (e < n)
                                acc = square ? accumulateSquare(acc, deviation(val(e), shift, off))
                                             : acc + (val(e) - shift);
                        }
                    return acc;
                };
                means[j] = 0.0f; // offset of CTA j's mean from shift
                if (!rms)
                {
                    part.assign(kSplitThreads, 0.0f);
                    for (int t = 0; t < kSplitThreads; ++t)
                        part[t] = threadSum(t, 0.0f, false);
                    sums[j] = groupReduceHost(part, kSplitThreads);
                    means[j] = meanOffset(sums[j], counts[j]);
                }
                part.assign(kSplitThreads, 0.0f);
                for (int t = 0; t < kSplitThreads; ++t)
                    part[t] = threadSum(t, means[j], true);
                m2s[j] = groupReduceHost(part, kSplitThreads);
            }
            float total = 0.0f;
            if (!rms)
            {
                float ssum = 0.0f;
                for (int j = 0; j < S; ++j)
                    ssum += sums[j];
                offset = meanOffset(ssum, n);
                for (int j = 0; j < S; ++j)
                    total = mergeM2(total, m2s[j], counts[j], means[j], offset);
            }
            else
                for (int j = 0; j < S; ++j)
                    total += m2s[j];
            rstd = finishRstd(total, n, a.epsilon);
        }
        T* y = static_cast<T*>(a.y) + row * n;
        for (int64_t e = 0; e < n; ++e)
        {
            float const w = toFloat(scale[e]);
            float const b = bias ? toFloat(bias[e]) : 0.0f;
            y[e] = fromFloat<T>(normalizeOne(val(e), shift, offset, rstd, w, b));
        }
    }
    return LN_OK;
}

inline int normForwardHost(ln_norm_args const* a, int32_t smCount)
{
    if (a == nullptr || a->x == nullptr || a->scale == nullptr || a->y == nullptr || a->rows < 0
        || (a->kind != LN_KIND_LAYER_NORM && a->kind != LN_KIND_RMS_NORM)
        || (a->sum_out != nullptr && a->residual == nullptr))
        return LN_ERR_INVALID_ARGUMENT;
    bool const f32Scale = a->scale_dtype == LN_DTYPE_F32;
    if (!f32Scale && a->scale_dtype != a->dtype)
        return LN_ERR_UNSUPPORTED_DTYPE;
    switch (a->dtype)
    {
    case LN_DTYPE_F32: return normRowsHost<float, float>(*a, smCount);
    case LN_DTYPE_F16:
        return f32Scale ? normRowsHost<__half, float>(*a, smCount) : normRowsHost<__half, __half>(*a, smCount);
    case LN_DTYPE_BF16:
        return f32Scale ? normRowsHost<__nv_bfloat16, float>(*a, smCount)
                        : normRowsHost<__nv_bfloat16, __nv_bfloat16>(*a, smCount);
    default: return LN_ERR_UNSUPPORTED_DTYPE;
    }
}

} // namespace core
} // namespace ln_deploy
