"""MEMIT, MEMIT + PRUNE, AlphaEdit, AlphaEdit + PRUNE on one model with one evaluation, several request orders.

Every arm runs through :class:`prune_fast.SequentialEditor` (the same trackers, evaluation and
records), in batches, on a fresh copy of the model:

    memit/none          MEMIT, never restrained
    memit/at_end-F      MEMIT, each edited weight restrained once after the last batch (the paper's
                        protocol: F on the raw accumulated Δ, no compounding)
    alphaedit/none      AlphaEdit (null-space projected, edit-key cache), never restrained
    alphaedit/at_end-F  AlphaEdit, restrained once at the end

Each request order is a seeded permutation of the same requests.  Writes ``OUT/order-<k>/results.json``
(schema ``prune_fast.sequential/1``, one arm per editor × protocol), ``OUT/summary.json`` (the table)
and ``OUT/tradeoff.png`` (efficacy after the sequence against retained general ability, one point per
arm and order).  Today it runs on the package's test-bed model (``--model testbed``); the real model
needs a loader, an edit set and abilities (see README.md, AlphaEdit).

Usage: ``python bench/compare_editors.py OUT [--n 200] [--batch 10] [--orders 2] [--fn linear]``
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_fast.editors import AlphaEdit, AlphaEditHyperParams, CovarianceStore, MEMITHyperParams  # noqa: E402
from prune_fast.lm.evaluation import Evaluator  # noqa: E402
from prune_fast.testbed import world_abilities  # noqa: E402
from prune_fast.runs.plots import retained_ability  # noqa: E402
from prune_fast.runs.results import results_document, write_results  # noqa: E402
from prune_fast.runs.runner import RunConfig, SequentialEditor  # noqa: E402
from prune_fast.cache import default_cache_dir  # noqa: E402
from prune_fast.testbed import load_testbed, shipped_corpus  # noqa: E402

EDITORS = ("memit", "alphaedit")


def run_order(bed, store, abilities, requests, args, order: int) -> dict:
    arms = {}
    for editor in EDITORS:
        for protocol in ("none", "at_end"):
            model = copy.deepcopy(bed.model)
            cfg = RunConfig(protocol=protocol, fn=args.fn, batch_size=args.batch, eval_every=args.eval_every)
            kwargs = ({"editor": AlphaEdit(model, bed.tokenizer, AlphaEditHyperParams.preset("testbed"), store)}
                      if editor == "alphaedit" else
                      {"hparams": MEMITHyperParams.preset("testbed"), "covariance": store})
            runner = SequentialEditor(model, bed.tokenizer, config=cfg, progress=False,
                                      evaluator=Evaluator(model, bed.tokenizer, abilities=abilities), **kwargs)
            res = runner.run(requests)
            arms[f"{editor}/{res.name}"] = res
            print(f"order {order} {editor}/{res.name}: {res.wall_s:.0f} s", flush=True)
    return arms


def summarize(doc: dict) -> dict[str, dict[str, float]]:
    rows = {}
    for name, arm in doc["arms"].items():
        fin = arm["final"]
        ratios = [sp["final"]["ratio"] for sp in arm["spectrum"].values()]
        rows[name] = {"efficacy": fin["after_sequence"]["efficacy"],
                      "generalization": fin["after_sequence"]["generalization"],
                      "locality": fin["after_sequence"]["locality"],
                      **{k: v for k, v in fin["general"].items()},
                      "retained": retained_ability(arm), "ratio_max": max(ratios),
                      "editor_s_median": arm["timing"]["editor_s_median"]}
    return rows


def plot(summary: dict[str, dict[str, dict[str, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"memit/none": ("s", "black"), "alphaedit/none": ("s", "tab:blue")}
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for order, rows in summary.items():
        for name, r in rows.items():
            marker, color = style.get(name, ("^", "grey" if name.startswith("memit") else "tab:cyan"))
            ax.scatter([r["retained"]], [r["efficacy"]], marker=marker, color=color, s=45,
                       label=name if order == next(iter(summary)) else None)
    ax.set(xlabel="retained general ability (mean of final / unedited accuracy)",
           ylabel="efficacy after the whole sequence", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--orders", type=int, default=2)
    p.add_argument("--fn", default="linear")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    bed = load_testbed(progress=False)
    store = CovarianceStore(shipped_corpus(), cache_dir=default_cache_dir(), progress=False)
    abilities, info = world_abilities(bed.world, bed.model, bed.tokenizer)
    base = bed.world.edit_requests(args.n)
    summary = {}
    for order in range(args.orders):
        requests = list(base)
        random.Random(order).shuffle(requests)
        arms = run_order(bed, store, abilities, requests, args, order)
        config = {"command": "bench/compare_editors.py", "model": "prune_fast test bed", "n": args.n,
                  "batch": args.batch, "order_seed": order, "fn": args.fn,
                  "hparams": {"memit": MEMITHyperParams.preset("testbed").to_dict(),
                              "alphaedit": AlphaEditHyperParams.preset("testbed").to_dict()}}
        doc = json.loads(json.dumps(results_document(config, arms, info)))
        write_results(out / f"order-{order}" / "results.json", doc)
        summary[f"order-{order}"] = summarize(doc)
    mean = {name: {k: statistics.mean(summary[o][name][k] for o in summary) for k in summary["order-0"][name]}
            for name in summary["order-0"]}
    (out / "summary.json").write_text(json.dumps({"orders": summary, "mean": mean,
                                                  "wall_s": time.perf_counter() - start}, indent=1))
    plot(summary, out / "tradeoff.png", f"{args.n} edits in batches of {args.batch}, {args.orders} orders (test bed)")
    keys = list(next(iter(mean.values())))
    print("arm (mean over orders) | " + " | ".join(keys))
    for name, r in mean.items():
        print(f"{name} | " + " | ".join(f"{r[k]:.3f}" for k in keys))
    return 0


if __name__ == "__main__":
    sys.exit(main())
