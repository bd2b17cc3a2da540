/*
 * C ABI of libln_kernels.so: ln_deploy's fused normalization kernels.
 *
 * Plain C so that ctypes (ln_deploy/kernels.py), the TensorRT plugin and any other host code
 * can call it. Launchers take raw device pointers and a cudaStream_t passed as void*, never
 * allocate, never synchronize, and return 0 on success, a cudaError_t (> 0) when CUDA
 * reported an error, or an LN_ERR_* code (< 0) for a bad argument found before launching.
 */
#ifndef LN_DEPLOY_LN_KERNELS_H
#define LN_DEPLOY_LN_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LN_API __declspec(dllexport)
#else
#define LN_API __attribute__((visibility("default")))
#endif

#define LN_ABI_VERSION 1

/* Element types of x/residual/y/sum (dtype) and of scale/bias (scale_dtype). */
enum { LN_DTYPE_F32 = 0, LN_DTYPE_F16 = 1, LN_DTYPE_BF16 = 2 };
/* Same values as plugin_spec.KIND_LAYER_NORM / KIND_RMS_NORM. */
enum { LN_KIND_LAYER_NORM = 0, LN_KIND_RMS_NORM = 1 };
/* Kernels a strategy can pick. */
enum { LN_KERNEL_REGISTER = 0, LN_KERNEL_MULTIPASS = 1, LN_KERNEL_SPLIT_ROW = 2 };

enum {
    LN_OK = 0,
    LN_ERR_INVALID_ARGUMENT = -1,  /* null pointer where one is required, negative rows, bad kind */
    LN_ERR_UNSUPPORTED_DTYPE = -2, /* dtype/scale_dtype pair not built */
    LN_ERR_HIDDEN_RANGE = -3,      /* hidden < 1 or > LN_MAX_HIDDEN */
    LN_ERR_WORKSPACE = -4,         /* the opt-in split strategy needs more workspace than given */
    LN_ERR_NO_DEVICE = -5          /* no CUDA device could be queried */
};

/* Largest hidden size: the row length must convert exactly to float (2^24). */
#define LN_MAX_HIDDEN (1 << 24)

/*
 * How one row is reduced. In the default (batch-invariant) mode every field except
 * rows_per_block/block_threads depends only on (hidden, dtype); rows_per_block and
 * block_threads depend only on threads_per_row. The per-row reduction tree is fixed by
 * (kernel, threads_per_row, vec, iters, splits, chunks_per_split).
 */
typedef struct ln_strategy {
    int32_t kernel;           /* LN_KERNEL_* */
    int32_t threads_per_row;  /* threads cooperating on one row (power of two, 1..1024) */
    int32_t vec;              /* elements per logical chunk: 16 bytes of the input type */
    int32_t iters;            /* chunks per thread (register kernel: a template parameter) */
    int32_t splits;           /* CTAs per row: 1 except in the opt-in split-row kernel */
    int32_t chunks_per_split; /* split-row kernel only: chunks handled by one CTA */
    int32_t rows_per_block;
    int32_t block_threads;
} ln_strategy;

typedef struct ln_norm_args {
    const void* x;        /* [rows, hidden], dtype, rows contiguous */
    const void* residual; /* optional [rows, hidden], dtype: s = x + residual is normalized */
    const void* scale;    /* [hidden], scale_dtype */
    const void* bias;     /* optional [hidden], scale_dtype */
    void* y;              /* [rows, hidden], dtype */
    void* sum_out;        /* optional [rows, hidden], dtype: receives s (requires residual) */
    int64_t rows;
    int64_t hidden;
    float epsilon;
    int32_t kind;            /* LN_KIND_* */
    int32_t dtype;           /* LN_DTYPE_* */
    int32_t scale_dtype;     /* == dtype or LN_DTYPE_F32 */
    int32_t batch_invariant; /* 1 (default) or 0 = allow the row-count-dependent split kernel */
    void* workspace;         /* device memory, >= ln_workspace_bytes(batch_invariant) bytes */
    size_t workspace_bytes;
} ln_norm_args;

LN_API int ln_abi_version(void);

/* Pure host function: no CUDA call. sm_count only matters when batch_invariant == 0. */
LN_API int ln_select_strategy(int64_t hidden, int32_t dtype, int64_t rows, int32_t batch_invariant,
                              int32_t sm_count, ln_strategy* out);

/* Workspace the launcher needs (0 in the default batch-invariant mode). */
LN_API size_t ln_workspace_bytes(int32_t batch_invariant);

/* y = normalize(x (+ residual)) * scale (+ bias); optional sum_out = x + residual. */
LN_API int ln_norm_forward(const ln_norm_args* args, void* stream);

/* Name and message for any code the launchers return (LN_ERR_* or cudaError_t). */
LN_API const char* ln_error_name(int code);
LN_API const char* ln_error_string(int code);

#ifdef __cplusplus
}
#endif

#endif /* LN_DEPLOY_LN_KERNELS_H */
