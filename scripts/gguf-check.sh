#!/usr/bin/env bash
# The independent checks of `come-repro export gguf` (scripts/gguf_check.py): transformers'
# GGUF loader and a real llama.cpp build against come-repro, on SmolLM2-135M and a
# CoMe-pruned copy, for f32, f16 and q8_0. Installs what it needs (the project venv plus
# transformers and gguf; llama.cpp through scripts/llama-cpp-local.sh), about 15 minutes
# on 2 cores the first time. Writes results/gguf/summary.json and README.md.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
if ! .venv/bin/python -c "import transformers, gguf, accelerate" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet "transformers==5.24.0" "gguf==0.19.0" "accelerate==1.16.0" safetensors
fi
cargo build --release --quiet
llama_bin="$(./scripts/llama-cpp-local.sh)"
.venv/bin/python scripts/gguf_check.py --llama-bin "$llama_bin" "$@"
