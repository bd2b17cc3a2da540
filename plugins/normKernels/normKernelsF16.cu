// Kernels for __half inputs; scale and bias __half or float.
#include "normKernels.cuh"

LN_DEPLOY_INSTANTIATE_LAUNCH(__half, __half)
LN_DEPLOY_INSTANTIATE_LAUNCH(__half, float)
