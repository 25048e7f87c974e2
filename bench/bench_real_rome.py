"""Single ROME updates on SmolLM2-135M: σ_max(ΔW)/σ* and ‖k‖ with the bare-prompt key vs generated prefixes.

Each request of the shipped edit set is edited alone on the unedited model (no sequence), once
with ``n_key_prefixes=0`` (the key of the prompt as given) and once with the reference ROME's
construction (``n_key_prefixes=N``: direction from the mean key over N generated prefixes plus
"{}", exact at the bare prompt's key).  Prints median / max ratio, how many updates reach σ*, and
the requests whose subject opens the prompt (key at position 0 when the tokenizer adds no BOS).

    PRUNE_FAST_CACHE=... python bench/bench_real_rome.py --n 40 --prefixes 10 --cov-samples 400
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from prune_fast.lm.edit_set import shipped_requests
from prune_fast.editors import CovarianceStore, ROMEHyperParams, compute_rome
from prune_fast.editors.architectures import resolve_site
from prune_fast.lm.models import load_smollm2
from prune_fast.lm.real_abilities import covariance_corpus
from prune_fast.cache import default_cache_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--prefixes", type=int, default=10)
    p.add_argument("--cov-samples", type=int, default=400)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, folder = load_smollm2()
    store = CovarianceStore(covariance_corpus(), cache_dir=default_cache_dir(), model_id=f"smollm2-{folder.name}",
                            progress=False)
    base = ROMEHyperParams.for_model(model)
    base.cov_samples = args.cov_samples
    site = resolve_site(model, base.layer, base.mlp_out_template, base.layer_template)
    w = dict(model.named_parameters())[site.param_name].detach().double()
    sigma_star = float(torch.linalg.svdvals(w)[0])
    reqs = shipped_requests(limit=args.n)
    print(f"SmolLM2-135M, {site.param_name}, σ* = {sigma_star:.3f}, {len(reqs)} single edits, "
          f"{args.cov_samples} covariance samples, {torch.get_num_threads()} threads")
    for n_pre in (0, args.prefixes):
        hp = dataclasses.replace(base, n_key_prefixes=n_pre)
        ratios, norms, times, first = [], [], [], []
        for r in reqs:
            t0 = time.perf_counter()
            res = compute_rome(model, tok, r, hp, store)
            times.append(time.perf_counter() - t0)
            u, v = res.updates[0].u.double(), res.updates[0].v.double()
            ratios.append(float(u.norm() * v.norm()) / sigma_star)
            norms.append(float(res.key.norm()))
            if r.prompt.startswith("{}"):
                first.append((r.subject, ratios[-1], norms[-1]))
        print(f"\nn_key_prefixes={n_pre}: σ(ΔW)/σ* median {statistics.median(ratios):.3f}, max {max(ratios):.3f}, "
              f"≥ σ*: {sum(x >= 1 for x in ratios)} of {len(ratios)}; ‖k‖ median {statistics.median(norms):.2f}, "
              f"min {min(norms):.2f}; seconds per edit median {statistics.median(times):.2f}")
        if first:
            print("  subject opens the prompt: " + ", ".join(f"{s} {x:.2f} (‖k‖ {k:.2f})" for s, x, k in first))


if __name__ == "__main__":
    main()
