// Kernels for __nv_bfloat16 inputs; scale and bias __nv_bfloat16 or float.
#include "normKernels.cuh"

LN_DEPLOY_INSTANTIATE_LAUNCH(__nv_bfloat16, __nv_bfloat16)
LN_DEPLOY_INSTANTIATE_LAUNCH(__nv_bfloat16, float)
