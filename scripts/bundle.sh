#!/usr/bin/env bash
# Build come-repro against a chosen PyTorch and pack it as a self-contained bundle for an
# offline GPU node whose site PyTorch is that version (no cargo, no network there):
#
#   scripts/bundle.sh [--torch 2.11.0] [--out DIR] [--docs N]
#
# Steps, each skipped when already done:
#   1. .bundle/torch-VER: a venv with torch==VER from PyPI (headers and libraries to link).
#   2. .bundle/src-VER: the working tree's files (tracked and untracked, not ignored), with
#      Cargo.toml pinned to the tch release that binds VER (tch 0.26 binds 2.13.0 and is
#      the default build; scripts/setup.sh is untouched). libtorch's C++ API changes
#      between minor releases, so one tch release cannot bind two of them: tch 0.26's
#      wrappers call operators that 2.11 does not have.
#   3. .bundle/target-VER: the release build (seeded from target/ when that exists, so only
#      the crates that depend on libtorch are rebuilt), stripped.
#   4. DIR/come-repro-torchVER/: the binary, run.sh (the launcher), the check's inputs
#      prepared by the binary itself on this machine's CPU (task requests, the synthetic
#      model's reference log-likelihoods, stories260K and its CPU results, the SmolLM2
#      tokenizer); and DIR/come-repro-torchVER.tar.gz.
# On the GPU node: tar xzf come-repro-torchVER.tar.gz && come-repro-torchVER/run.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
torch="2.11.0"
out=".bundle/out"
docs=200
while [ $# -gt 0 ]; do
  case "$1" in
    --torch) torch="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --docs) docs="$2"; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bundle.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
# tch release per PyTorch release (each tch release's build.rs pins one).
case "$torch" in
  2.13.0) tch=0.26 ;;
  2.12.0) tch=0.25 ;;
  2.11.0) tch=0.24 ;;
  2.10.0) tch=0.23 ;;
  *) echo "bundle.sh: no tch release known for torch $torch (known: 2.10.0-2.13.0)" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
venv=".bundle/torch-$torch"
src=".bundle/src-$torch"
target="$root/.bundle/target-$torch"
mkdir -p .bundle

# 1. The torch wheel to build against.
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi
have=$("$venv/bin/python" -W ignore -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$torch" ]; then
  # The wheel and its CUDA libraries take ~4.6 GB unpacked; say so before pip runs out.
  free_kib=$(df -Pk .bundle | awk 'NR==2 {print $4}')
  if [ "${free_kib:-0}" -lt $((6 * 1024 * 1024)) ]; then
    echo "bundle: $((free_kib / 1024)) MiB free under $root/.bundle; torch==$torch needs ~6 GiB" >&2
    exit 1
  fi
  echo "bundle: installing torch==$torch into $venv (a few minutes, ~4.6 GB)"
  "$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "torch==$torch"
fi
libtorch=$("$venv/bin/python" -W ignore -c 'import torch, os; print(os.path.dirname(torch.__file__))')
cuda=$("$venv/bin/python" -W ignore -c 'import torch; print(torch.version.cuda or "none")')

# 2. The sources, pinned to the matching tch.
rm -rf "$src"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$src"
sed -i -E "s/^tch = \"[0-9.]+\"/tch = \"$tch\"/; s/^torch-sys = \"[0-9.]+\"/torch-sys = \"$tch\"/" "$src/Cargo.toml"
grep -q "^tch = \"$tch\"" "$src/Cargo.toml" || { echo "bundle: could not pin tch in Cargo.toml" >&2; exit 1; }

# 3. Build (seeded from the default build's dependencies).
if [ ! -d "$target/release" ] && [ -d target/release/deps ]; then
  echo "bundle: seeding $target from target/ (dependencies that do not link libtorch are reused)"
  mkdir -p "$target"
  cp -a target/release "$target/"
fi
echo "bundle: building against torch $torch (tch $tch, CUDA $cuda)"
(cd "$src" && COME_BUNDLE=1 LIBTORCH="$libtorch" CARGO_TARGET_DIR="$target" \
  cargo build --release --quiet --bin come-repro)

# 4. The bundle.
name="come-repro-torch$torch"
dir="$out/$name"
rm -rf "$dir"
mkdir -p "$dir"
cp "$target/release/come-repro" "$dir/come-repro"
strip "$dir/come-repro"
cp scripts/bundle_run.sh "$dir/run.sh"
chmod +x "$dir/run.sh"
echo "$torch" > "$dir/TORCH_VERSION"
# The bundle's binary has no rpath (the launcher supplies the host's libraries): here it
# runs on the build venv's.
LD_LIBRARY_PATH="$libtorch/lib" "$dir/come-repro" gpu-check prepare --bundle "$dir" --docs "$docs" \
  --torch-version "$torch" --tch-version "$tch" --cuda "$cuda" \
  --git "$(git rev-parse HEAD)$(git diff --quiet HEAD || echo -dirty)"
tar -C "$out" -czf "$out/$name.tar.gz" "$name"
echo "bundle: $dir ($(du -sh "$dir" | cut -f1)), $out/$name.tar.gz ($(du -sh "$out/$name.tar.gz" | cut -f1))"
