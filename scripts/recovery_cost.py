#!/usr/bin/env python3
"""Compute spent on the committed recovery stores: the recorded seconds of every stage that
ran (finished or failed; reused stages cost nothing), each run counted once by its hash
across the stores (a store started from another holds the other's runs too).

    python3 scripts/recovery_cost.py [STORE ...]   (default: results/recovery/*.sqlite)

Stage seconds are wall clock on the machine that ran them; on two cores, CPU time is at
most twice that."""
import glob
import sqlite3
import sys

stores = sys.argv[1:] or sorted(glob.glob("results/recovery/*.sqlite"))
seen = {}
for path in stores:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT r.hash, SUM(s.seconds) FROM runs r JOIN stages s ON s.run_id = r.id "
        "WHERE s.status IN ('finished', 'failed') GROUP BY r.id"
    ).fetchall()
    new = [(h, sec or 0.0) for h, sec in rows if h not in seen]
    seen.update(new)
    print(f"{path}: {len(new)} runs not counted before, {sum(s for _, s in new) / 3600:.2f} h")
total = sum(seen.values()) / 3600
print(f"all: {len(seen)} runs, {total:.2f} h of stage time (at most {2 * total:.1f} CPU-hours on two cores)")
