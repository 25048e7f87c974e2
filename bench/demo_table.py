"""The README's headline table: several ``demo`` runs (request orders) as mean ± standard deviation.

    for s in 0 1 2; do python -m prune_fast demo --n 60 --seed $s --out demo_s$s; done
    python bench/demo_table.py demo_s0/results.json demo_s1/results.json demo_s2/results.json

One row per arm (plus the unedited model), in the order of the first file: efficacy after the
sequence and right after each edit, paraphrases, locality, every general ability, σ_max(W)/σ* of
the worst edited weight at the end, and the paper's summary figure (``config.summary``, percent).
Also prints each run's wall time and the per-run summary figures. Every file must hold the same arms
and abilities; a mismatch is an error naming the file.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

EDIT_COLUMNS = (("after_sequence", "efficacy", "efficacy after the sequence"),
                ("immediate", "efficacy", "efficacy right after each edit"),
                ("after_sequence", "generalization", "paraphrase"),
                ("after_sequence", "locality", "locality"))


def _cell(values: list[float], digits: int) -> str:
    if not values or any(v is None or math.isnan(v) for v in values):
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def _ratio(arm: dict) -> float:
    return max(sp["final"]["ratio"] for sp in arm["spectrum"].values())


def table(docs: list[dict], names: list[str]) -> str:
    first = docs[0]
    arms = list(first["arms"])
    abilities = list(first["arms"][arms[0]]["final"]["general"])
    for doc, name in zip(docs, names):
        if list(doc["arms"]) != arms or list(doc["arms"][arms[0]]["final"]["general"]) != abilities:
            raise SystemExit(f"{name}: other arms or abilities than {names[0]}")
    head = [c[2] for c in EDIT_COLUMNS] + abilities + ["σ_max(W)/σ*", "capability-loss reduction vs none (%)"]
    lines = ["| arm | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    base = [doc["arms"][arms[0]]["final"]["baseline_general"] for doc in docs]
    lines.append("| unedited | " + " | ".join(["—"] * len(EDIT_COLUMNS)) + " | "
                 + " | ".join(_cell([b[a] for b in base], 2 if a == "perplexity" else 3) for a in abilities)
                 + " | 1.00 | — |")
    for arm in arms:
        runs = [doc["arms"][arm] for doc in docs]
        cells = []
        for part, metric, _ in EDIT_COLUMNS:
            cell = _cell([r["final"][part].get(metric) for r in runs], 3)
            # at_end scores each edit right after it on the still unrestrained model: none's column
            cells.append(f"({cell})*" if part == "immediate" and arm.startswith("at_end") else cell)
        cells += [_cell([r["final"]["general"][a] for r in runs], 2 if a == "perplexity" else 3) for a in abilities]
        cells.append(_cell([_ratio(r) for r in runs], 2))
        summary = [doc["config"]["summary"].get(arm, {}).get("mean") for doc in docs]
        cells.append("—" if arm == "none" else _cell([100 * s if s is not None else float("nan") for s in summary], 1))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="results.json of each demo run")
    args = p.parse_args()
    docs = [json.loads(Path(f).read_text()) for f in args.results]
    print(table(docs, args.results))
    print()
    for name, doc in zip(args.results, docs):
        cfg = doc["config"]
        per_run = {arm: round(100 * v["mean"], 1) for arm, v in cfg["summary"].items() if v.get("mean") is not None}
        print(f"{name}: seed {cfg.get('seed')}, n {cfg['n']}, wall {cfg['wall_s']:.0f} s, commit "
              f"{cfg['machine'].get('commit')}, summary % {per_run}")


if __name__ == "__main__":
    sys.exit(main())
