#!/usr/bin/env bash
# Idempotent set-up: a project-local venv with the pinned PyTorch wheel that provides
# libtorch for tch, and a stable link to it that .cargo/config.toml points LIBTORCH at.
# Re-running it when everything is in place does nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
TORCH_VERSION="2.13.0"
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
have=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (a few minutes, ~4.7 GB)"
  .venv/bin/python -m pip install --quiet --no-cache-dir --disable-pip-version-check "torch==$TORCH_VERSION"
fi
torch_dir=$(.venv/bin/python -c 'import torch, os; print(os.path.dirname(torch.__file__))')
if [ "$(readlink .venv/libtorch 2>/dev/null || true)" != "$torch_dir" ]; then
  ln -sfn "$torch_dir" .venv/libtorch
fi
