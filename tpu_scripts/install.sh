#!/usr/bin/env bash
# Install isheep_jax (with jax[tpu]) on every worker of a slice.
#   tpu_scripts/install.sh --name isheep-7b --zone us-east5-a --source git+https://github.com/ORG/isheep_jax [--dry-run]
# --source is anything pip installs: a git URL, or a gs:// wheel copied down first.
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" SOURCE="" PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="${2:-}"; shift 2 ;;
    --zone) ZONE="${2:-}"; shift 2 ;;
    --source) SOURCE="${2:-}"; shift 2 ;;
    --project) PROJECT="${2:-}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
check_name "$NAME"; check_zone "$ZONE"
[[ -n "$SOURCE" ]] || die "--source is required (a pip-installable git URL or gs://.../isheep_jax-*.whl)"
if [[ "$SOURCE" == gs://* ]]; then
  fetch="gsutil cp '$SOURCE' /tmp/ && pip install \"/tmp/$(basename "$SOURCE")\""
else
  fetch="pip install '$SOURCE'"
fi
cmd="python3 -m pip install -U pip && pip install 'jax[tpu]>=0.10,<0.11' && $fetch"
extra=(); pf="$(project_flag)"; [[ -n "$pf" ]] && extra+=("$pf")
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$cmd" "${extra[@]}"
