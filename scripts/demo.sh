#!/usr/bin/env bash
# A two-minute smoke run: import the shipped models, generate, and measure perplexity.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo run --release --quiet -- demo "$@"
