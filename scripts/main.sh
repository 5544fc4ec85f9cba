#!/usr/bin/env bash
# The main job on the embedded default: the ablation grid on SmolLM2-135M (shared data,
# CPU, about half an hour on two cores; resumable: rerun to continue), then the tables.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo build --release --quiet
target/release/come-repro grid experiments/ablation.toml "$@"
target/release/come-repro tables --grid experiments/ablation.toml --out results/tables
