#!/usr/bin/env bash
# experiments/ci.toml as a Slurm job array of 3 shards on the local cluster
# (scripts/slurm-local.sh), waited for, merged, and checked against the committed baseline
# without recomputing: the merged store must hold every run, finished, with the baseline's
# metrics. Prints the wall time of the array beside the one-process check's.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/release/come-repro"
export COME_DATA="${COME_DATA:-$(cd "$root/../shared/data" && pwd)}"
export COME_MODELS="${COME_MODELS:-$(cd "$root/../shared/models" && pwd)}"
export LD_LIBRARY_PATH="$root/.venv/libtorch/lib:${LD_LIBRARY_PATH:-}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cp "$root/experiments/ci.toml" ci.toml
t0=$(date +%s)
out=$("$bin" grid ci.toml --slurm --shards 3 --cpus-per-task 1)
echo "$out"
job=$(echo "$out" | sed -n 's/^submitted job array \([0-9]*\):.*/\1/p')
[ -n "$job" ] || { echo "no job id" >&2; exit 1; }
while [ -n "$(squeue -h -j "$job" -o %i 2>/dev/null)" ]; do sleep 5; done
t1=$(date +%s)
"$bin" grid ci.toml --status
"$bin" runs merge results/shards/ci-*-of-3.sqlite --into merged.sqlite
"$bin" check --grid ci.toml --baseline "$root/results/ci-baseline.json" --db merged.sqlite --cache "$work/cache"
echo "slurm-ci-check: 3-task array of experiments/ci.toml finished in $((t1 - t0)) s, merged store passes the baseline"
