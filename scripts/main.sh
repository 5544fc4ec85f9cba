#!/usr/bin/env bash
# The main job on the embedded default: the ablation grid on SmolLM2-135M (shared data,
# CPU, about half an hour on two cores; resumable: rerun to continue), then the tables.
# A run that fails is recorded as failed and the grid goes on; the tables are written from
# whatever finished, and the exit status is the grid's (non-zero if any run failed).
# Arguments go to `come-repro grid` (e.g. --retry-failed, --fail-fast, --threads N).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo build --release --quiet
status=0
target/release/come-repro grid experiments/ablation.toml "$@" || status=$?
if [ "$status" -eq 130 ]; then
  exit "$status" # interrupted: rerun to resume
fi
target/release/come-repro tables --grid experiments/ablation.toml --out results/tables
exit "$status"
