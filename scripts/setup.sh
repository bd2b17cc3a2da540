#!/usr/bin/env bash
# Install ln_deploy and everything its tests use, CPU only, into ./.venv (created if needed),
# the active virtual environment, or $PYTHON.
# Idempotent: a second run installs nothing new. torch's CPU build goes first so that no
# dependency pulls the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_python.sh
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[dev]"
# timm/torchvision for the public-architecture zoo, in an overlay only the zoo uses (docs/zoo.md)
bash scripts/install_zoo_packages.sh "$PY"
"$PY" -c 'import ln_deploy, torch, onnx, onnxruntime, polygraphy; print(f"ln_deploy {ln_deploy.__version__} installed (torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, polygraphy {polygraphy.__version__})")'
