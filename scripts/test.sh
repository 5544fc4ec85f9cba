#!/usr/bin/env bash
# The whole test suite on a fresh machine: set-up (idempotent), then cargo test.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
# The Slurm tests run against a real single-node cluster on this machine (idempotent).
./scripts/slurm-local.sh start
# The MLflow export tests run against a real tracking server on 127.0.0.1 (idempotent).
./scripts/mlflow-local.sh start
cargo test --release --all-targets "$@"
