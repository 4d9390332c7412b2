#!/usr/bin/env bash
# Delete the slice (or its queued resource).
#   tpu_scripts/delete.sh --name isheep-7b --zone us-east5-a [--queued] [--dry-run]
source "$(dirname "$0")/common.sh"
QUEUED=0
handle_arg() { if [[ "$1" == --queued ]]; then QUEUED=1; USED=1; fi; }
parse_args "$@"
if [[ "$QUEUED" == 1 ]]; then
  gcloud_run compute tpus queued-resources delete "$NAME" --zone="$ZONE" --force --quiet
else
  gcloud_run compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet
fi
