#!/usr/bin/env bash
# Stop `isheep run` on every worker (the run directory keeps everything: rerun launch.sh to resume).
#   tpu_scripts/stop.sh --name isheep-7b --zone us-east5-a [--dry-run]
source "$(dirname "$0")/common.sh"
parse_args "$@"
gcloud_run compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="pkill -f 'isheep run' || true"
