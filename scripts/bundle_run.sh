#!/usr/bin/env bash
# The GPU check from a bundle made by scripts/bundle.sh (copied into it as run.sh). Runs
# on a node without network or Rust, against the node's own PyTorch: it finds that
# PyTorch's libraries through its Python, refuses a version other than the one the bundle
# was built for, and writes summary.json and check.log to $OUT (or ./out).
#   ./run.sh                       the full check on cuda (about 8 minutes on an H200)
#   ./run.sh --device cpu --quick  small sizes on the CPU (the bundle works here)
#   ./run.sh --only smol-f32,stories   some items (see ./come-repro gpu-check run --help)
# PYTHON=/path/to/python selects the Python whose torch is used.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
want="$(cat "$here/TORCH_VERSION")"
py="${PYTHON:-python3}"
if ! info="$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__)); print(torch.__version__)' 2>/dev/null)"; then
  echo "run.sh: $py cannot import torch; set PYTHON to a Python with torch $want" >&2
  exit 2
fi
torch_dir="$(sed -n 1p <<<"$info")"
have="$(sed -n 2p <<<"$info")"
if [ "${have%%+*}" != "$want" ]; then
  echo "run.sh: this bundle was built for torch $want, but $py has torch $have ($torch_dir)." >&2
  echo "run.sh: build one for it where cargo is: scripts/bundle.sh --torch ${have%%+*}" >&2
  exit 2
fi
out="${OUT:-$here/out}"
mkdir -p "$out"
export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
set -o pipefail
"$here/come-repro" gpu-check run --bundle "$here" --out "$out" --torch-version "$have" "$@" 2>&1 \
  | tee "$out/check.log"
