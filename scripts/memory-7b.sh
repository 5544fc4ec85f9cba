#!/usr/bin/env bash
# Peak host memory of each stage at LLaMA-2-7B's shape, measured on truncated copies with
# hashed weights (`import synthetic --shape llama2-7b --layers L`, bf16 storage) at L = 4
# and 8 layers, and extrapolated linearly in the layer count to 32. Each command runs under
# /usr/bin/time (its maximum resident set size), not under our own accounting. Every stage
# computes in f32 on the CPU (bf16 matrix products are slow on CPUs without AMX), at
# the tool's defaults except the token counts: CoMe pruning to L-1 layers on 2 calibration
# windows of 2048, hierarchical distillation and LoRA on 4096 training tokens (2 steps of
# one 2048-token sequence; the peak of a step does not grow with the budget), and eval of
# 20 PIQA documents plus one 2048-token WikiText-2 window. Writes
# results/memory/llama2-7b/{peaks.tsv,README.md}. About 30 minutes on 2 cores, 13 GB RAM.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh
cargo build --release --quiet
bin="$root/target/release/come-repro"
work="${COME_MEMORY_WORK:-$root/target/memory-7b}"
models="${COME_MODELS:-$root/../shared/models}"
out="$root/results/memory/llama2-7b"
mkdir -p "$work" "$out"
# A tokenizer for the synthetic model: stories260K's 512 tokens fit LLaMA-2's 32000.
if [ ! -f "$work/stories/config.json" ]; then
  "$bin" import llama2c "$models/stories260K/stories260K.bin" \
    --tokenizer "$models/stories260K/tok512.bin" --out "$work/stories" --force
fi
tsv="$out/peaks.tsv"
# Resumable: a (layers, stage) already in the partial table is not measured again (delete
# $tsv.partial to start over).
if [ ! -f "$tsv.partial" ]; then
  printf 'layers\tstage\tpeak_rss_mib\tseconds\tcommand\n' >"$tsv.partial"
fi
measure() { # layers stage command...
  local layers="$1" stage="$2"
  shift 2
  if grep -q "^$layers	$stage	" "$tsv.partial"; then
    echo "[$layers layers] $stage: measured already" >&2
    return
  fi
  echo "[$layers layers] $stage: $*" >&2
  /usr/bin/time -f '%M %e' -o "$work/time.txt" "$@" >"$work/$stage-$layers.log" 2>&1 || {
    tail -20 "$work/$stage-$layers.log" >&2
    exit 1
  }
  read -r kib secs <"$work/time.txt"
  local cmd="${*/#$bin/come-repro}"
  cmd="${cmd//$work\//}"
  printf '%s\t%s\t%d\t%s\t%s\n' "$layers" "$stage" "$((kib / 1024))" "$secs" "$cmd" >>"$tsv.partial"
}
for L in 4 8; do
  s="$work/synthetic-$L" p="$work/pruned-$L"
  measure "$L" import "$bin" import synthetic --shape llama2-7b --layers "$L" \
    --tokenizer-from "$work/stories" --dtype bf16 --out "$s" --force
  measure "$L" prune "$bin" prune --model "$s" --out "$p" --target-layers $((L - 1)) \
    --calib-max-sequences 2 --threads 2 --force
  measure "$L" distill-hierarchical "$bin" distill --teacher "$s" --model "$p" \
    --out "$work/hier-$L" --method hierarchical --tokens 4096 --val-tokens 2048 \
    --teacher-cache "$work/teacher-cache-$L" --threads 2 --force
  measure "$L" distill-lora "$bin" distill --teacher "$s" --model "$p" \
    --out "$work/lora-$L" --method lora --tokens 4096 --val-tokens 2048 --threads 2 --force
  measure "$L" eval "$bin" eval --model "$p" --tasks piqa --limit 20 --ppl wikitext2 \
    --max-windows 1 --threads 2
  # The models of this size take 10-20 GB of disk.
  rm -rf "$s" "$p" "$work/hier-$L" "$work/lora-$L" "$work/teacher-cache-$L"
done
mv "$tsv.partial" "$tsv"
python3 - "$tsv" "$out/README.md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
peak = {(int(r["layers"]), r["stage"]): int(r["peak_rss_mib"]) for r in rows}
stages = [r["stage"] for r in rows if r["layers"] == "4"]
lines = [
    "# Peak host memory per stage at LLaMA-2-7B's shape",
    "",
    "Made by `scripts/memory-7b.sh` (see its header for the settings). Peak resident set",
    "size from `/usr/bin/time`, at 4 and 8 layers of LLaMA-2-7B's shape (hashed weights,",
    "stored in bf16, computed in f32 on the CPU), and a linear extrapolation in the layer",
    "count to 32 layers (per layer = (8-layer peak - 4-layer peak) / 4). Pruning removes one",
    "layer; the later stages run on the pruned model (L - 1 layers). An extrapolation from",
    "two points, not a measurement at 32 layers (this machine has 24 GB).",
    "",
    "| stage | 4 layers MiB | 8 layers MiB | per layer MiB | 32 layers MiB (extrapolated) |",
    "|---|--:|--:|--:|--:|",
]
for s in stages:
    a, b = peak[(4, s)], peak[(8, s)]
    per = (b - a) / 4
    lines.append(f"| {s} | {a} | {b} | {per:.0f} | {b + 24 * per:,.0f} |")
lines += ["", "Commands (paths relative to the work directory):", ""]
lines += [f"- {r['layers']} layers, {r['stage']} ({float(r['seconds']):.0f} s): `{r['command']}`" for r in rows]
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
PY
cat "$out/README.md"
