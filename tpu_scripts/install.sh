#!/usr/bin/env bash
# Install isheep_jax (with jax[tpu]) on every worker of a slice.
#   tpu_scripts/install.sh --name isheep-7b --zone us-east5-a --source git+https://github.com/ORG/isheep_jax [--dry-run]
# --source is anything pip installs: a git URL, or a gs:// wheel copied down first.
source "$(dirname "$0")/common.sh"
SOURCE=""
handle_arg() { if [[ "$1" == --source ]]; then SOURCE="${2:-}"; USED=2; fi; }
parse_args "$@"
[[ -n "$SOURCE" ]] || die "--source is required (a pip-installable git URL or gs://.../isheep_jax-*.whl)"
if [[ "$SOURCE" == gs://* ]]; then
  fetch="gsutil cp $(q "$SOURCE") /tmp/ && pip install $(q "/tmp/$(basename "$SOURCE")")"
else
  fetch="pip install $(q "$SOURCE")"
fi
cmd="python3 -m pip install -U pip && pip install 'jax[tpu]>=0.10,<0.11' && $fetch"
gcloud_run compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$cmd"
