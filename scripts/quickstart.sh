#!/usr/bin/env bash
# Fresh machine → everything installed → one bundled model deployed end to end on the CPU:
# export, fuse, convert to fp16, check against PyTorch, package for Triton with a parity
# certificate, then verify the package. `ln-deploy demo` exports and checks every bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/_python.sh
OUT=${OUT:-out/quickstart}
"$PY" -m ln_deploy deploy models/transformer.py:pre_ln_encoder -o "$OUT" --precision fp16
exec "$PY" -m ln_deploy verify "$OUT/repo/pre_ln_encoder"
