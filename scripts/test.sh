#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (idempotent), then cargo test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
# The Slurm tests run against a real single-node cluster on this machine (idempotent).
./scripts/slurm-local.sh start
cargo test --release --all-targets "$@"
