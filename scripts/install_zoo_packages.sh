#!/usr/bin/env bash
# Install timm and torchvision for the public-architecture zoo (models/zoo.py) into an overlay folder,
# <python's prefix>/zoo-packages, NOT into the environment itself: the registry's torchvision for
# torch 2.13 is a CUDA build whose ops cannot load beside the CPU torch, and once importable it breaks
# `import torchvision` and with it transformers' models everywhere (see docs/zoo.md). Only the zoo's
# processes put the overlay on their path. Idempotent. Usage: scripts/install_zoo_packages.sh [PYTHON]
set -euo pipefail
PY="${1:-${PYTHON:-python}}"
DEST="$("$PY" -c 'import sys, os; print(os.environ.get("LN_DEPLOY_ZOO_PACKAGES") or os.path.join(sys.prefix, "zoo-packages"))')"
if PYTHONPATH="$DEST" "$PY" -c 'import importlib.metadata as m, sys; sys.exit(0 if (m.version("torchvision"), m.version("timm")) == ("0.28.0", "1.0.31") else 1)' 2>/dev/null; then
  exit 0
fi
# --no-deps: their dependencies (numpy, pillow, pyyaml, huggingface_hub, safetensors) come from the
# environment; torchvision's own `torch==2.13.0` must not pull another torch into the overlay.
"$PY" -m pip install -q --no-deps --upgrade --target "$DEST" "torchvision==0.28.0" "timm==1.0.31"
echo "zoo packages (torchvision 0.28.0, timm 1.0.31) in $DEST"
