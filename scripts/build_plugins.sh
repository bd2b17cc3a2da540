#!/usr/bin/env bash
# Build ln_deploy's native parts into plugins/build/ (git-ignored): the kernel library
# (needs nvcc), the host numerics library and, when TensorRT headers are found, the TensorRT
# plugin. Extra arguments go to the CMake configure step (e.g. -DCMAKE_CUDA_ARCHITECTURES=90).
#
#   TensorRT_ROOT=/opt/tensorrt scripts/build_plugins.sh          # headers in $TensorRT_ROOT/include
#   TENSORRT_INCLUDE_DIR=/path/to/include scripts/build_plugins.sh  # headers only
#   LN_DEPLOY_BUILD_DIR=/tmp/b scripts/build_plugins.sh            # another build directory
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${LN_DEPLOY_BUILD_DIR:-$root/plugins/build}"
jobs="${LN_DEPLOY_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}"
args=()
if [ -n "${TensorRT_ROOT:-}" ]; then args+=("-DTensorRT_ROOT=$TensorRT_ROOT"); fi
if [ -n "${TENSORRT_INCLUDE_DIR:-}" ]; then args+=("-DTensorRT_INCLUDE_DIR=$TENSORRT_INCLUDE_DIR"); fi
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  args+=("-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
fi
cmake -S "$root/plugins" -B "$build" "${args[@]}" "$@"
cmake --build "$build" -j "$jobs"
echo "built into $build:"
ls -1 "$build"/*.so "$build"/plugin_host_test 2>/dev/null || true
