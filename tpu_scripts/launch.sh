#!/usr/bin/env bash
# Start `isheep run` on every worker of a slice; each worker appends to ~/isheep.log, under a
# timestamped header per launch (a relaunch resumes the run and keeps the earlier log).
#   tpu_scripts/launch.sh --name isheep-7b --zone us-east5-a --type v5e-64 \
#       --gin_file runs/isheep_paper.gin [--gin_file more.gin ...] --run_dir gs://BUCKET/runs/qwen7b \
#       [--gin.X=Y ...] [--dry-run]
source "$(dirname "$0")/common.sh"
TYPE="" RUN_DIR=""; GIN_FILES=(); GIN=()
handle_arg() {
  case "$1" in
    --type) TYPE="${2:-}"; USED=2 ;;
    --gin_file) GIN_FILES+=("${2:-}"); USED=2 ;;
    --run_dir) RUN_DIR="${2:-}"; USED=2 ;;
    --gin.*=*) GIN+=("$1"); USED=1 ;;
  esac
}
parse_args "$@"
[[ -n "$TYPE" ]] || die "--type is required (the slice's type, e.g. v5e-64)"
accelerator_type "$TYPE" >/dev/null
[[ ${#GIN_FILES[@]} -gt 0 ]] || die "--gin_file is required"
[[ -n "$RUN_DIR" ]] || die "--run_dir is required"
HOSTS="$(num_hosts "$TYPE")"
env_prefix=""
if [[ "$HOSTS" -gt 1 ]]; then
  # Every host runs the same program as one process of a jax.distributed run; process 0 writes
  # the artifacts, so all hosts must see one run directory.
  [[ "$RUN_DIR" == gs://* ]] || die "$TYPE has $HOSTS hosts: --run_dir must be a gs:// path all hosts share"
  env_prefix="ISHEEP_COORDINATOR=auto "
elif [[ "$RUN_DIR" != gs://* ]]; then
  echo "note: --run_dir '$RUN_DIR' is local to the worker; a gs:// path survives the VM" >&2
fi
args=""
for f in "${GIN_FILES[@]}"; do args+=" --gin_file $(q "$f")"; done
args+=" --run_dir $(q "$RUN_DIR")"
for g in "${GIN[@]+"${GIN[@]}"}"; do args+=" $(q "$g")"; done
header="=== isheep launch $(date -u +%Y-%m-%dT%H:%M:%SZ) on $TYPE:${args}"
cmd="printf '%s\\n' $(q "$header") >> ~/isheep.log && ${env_prefix}nohup isheep run${args} >> ~/isheep.log 2>&1 &"
gcloud_run compute tpus tpu-vm ssh "$NAME" --zone="$ZONE" --worker=all --command="$cmd"
