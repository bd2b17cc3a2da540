// The C ABI of libln_kernels.so (lnKernels.h): argument checks, strategy choice, dispatch to the
// typed launchers in normKernels{F32,F16,BF16}.cu. No device code here.
#include <atomic>

#include <cuda_runtime.h>

#include "lnKernels.h"
#include "normCore.h"

namespace ln_deploy
{
namespace kernels
{
template <typename T, typename W>
int launchNorm(ln_norm_args const& a, ln_strategy const& s, int smCount, cudaStream_t stream);

extern template int launchNorm<float, float>(ln_norm_args const&, ln_strategy const&, int, cudaStream_t);
extern template int launchNorm<__half, __half>(ln_norm_args const&, ln_strategy const&, int, cudaStream_t);
extern template int launchNorm<__half, float>(ln_norm_args const&, ln_strategy const&, int, cudaStream_t);
extern template int launchNorm<__nv_bfloat16, __nv_bfloat16>(
    ln_norm_args const&, ln_strategy const&, int, cudaStream_t);
extern template int launchNorm<__nv_bfloat16, float>(ln_norm_args const&, ln_strategy const&, int, cudaStream_t);

namespace
{
// SM count of the current device, cached per device (queried once; launches stay cheap).
int smCountOfCurrentDevice(int* smCount)
{
    constexpr int kMaxDevices = 64;
    static std::atomic<int> cache[kMaxDevices];
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
        return e;
    if (dev >= 0 && dev < kMaxDevices && cache[dev].load(std::memory_order_relaxed) > 0)
    {
        *smCount = cache[dev].load(std::memory_order_relaxed);
        return cudaSuccess;
    }
    int count = 0;
    e = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, dev);
    if (e != cudaSuccess)
        return e;
    if (count <= 0)
        return LN_ERR_NO_DEVICE;
    if (dev >= 0 && dev < kMaxDevices)
        cache[dev].store(count, std::memory_order_relaxed);
    *smCount = count;
    return cudaSuccess;
}
} // namespace
} // namespace kernels
} // namespace ln_deploy

extern "C" LN_API int ln_abi_version(void)
{
    return LN_ABI_VERSION;
}

extern "C" LN_API int ln_select_strategy(
    int64_t hidden, int32_t dtype, int64_t rows, int32_t batch_invariant, int32_t sm_count, ln_strategy* out)
{
    return ln_deploy::core::selectStrategy(hidden, dtype, rows, batch_invariant, sm_count, out);
}

extern "C" LN_API size_t ln_workspace_bytes(int32_t batch_invariant)
{
    return ln_deploy::core::workspaceBytes(batch_invariant);
}

extern "C" LN_API int ln_norm_forward(ln_norm_args const* a, void* stream)
{
    using namespace ln_deploy;
    if (a == nullptr || a->x == nullptr || a->scale == nullptr || a->y == nullptr || a->rows < 0
        || (a->kind != LN_KIND_LAYER_NORM && a->kind != LN_KIND_RMS_NORM)
        || (a->sum_out != nullptr && a->residual == nullptr))
        return LN_ERR_INVALID_ARGUMENT;
    if (a->dtype != LN_DTYPE_F32 && a->dtype != LN_DTYPE_F16 && a->dtype != LN_DTYPE_BF16)
        return LN_ERR_UNSUPPORTED_DTYPE;
    if (a->scale_dtype != a->dtype && a->scale_dtype != LN_DTYPE_F32)
        return LN_ERR_UNSUPPORTED_DTYPE;
    if (a->hidden < 1 || a->hidden > LN_MAX_HIDDEN)
        return LN_ERR_HIDDEN_RANGE;
    if (a->rows == 0)
        return LN_OK;
    int smCount = 0;
    int rc = kernels::smCountOfCurrentDevice(&smCount);
    if (rc != cudaSuccess)
        return rc;
    ln_strategy s;
    rc = core::selectStrategy(a->hidden, a->dtype, a->rows, a->batch_invariant, smCount, &s);
    if (rc != LN_OK)
        return rc;
    if (s.kernel == LN_KERNEL_SPLIT_ROW
        && (a->workspace == nullptr
            || a->workspace_bytes < static_cast<size_t>(a->rows) * s.splits * 2 * sizeof(float)))
        return LN_ERR_WORKSPACE;
    cudaStream_t const st = static_cast<cudaStream_t>(stream);
    bool const f32Scale = a->scale_dtype == LN_DTYPE_F32;
    switch (a->dtype)
    {
    case LN_DTYPE_F32: return kernels::launchNorm<float, float>(*a, s, smCount, st);
    case LN_DTYPE_F16:
        return f32Scale ? kernels::launchNorm<__half, float>(*a, s, smCount, st)
                        : kernels::launchNorm<__half, __half>(*a, s, smCount, st);
    default:
        return f32Scale ? kernels::launchNorm<__nv_bfloat16, float>(*a, s, smCount, st)
                        : kernels::launchNorm<__nv_bfloat16, __nv_bfloat16>(*a, s, smCount, st);
    }
}

extern "C" LN_API char const* ln_error_name(int code)
{
    switch (code)
    {
    case LN_ERR_INVALID_ARGUMENT: return "LN_ERR_INVALID_ARGUMENT";
    case LN_ERR_UNSUPPORTED_DTYPE: return "LN_ERR_UNSUPPORTED_DTYPE";
    case LN_ERR_HIDDEN_RANGE: return "LN_ERR_HIDDEN_RANGE";
    case LN_ERR_WORKSPACE: return "LN_ERR_WORKSPACE";
    case LN_ERR_NO_DEVICE: return "LN_ERR_NO_DEVICE";
    default: return code < 0 ? "LN_ERR_UNKNOWN" : cudaGetErrorName(static_cast<cudaError_t>(code));
    }
}

extern "C" LN_API char const* ln_error_string(int code)
{
    switch (code)
    {
    case LN_ERR_INVALID_ARGUMENT:
        return "invalid argument: x, scale and y are required, rows >= 0, kind is 0 or 1, sum_out needs residual";
    case LN_ERR_UNSUPPORTED_DTYPE: return "unsupported dtype: x/y are fp32, fp16 or bf16; scale/bias the same or fp32";
    case LN_ERR_HIDDEN_RANGE: return "hidden size out of range (1 .. 2^24)";
    case LN_ERR_WORKSPACE: return "the split-row strategy (batch_invariant = 0) needs ln_workspace_bytes(0) of workspace";
    case LN_ERR_NO_DEVICE: return "no CUDA device reported a multiprocessor count";
    default: return code < 0 ? "unknown ln_deploy error" : cudaGetErrorString(static_cast<cudaError_t>(code));
    }
}
