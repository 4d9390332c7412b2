#!/usr/bin/env bash
# Create a TPU VM slice (or a queued resource that becomes one).
#   tpu_scripts/create.sh --name isheep-7b --zone us-east5-a --type v5e-64 [--queued] [--spot] [--project P] [--dry-run]
source "$(dirname "$0")/common.sh"
TYPE="" QUEUED=0 SPOT=0
handle_arg() {
  case "$1" in
    --type) TYPE="${2:-}"; USED=2 ;;
    --queued) QUEUED=1; USED=1 ;;
    --spot) SPOT=1; USED=1 ;;
  esac
}
parse_args "$@"
[[ -n "$TYPE" ]] || die "--type is required (e.g. v5e-64, v5p-128)"
ACCEL="$(accelerator_type "$TYPE")"; VERSION="$(runtime_version "$TYPE")"
extra=(); [[ "$SPOT" == 1 ]] && extra+=(--spot)
if [[ "$QUEUED" == 1 ]]; then
  gcloud_run compute tpus queued-resources create "$NAME" --node-id="$NAME" --zone="$ZONE" \
    --accelerator-type="$ACCEL" --runtime-version="$VERSION" "${extra[@]+"${extra[@]}"}"
else
  gcloud_run compute tpus tpu-vm create "$NAME" --zone="$ZONE" --accelerator-type="$ACCEL" \
    --version="$VERSION" "${extra[@]+"${extra[@]}"}"
fi
