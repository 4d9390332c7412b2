#!/usr/bin/env bash
# Shared helpers of the tpu_scripts: argument checks and `run`, which prints every gcloud
# command and executes it unless --dry-run was given.
set -euo pipefail

DRY_RUN=0

die() { echo "error: $*" >&2; exit 2; }

# One value as a single word for the remote shell (`gcloud ... ssh --command` hands the text
# to the worker's bash): quotes, spaces, `$(...)` and newlines arrive as data, never as code.
q() { printf '%q' "$1"; }

run() {
  # Print the command shell-quoted (copy-pasteable), then run it unless dry-running.
  printf '%q ' "$@"; echo
  if [[ "$DRY_RUN" == 0 ]]; then "$@"; fi
}

check_name() {
  [[ -n "${1:-}" ]] || die "--name is required"
  [[ "$1" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--name '$1': lowercase letters, digits and '-', starting with a letter"
}

check_zone() {
  [[ -n "${1:-}" ]] || die "--zone is required (e.g. us-east5-a)"
  [[ "$1" =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]] || die "--zone '$1' is not a zone name like us-east5-a"
}

# Our slice names (v4-8, v5e-64, v5p-128, v6e-16) -> gcloud accelerator type.
accelerator_type() {
  local t="$1"
  [[ "$t" =~ ^(v4|v5e|v5p|v6e)-([0-9]+)$ ]] || die "--type '$t': expected v4-N, v5e-N, v5p-N or v6e-N"
  local gen="${BASH_REMATCH[1]}" n="${BASH_REMATCH[2]}"
  case "$gen" in
    v5e) echo "v5litepod-$n" ;;
    *) echo "$t" ;;
  esac
}

runtime_version() {
  case "${1%%-*}" in
    v4) echo "tpu-ubuntu2204-base" ;;
    v5e) echo "v2-alpha-tpuv5-lite" ;;
    v5p) echo "v2-alpha-tpuv5" ;;
    v6e) echo "v2-alpha-tpuv6e" ;;
  esac
}

# Hosts of a slice: v4-N / v5p-N count TensorCores (2 per chip, 4 chips per host);
# v5e-N / v6e-N count chips (one host up to 8 chips, then 4 chips per host).
num_hosts() {
  local gen="${1%%-*}" n="${1##*-}"
  case "$gen" in
    v4|v5p) echo $(( n <= 8 ? 1 : n / 8 )) ;;
    *) echo $(( n <= 8 ? 1 : n / 4 )) ;;
  esac
}

# `gcloud ARGS`, with --project when one was given; printed, and run unless --dry-run.
gcloud_run() {
  if [[ -n "$PROJECT" ]]; then run gcloud "$@" "--project=$PROJECT"; else run gcloud "$@"; fi
}

# Parses the flags every script takes (--name, --zone, --project, --dry-run) and checks
# --name / --zone; a script's own flags go to its `handle_arg`, which sets USED to the
# number of words it consumed (0 = not its flag).
NAME="" ZONE="" PROJECT=""
handle_arg() { USED=0; }
parse_args() {
  while [[ $# -gt 0 ]]; do
    USED=0
    case "$1" in
      --name) NAME="${2:-}"; USED=2 ;;
      --zone) ZONE="${2:-}"; USED=2 ;;
      --project) PROJECT="${2:-}"; USED=2 ;;
      --dry-run) DRY_RUN=1; USED=1 ;;
      *) handle_arg "$@" ;;
    esac
    [[ "$USED" -gt 0 ]] || die "unknown argument '$1'"
    [[ $# -ge "$USED" ]] || die "$1 needs a value"
    shift "$USED"
  done
  check_name "$NAME"; check_zone "$ZONE"
}
