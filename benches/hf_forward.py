"""Reference side of `come-repro bench forward --hf`: transformers' forward throughput on
the same checkpoint, batch, sequence length and thread count. Prints one JSON object."""
import argparse
import json
import statistics
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--batch", type=int, default=4)
ap.add_argument("--seqlen", type=int, default=512)
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("--threads", type=int, default=0)
ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa is transformers' default)")
a = ap.parse_args()
if a.threads > 0:
    torch.set_num_threads(a.threads)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation=a.attn).eval()
torch.manual_seed(0)
ids = torch.randint(0, model.config.vocab_size, (a.batch, a.seqlen))
times = []
with torch.inference_mode():
    model(ids)  # warm-up, as on the Rust side
    for _ in range(max(1, a.iters)):
        t0 = time.perf_counter()
        out = model(ids).logits
        float(out.sum())
        times.append(time.perf_counter() - t0)
med = statistics.median(times)
print(json.dumps({
    "tok_per_s": a.batch * a.seqlen / med,
    "median_s": round(med, 4),
    "times_s": times,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "attn": a.attn,
}))
