#!/usr/bin/env bash
# CMake compiler launcher: runs the compile command and keeps its stderr (ptxas -v register and
# spill report) next to the object as <object>.ptxas.log, so the report survives incremental builds.
set -o pipefail
obj=""
prev=""
for a in "$@"; do
  if [ "$prev" = "-o" ]; then obj="$a"; fi
  prev="$a"
done
if [ -z "$obj" ]; then exec "$@"; fi
mkdir -p "$(dirname "$obj")"
"$@" 2> >(tee "$obj.ptxas.log" >&2)
