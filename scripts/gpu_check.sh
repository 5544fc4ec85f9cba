#!/usr/bin/env bash
# The CUDA checks of the evaluation path, in one run, on a machine with an NVIDIA GPU and
# this repo set up (scripts/setup.sh installs the CUDA build of torch 2.13.0). Writes into
# ${OUT:-results/gpu}:
#   precision_cuda.txt/json  f32 vs bf16 on CUDA, 500 docs of each of the seven tasks:
#                            speed, scores, log-likelihood shift, changed predictions
#   cuda_f32.json            f32 on CUDA, the same 500 docs: must equal the CPU reference
#                            results/smollm2_dense_500.json within 0.2 points per metric.
#                            On CUDA scoring takes the cached-context layout (contexts once
#                            through the fused causal kernel, continuations against their
#                            cached keys/values; CPU takes the packed tries), so this checks
#                            that layout against the CPU's; the time breakdown is in the
#                            JSON (come_repro.profile) and printed as profile_cuda_*.txt
#   cuda_bf16_full.json      bf16, --batch-size auto, all seven tasks on full splits +
#                            WikiText-2 ppl (the speed the grids get on a GPU)
#   prune_7b_shape.txt       CoMe 32 -> 22 on a random-init LLaMA-2-7B-shape model (bf16,
#                            18 x 2048 random calibration ids): seconds per stage and round,
#                            layer passes, host and device memory (goal: under 2 minutes)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-results/gpu}"
mkdir -p "$out"
./scripts/setup.sh
cargo build --release --quiet
bin=target/release/come-repro
model=work/models/smollm2-135m-instruct
[ -f "$model/config.json" ] || $bin import gguf "${COME_MODELS:-../shared/models}/smollm2-135m-instruct-q4_1/SmolLM2-135M-Instruct.Q4_1.gguf" --out "$model"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

$bin bench precision --model "$model" --device cuda --limit 500 --dtypes f32,bf16 \
  --output "$out/precision_cuda.json" | tee "$out/precision_cuda.txt"
$bin eval --model "$model" --device cuda --tasks all7 --limit 500 --output "$out/cuda_f32.json" \
  2>&1 | tee "$out/profile_cuda_f32.txt"
.venv/bin/python - "$out/cuda_f32.json" results/smollm2_dense_500.json <<'EOF'
import json, sys
gpu, cpu = (json.load(open(p))["results"] for p in sys.argv[1:3])
worst = 0.0
for task, m in cpu.items():
    for k, v in m.items():
        if k.startswith("acc") and "stderr" not in k and isinstance(v, float) and task in gpu:
            d = abs(100 * (gpu[task][k] - v))
            worst = max(worst, d)
            print(f"{task:>14} {k:<14} cpu {100*v:6.2f}  cuda {100*gpu[task][k]:6.2f}  diff {d:.2f}")
print(f"largest difference {worst:.2f} points")
sys.exit(0 if worst <= 0.2 else 1)
EOF
time $bin eval --model "$model" --device cuda --dtype bf16 --batch-size auto --tasks all7 \
  --ppl wikitext2 --output "$out/cuda_bf16_full.json" 2>&1 | tee "$out/profile_cuda_bf16_full.txt"
time $bin bench prune --synthetic llama2-7b --device cuda --dtype bf16 | tee "$out/prune_7b_shape.txt"
