#!/usr/bin/env bash
# Stream the run's log from one worker (default 0).
#   tpu_scripts/logs.sh --name isheep-7b --zone us-east5-a [--worker 0] [--dry-run]
source "$(dirname "$0")/common.sh"
WORKER=0
handle_arg() { if [[ "$1" == --worker ]]; then WORKER="${2:-}"; USED=2; fi; }
parse_args "$@"
[[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker '$WORKER' must be a worker number"
gcloud_run compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker="$WORKER" --command="tail -n 200 -f ~/isheep.log"
