#!/usr/bin/env bash
# Delete the slice (or its queued resource).
#   tpu_scripts/delete.sh --name isheep-7b --zone us-east5-a [--queued] [--dry-run]
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" QUEUED=0 PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="${2:-}"; shift 2 ;;
    --zone) ZONE="${2:-}"; shift 2 ;;
    --project) PROJECT="${2:-}"; shift 2 ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
check_name "$NAME"; check_zone "$ZONE"
extra=(); pf="$(project_flag)"; [[ -n "$pf" ]] && extra+=("$pf")
if [[ "$QUEUED" == 1 ]]; then
  run gcloud compute tpus queued-resources delete "$NAME" --zone="$ZONE" --force --quiet "${extra[@]}"
else
  run gcloud compute tpus tpu-vm delete "$NAME" --zone="$ZONE" --quiet "${extra[@]}"
fi
