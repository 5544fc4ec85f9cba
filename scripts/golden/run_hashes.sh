#!/usr/bin/env bash
# Writes tests/golden/run_hashes.txt: every run of every committed grid (experiments/*.toml)
# as "FILE HASH12 NAME", from `come-repro grid --dry-run` of the binary given (by default
# the release build). Regenerate it with a binary built before a change that must keep run
# identities (a refactor); tests/run_hashes.rs then checks the changed code against it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bin="${1:-target/release/come-repro}"
empty="$(mktemp -d)/none.sqlite"
for f in experiments/*.toml; do
  "$bin" grid "$f" --dry-run --db "$empty" |
    awk -v f="$f" '$1 == "new" { name = $3; for (i = 4; i <= NF; i++) name = name " " $i; print f, $2, name }'
done
