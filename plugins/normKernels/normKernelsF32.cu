// Kernels for float inputs (scale and bias float).
#include "normKernels.cuh"

LN_DEPLOY_INSTANTIATE_LAUNCH(float, float)
