#!/usr/bin/env bash
# Install what the tests need, then run the whole suite. GPU/TensorRT tests skip with a reason.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fuse).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || { echo "setup failed" >&2; exit 1; }
source scripts/_python.sh
"$PY" -m pytest -q "$@"
rc=$?
# pytest's 5 means "no test ran": a suite that runs nothing is a failure, not a pass.
if [ "$rc" -eq 5 ]; then echo "error: no test was collected" >&2; exit 1; fi
exit "$rc"
