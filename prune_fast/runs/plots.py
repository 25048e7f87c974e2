"""PNG plots of a sequential-run results document (matplotlib is imported here only, Agg backend).

Example::

    paths = plot_results(json.load(open("out/results.json")), "out")
    # out/sigma_ratio.png, out/efficacy.png, out/abilities.png (+ out/tradeoff.png for a sweep)
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_results", "retained_ability"]


def _plt():
    import matplotlib  # heavy: imported only where used

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def retained_ability(arm: Mapping[str, Any]) -> float:
    """Mean over the abilities of (final accuracy / unedited accuracy); perplexity is left out."""
    fin, base = arm["final"]["general"], arm["final"]["baseline_general"]
    ratios = [fin[k] / base[k] for k in base if k != "perplexity" and base.get(k) and fin.get(k) is not None]
    return sum(ratios) / len(ratios) if ratios else math.nan


def _style(name: str) -> dict[str, Any]:
    if name == "none":
        return {"color": "black", "linestyle": "-", "linewidth": 2}
    return {"linestyle": "--" if name.startswith("at_end") else "-"}


def plot_results(doc: Mapping[str, Any], out_dir: str | Path, tradeoff: bool = False) -> list[Path]:
    """Write the plots of ``doc`` into ``out_dir``; returns their paths."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arms = doc["arms"]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, arm in arms.items():
        for param, sp in arm["spectrum"].items():
            label = name if len(arm["spectrum"]) == 1 else f"{name} {param}"
            xs, ys = list(sp["edits"]), list(sp["ratio"])
            if arm["config"]["protocol"] == "at_end" and sp.get("final"):
                xs.append(arm["n_requests"])        # the one restraint after the last edit
                ys.append(sp["final"]["ratio"])
            ax.plot(xs, ys, label=label, **_style(name))
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set(xlabel="edits", ylabel="σ_max(W) / σ*", title="How far editing pushes the weight (σ* = σ_max(W0))")
    ax.legend(fontsize=7)
    paths.append(out / "sigma_ratio.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    abilities = [k for k in next(iter(arms.values()))["final"]["general"] if k != "perplexity"]
    panels = ["efficacy", *abilities]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8), squeeze=False)
    for ax, metric in zip(axes[0], panels):
        for name, arm in arms.items():
            xs, ys = [], []
            for e in arm["evals"]:
                value = e["edit"].get(metric) if metric == "efficacy" else e["general"].get(metric)
                if value is not None:
                    xs.append(e["edits"])
                    ys.append(value)
            ax.plot(xs, ys, marker="o", markersize=3, label=name, **_style(name))
        ax.set(xlabel="edits", ylabel="accuracy", title=metric + (" (all edits re-scored)" if metric == "efficacy" else ""),
               ylim=(-0.02, 1.02))
    axes[0][0].legend(fontsize=7)
    paths.append(out / "metrics.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    if tradeoff:
        fig, ax = plt.subplots(figsize=(6.5, 5))
        for name, arm in arms.items():
            x, y = retained_ability(arm), arm["final"]["after_sequence"].get("efficacy")
            marker = {"none": "s", "online": "o", "at_end": "^"}[arm["config"]["protocol"]]
            ax.scatter([x], [y], marker=marker, s=50, color="black" if name == "none" else None)
            ax.annotate(name, (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set(xlabel="retained general ability (mean of final / unedited accuracy)",
               ylabel="efficacy after the whole sequence",
               title=f"Trade-off after {next(iter(arms.values()))['n_requests']} edits (● online, ▲ at_end, ■ none)")
        paths.append(out / "tradeoff.png")
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
