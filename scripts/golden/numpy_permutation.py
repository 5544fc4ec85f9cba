"""Goldens for come-repro's NumPy permutation (src/rng/numpy.rs): what
`numpy.random.default_rng(seed).permutation(n)` returns for several seeds (one and two
32-bit words of entropy) and lengths, including the paper's calibration draw (seed 10 over
the 4444 rows of the shared WikiText-2 prefix), and PCG64's first raw 64-bit outputs.

    .venv/bin/python scripts/golden/numpy_permutation.py > tests/golden/numpy_permutation.json
"""
import json

import numpy as np

cases = []
for seed in [0, 1, 10, 42, 2**32 + 7, 2**63 - 1]:
    for n in [1, 2, 10, 257, 4444]:
        cases.append({"seed": seed, "n": n, "perm": np.random.default_rng(seed).permutation(n).tolist()})

raw = []
for seed in [0, 10, 2**40 + 3]:
    g = np.random.PCG64(seed)
    raw.append({"seed": seed, "u64": [str(x) for x in g.random_raw(8).tolist()]})

print(json.dumps({"numpy": np.__version__, "permutations": cases, "pcg64_raw": raw}))
