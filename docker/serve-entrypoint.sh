#!/usr/bin/env bash
# Start tritonserver on /models with ln_deploy's TensorRT plugin loaded.
#
# The plugin flag comes from /models/tritonserver.args, written by `ln-deploy package --plugin`
# (the library shipped beside the engine it was built with); only that one flag is accepted from
# the mounted repository. Without the file, the image's own plugin build is loaded.
# Extra arguments are passed to tritonserver.
set -euo pipefail
repo="${MODEL_REPOSITORY:-/models}"
args=(--model-repository="$repo")
if [ -f "$repo/tritonserver.args" ]; then
  while IFS= read -r line || [ -n "$line" ]; do
    [ -z "$line" ] && continue
    case "$line" in
      --backend-config=tensorrt,plugins=*) args+=("$line") ;;
      *) echo "serve-entrypoint: ignoring unexpected line in $repo/tritonserver.args: $line" >&2 ;;
    esac
  done < "$repo/tritonserver.args"
elif [ -n "${LN_DEPLOY_PLUGIN:-}" ] && [ -f "$LN_DEPLOY_PLUGIN" ]; then
  args+=("--backend-config=tensorrt,plugins=$LN_DEPLOY_PLUGIN")
fi
exec tritonserver "${args[@]}" "$@"
