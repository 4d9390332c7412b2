#!/usr/bin/env bash
# Stream the run's log from one worker (default 0).
#   tpu_scripts/logs.sh --name isheep-7b --zone us-east5-a [--worker 0] [--dry-run]
source "$(dirname "$0")/common.sh"
NAME="" ZONE="" WORKER=0 PROJECT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="${2:-}"; shift 2 ;;
    --zone) ZONE="${2:-}"; shift 2 ;;
    --worker) WORKER="${2:-}"; shift 2 ;;
    --project) PROJECT="${2:-}"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) die "unknown argument '$1'" ;;
  esac
done
check_name "$NAME"; check_zone "$ZONE"
[[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker '$WORKER' must be a worker number"
extra=(); pf="$(project_flag)"; [[ -n "$pf" ]] && extra+=("$pf")
run gcloud compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker="$WORKER" --command="tail -n 200 -f ~/isheep.log" "${extra[@]}"
