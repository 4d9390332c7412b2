#!/usr/bin/env bash
# Create a TPU VM slice (or a queued resource that becomes one).
#   tpu_scripts/create.sh --name isheep-7b --zone us-east5-a --type v5e-64 [--queued] [--spot] [--project P] [--dry-run]
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" TYPE="" QUEUED=0 SPOT=0 PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="${2:-}"; shift 2 ;;
    --zone) ZONE="${2:-}"; shift 2 ;;
    --type) TYPE="${2:-}"; shift 2 ;;
    --project) PROJECT="${2:-}"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
check_name "$NAME"; check_zone "$ZONE"
[[ -n "$TYPE" ]] || die "--type is required (e.g. v5e-64, v5p-128)"
ACCEL="$(accelerator_type "$TYPE")"; VERSION="$(runtime_version "$TYPE")"
extra=(); [[ "$SPOT" == 1 ]] && extra+=(--spot)
pf="$(project_flag)"; [[ -n "$pf" ]] && extra+=("$pf")
if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE" \
    --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${extra[@]}"
else
  run gcloud compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCEL" \
    --version="$VERSION" "${extra[@]}"
fi
