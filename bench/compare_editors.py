"""MEMIT, MEMIT + PRUNE, AlphaEdit, AlphaEdit + PRUNE on one model with one evaluation, several request orders.

Every arm runs through :class:`prune_fast.SequentialEditor` (the same trackers, evaluation and
records), in batches, on a fresh copy of the model:

    memit/none          MEMIT, never restrained
    memit/at_end-F      MEMIT, each edited weight restrained once after the last batch (the paper's
                        protocol: F on the raw accumulated Δ, no compounding)
    alphaedit/none      AlphaEdit (null-space projected, edit-key cache), never restrained
    alphaedit/at_end-F  AlphaEdit, restrained once at the end

Under ``at_end`` every batch is computed on the unrestrained model, so each ``at_end`` arm is its
editor's ``none`` run restrained once (:meth:`SequentialEditor.branch_at_end`): four arms cost two
sequences of edits.  Each request order is a seeded permutation of the same requests (order 0: as
loaded).  Writes ``OUT/order-<k>/results.json`` (schema ``prune_fast.sequential/1``, one arm per
editor × protocol), ``OUT/summary.json`` (the table) and ``OUT/tradeoff.png`` (efficacy after the
sequence against retained general ability, one point per arm and order).

``--model smollm2`` (default) is the real model with the shipped edit set and the real abilities (the
demo's setup, :func:`prune_fast.commands.demo.smollm2_setup`); ``--model testbed`` the package's toy.

Usage: ``python bench/compare_editors.py OUT [--model smollm2] [--n 300] [--batch 10] [--orders 2] [--fn ln]``
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prune_fast.commands.demo import REAL_COV_SAMPLES, DemoSetup, smollm2_setup, testbed_setup  # noqa: E402
from prune_fast.editors import AlphaEdit, AlphaEditHyperParams, MEMITHyperParams  # noqa: E402
from prune_fast.lm.evaluation import Evaluator  # noqa: E402
from prune_fast.runs.plots import retained_ability  # noqa: E402
from prune_fast.runs.results import results_document, write_results  # noqa: E402
from prune_fast.runs.runner import RunConfig, SequentialEditor  # noqa: E402
from prune_fast.spectral.restraint_fn import DEFAULT_FN  # noqa: E402

EDITORS = ("memit", "alphaedit")


def editor_hparams(setup: DemoSetup, model_name: str, cov_samples: int) -> dict[str, object]:
    """MEMIT's and AlphaEdit's settings: the test bed's presets, or the model family's on a real model."""
    if model_name == "testbed":
        return {"memit": MEMITHyperParams.preset("testbed"), "alphaedit": AlphaEditHyperParams.preset("testbed")}
    hps = {"memit": MEMITHyperParams.for_model(setup.model), "alphaedit": AlphaEditHyperParams.for_model(setup.model)}
    for hp in hps.values():
        hp.cov_samples = cov_samples
    return hps


def run_order(setup: DemoSetup, hps: dict[str, object], requests: list, args: argparse.Namespace,
              order: int) -> dict:
    arms = {}
    unedited = []  # the first editor's evaluation at 0 edits: the same unedited model for every arm
    for editor in EDITORS:
        cfg = RunConfig(protocol="none", fn=args.fn, batch_size=args.batch, eval_every=args.eval_every)
        model = copy.deepcopy(setup.model)
        kwargs = ({"editor": AlphaEdit(model, setup.tokenizer, hps["alphaedit"], setup.store)}
                  if editor == "alphaedit" else {"hparams": hps["memit"], "covariance": setup.store})
        runner = SequentialEditor(model, setup.tokenizer, config=cfg, progress=args.progress,
                                  evaluator=Evaluator(model, setup.tokenizer, abilities=setup.abilities,
                                                      heldout=setup.heldout), **kwargs)
        none = runner.run(requests, prior_evals=unedited)
        unedited = none.evals[:1]
        arms[f"{editor}/{none.name}"] = none
        print(f"order {order} {editor}/{none.name}: {none.wall_s:.0f} s", flush=True)
        at_end_cfg = dataclasses.replace(cfg, protocol="at_end")
        restrained = copy.deepcopy(setup.model)
        ev = Evaluator(restrained, setup.tokenizer, abilities=setup.abilities, heldout=setup.heldout)
        res = runner.branch_at_end(none, requests, at_end_cfg, restrained, ev)
        arms[f"{editor}/{res.name}"] = res
        print(f"order {order} {editor}/{res.name}: {res.wall_s:.0f} s", flush=True)
        del model, runner, restrained, ev
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
                      "update_ratio_median_max": max(sp["update_ratio_median"] for sp in arm["spectrum"].values()),
                      "n_restrained_at_end": sum(sp.get("at_end_restraint", {}).get("n_restrained", 0)
                                                 for sp in arm["spectrum"].values()),
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


def write_summary(out: Path) -> None:
    """``summary.json`` (per order and the mean over orders) and ``tradeoff.png`` from every
    ``OUT/order-*/results.json`` (orders may come from separate processes); prints the mean table."""
    docs = {path.parent.name: json.loads(path.read_text()) for path in sorted(out.glob("order-*/results.json"))}
    summary = {name: summarize(doc) for name, doc in docs.items()}
    first = next(iter(summary.values()))
    mean = {arm: {k: statistics.mean(summary[o][arm][k] for o in summary) for k in first[arm]} for arm in first}
    spread = {arm: {k: (min(summary[o][arm][k] for o in summary), max(summary[o][arm][k] for o in summary))
                    for k in first[arm]} for arm in first}
    (out / "summary.json").write_text(json.dumps({"orders": summary, "mean": mean, "min_max": spread}, indent=1))
    cfg = next(iter(docs.values()))["config"]
    plot(summary, out / "tradeoff.png",
         f"{cfg['n']} edits in batches of {cfg['batch']}, {len(docs)} orders ({cfg['model']})")
    keys = list(first[next(iter(first))])
    print(f"arm (mean over {len(docs)} orders) | " + " | ".join(keys))
    for arm, r in mean.items():
        print(f"{arm} | " + " | ".join(f"{r[k]:.3f}" for k in keys))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out")
    p.add_argument("--model", default="smollm2", choices=["smollm2", "testbed"])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--batch", type=int, default=10)
    p.add_argument("--orders", type=int, default=2)
    p.add_argument("--first-order", type=int, default=0, help="run orders first-order .. first-order+orders-1")
    p.add_argument("--fn", default=DEFAULT_FN)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--cov-samples", type=int, default=REAL_COV_SAMPLES, help="smollm2: covariance paragraphs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--summarize", action="store_true",
                   help="only (re)write summary.json and tradeoff.png from OUT/order-*/results.json")
    args = p.parse_args()
    if args.summarize:
        write_summary(Path(args.out))
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    start = time.perf_counter()
    setup = (smollm2_setup(args.n, 0, args.cov_samples, args.progress) if args.model == "smollm2"
             else testbed_setup(args.n, 1500, args.progress))
    hps = editor_hparams(setup, args.model, args.cov_samples)
    for order in range(args.first_order, args.first_order + args.orders):
        requests = list(setup.requests)
        if order:
            random.Random(order).shuffle(requests)
        arms = run_order(setup, hps, requests, args, order)
        config = {"command": "bench/compare_editors.py " + " ".join(sys.argv[1:]),
                  "model": setup.config["model"], "n": args.n, "batch": args.batch, "order_seed": order,
                  "fn": args.fn, "eval_every": args.eval_every,
                  "hparams": {name: hp.to_dict() for name, hp in hps.items()}}
        doc = json.loads(json.dumps(results_document(config, arms, setup.info)))
        write_results(out / f"order-{order}" / "results.json", doc)
        print(f"order {order} done at {time.perf_counter() - start:.0f} s", flush=True)
    write_summary(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
