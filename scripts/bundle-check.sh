#!/usr/bin/env bash
# Keeps the GPU bundle from rotting (CI runs it): build the bundle for torch VER (default
# 2.11.0, the GPU host's), check that its binary carries no rpath, unpack it elsewhere and
# run its quick check on the CPU through its launcher, as on a GPU node; then check that a
# host with another torch version is refused.
#   scripts/bundle-check.sh [VER]     (HOST_PYTHON=... to use an existing host install)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
torch="${1:-2.11.0}"
./scripts/bundle.sh --torch "$torch" --out .bundle/out
# The host's torch: HOST_PYTHON, or else the build venv's (same wheel as a GPU node's; a
# second install would cost several GB of disk for nothing the launcher could tell apart).
# What matters is that the binary carries no path into the build venv: the launcher alone
# must find the host's libraries.
host_py="${HOST_PYTHON:-.bundle/torch-$torch/bin/python}"
if readelf -d ".bundle/out/come-repro-torch$torch/come-repro" | grep -Eq 'RPATH|RUNPATH'; then
  echo "bundle-check: the bundle's binary has an rpath; it must find torch through run.sh" >&2
  exit 1
fi
check=".bundle/check"
rm -rf "$check"
mkdir -p "$check"
tar -xzf ".bundle/out/come-repro-torch$torch.tar.gz" -C "$check"
dir="$check/come-repro-torch$torch"
echo "bundle-check: $dir against $("$host_py" -W ignore -c 'import torch; print(torch.__file__)' 2>/dev/null)"
start=$(date +%s)
OUT="$check/out" PYTHON="$host_py" "$dir/run.sh" --device cpu --quick
echo "bundle-check: quick check passed in $(( $(date +%s) - start )) s"
# A host whose torch is another version is refused, with a message that says so.
if [ -x .venv/bin/python ]; then
  other=$(.venv/bin/python -W ignore -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
  if [ -n "$other" ] && [ "${other%%+*}" != "$torch" ]; then
    set +e
    msg=$(OUT="$check/out-refused" PYTHON=.venv/bin/python "$dir/run.sh" --device cpu --quick 2>&1)
    rc=$?
    set -e
    if [ "$rc" -ne 2 ] || ! grep -q "built for torch $torch" <<<"$msg"; then
      echo "bundle-check: a host with torch $other was not refused clearly (exit $rc): $msg" >&2
      exit 1
    fi
    echo "bundle-check: torch $other refused as it should be"
  fi
fi
