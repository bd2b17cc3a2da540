#!/usr/bin/env bash
# Fresh machine → everything installed → every bundled model exported and checked on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/_python.sh
exec "$PY" -m ln_deploy demo --out "${OUT:-out/demo}"
