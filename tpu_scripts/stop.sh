#!/usr/bin/env bash
# Stop `isheep run` on every worker (the run directory keeps everything: rerun launch.sh to resume).
#   tpu_scripts/stop.sh --name isheep-7b --zone us-east5-a [--dry-run]
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="${2:-}"; shift 2 ;;
    --zone) ZONE="${2:-}"; shift 2 ;;
    --project) PROJECT="${2:-}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
check_name "$NAME"; check_zone "$ZONE"
extra=(); pf="$(project_flag)"; [[ -n "$pf" ]] && extra+=("$pf")
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="pkill -f 'isheep run' || true" "${extra[@]}"
