#!/usr/bin/env bash
# The main job on the embedded default (the shipped small models and shared data, CPU).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo run --release --quiet -- demo "$@"
