"""Golden values for model::synthetic::hashed_uniform, from the definition in plain Python
integers (no tensors): element j of stream s is splitmix64's finaliser applied to
base + j * 0x9E3779B97F4A7C15 (mod 2^64), base = the first output of splitmix64 seeded
with s; its top 24 bits k give k / 2^23 - 1 (exact in float32). The golden file holds k
(integers, so no decimal parsing can blur the comparison).

    python3 scripts/golden/hashed_uniform.py > tests/golden/hashed_uniform.json
"""
import json

M = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def top24(stream, j):
    base = mix((stream + GOLDEN) & M)
    return mix((base + j * GOLDEN) & M) >> 40


cases = []
for stream in [0, 1, 12345, (1 << 63) + 7]:
    idx = list(range(8)) + [1000, 65535]
    cases.append({"stream": stream, "index": idx, "top24": [top24(stream, j) for j in idx]})
print(json.dumps({"generator": "scripts/golden/hashed_uniform.py", "cases": cases}, indent=1))
