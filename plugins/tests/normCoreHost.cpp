// libln_norm_host.so: the numerics core compiled for the CPU (g++ -ffp-contract=off), loaded by
// tests/kernels with ctypes. Same C ABI shapes as libln_kernels.so, host pointers instead of
// device pointers.
#include "normHostReference.h"

extern "C" LN_API int ln_host_select_strategy(
    int64_t hidden, int32_t dtype, int64_t rows, int32_t batchInvariant, int32_t smCount, ln_strategy* out)
{
    return ln_deploy::core::selectStrategy(hidden, dtype, rows, batchInvariant, smCount, out);
}

extern "C" LN_API int ln_host_norm_forward(ln_norm_args const* args, int32_t smCount)
{
    return ln_deploy::core::normForwardHost(args, smCount);
}
