"""prune_fast and EasyEdit side by side on SmolLM2-135M: ROME's key statistics and 20 sequential edits.

EasyEdit is not a dependency and nothing of it is in this repository: pass ``--easyedit DIR``, a
folder holding an ``easyeditor`` package with its ROME files (``models/rome/*``, ``util/{nethook,
generate,globals,device,hparams,runningstats,logit_lens}.py``, empty ``__init__`` files above
them), adapted to read a local text file instead of a hub dataset (see bench/RESULTS.md for the
exact changes).  Both tools get the same model object's weights, the same texts (the smollm2
documentation corpus, ≤ 128 tokens each), layer 5's ``mlp.down_proj``, the same value-search
hyper-parameters (llama preset: 25 steps, lr 0.5, weight decay 1e-3, clamp 4, KL 0.0625, no
generated context prefixes) and the same 20 requests; one thread; the two tools alternate.

    python bench/side_by_side_easyedit.py --easyedit /tmp/easyedit [--samples 839] [--edits 20] [--rounds 1]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prune_fast.lm.edit_set import shipped_requests  # noqa: E402
from prune_fast.editors import CovarianceStore, ROMEHyperParams, compute_rome  # noqa: E402
from prune_fast.updates import TrackerSet  # noqa: E402
from prune_fast.editors.key_cache import KeyCache  # noqa: E402
from prune_fast.lm.models import load_smollm2  # noqa: E402
from prune_fast.lm.real_abilities import covariance_corpus  # noqa: E402


def easyedit_hparams(hp: ROMEHyperParams, n_layers: int, samples: int, stats_dir: str) -> dict:
    return {"alg_name": "ROME", "model_name": "smollm2", "stats_dir": stats_dir, "device": "cpu",
            "layers": [hp.layer], "fact_token": "subject_last", "v_num_grad_steps": hp.v_steps, "v_lr": hp.v_lr,
            "v_loss_layer": n_layers - 1, "v_weight_decay": hp.v_weight_decay, "clamp_norm_factor": hp.clamp_norm_factor,
            "kl_factor": hp.kl_factor, "mom2_adjustment": True, "context_template_length_params": [],
            "rewrite_module_tmp": "model.layers.{}.mlp.down_proj", "layer_module_tmp": "model.layers.{}",
            "mlp_module_tmp": "model.layers.{}.mlp", "attn_module_tmp": "model.layers.{}.self_attn",
            "ln_f_module": "model.norm", "lm_head_module": "lm_head", "mom2_dataset": "wikipedia",
            "mom2_n_samples": samples, "mom2_dtype": "float32", "model_parallel": False, "fp16": False}


def run_ours(base, tok, texts, reqs, hp) -> tuple[float, list[float]]:
    model = copy.deepcopy(base)
    with tempfile.TemporaryDirectory() as cache:
        store = CovarianceStore(texts, cache_dir=cache, progress=False)
        t0 = time.perf_counter()
        store.factor(model, tok, _site(model, hp), hp.cov_samples, hp.cov_max_tokens, hp.cov_ridge)
        t_cov = time.perf_counter() - t0
        trackers, cache_k, times = TrackerSet(model, fn="ln"), KeyCache(model), []
        for r in reqs:
            t0 = time.perf_counter()
            upd = compute_rome(model, tok, r, hp, store, key_cache=cache_k).updates
            trackers.apply_(upd)
            times.append(time.perf_counter() - t0)
    return t_cov, times


def _site(model, hp):
    from prune_fast.editors import resolve_site

    return resolve_site(model, hp.layer, hp.mlp_out_template, hp.layer_template)


def run_easyedit(base, tok, corpus_file, reqs, hp, samples) -> tuple[float, list[float]]:
    from easyeditor.models.rome import ROMEHyperParams as EEHyperParams, apply_rome_to_model
    from easyeditor.models.rome import compute_u, rome_main
    from easyeditor.models.rome.layer_stats import layer_stats

    model = copy.deepcopy(base)
    compute_u.inv_mom2_cache.clear()
    rome_main.CONTEXT_TEMPLATES_CACHE = None
    os.environ["EASYEDIT_LOCAL_CORPUS"], os.environ["EASYEDIT_MAXLEN"] = str(corpus_file), str(hp.cov_max_tokens)
    with tempfile.TemporaryDirectory() as stats_dir:
        yml = Path(stats_dir) / "rome.yaml"
        yml.write_text(yaml.safe_dump(easyedit_hparams(hp, model.config.num_hidden_layers, samples, stats_dir)))
        ehp = EEHyperParams.from_hparams(str(yml))
        quiet = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(quiet):
            layer_stats(model, tok, ehp.rewrite_module_tmp.format(hp.layer), stats_dir, ehp.mom2_dataset, ["mom2"],
                        sample_size=samples, precision=ehp.mom2_dtype, hparams=ehp)
            compute_u.get_inv_cov(model, tok, ehp.rewrite_module_tmp.format(hp.layer), ehp.mom2_dataset,
                                  ehp.mom2_n_samples, ehp.mom2_dtype, hparams=ehp)          # the inverse, cached
        t_cov = time.perf_counter() - t0
        times = []
        for r in reqs:
            request = {"prompt": r.prompt, "subject": r.subject, "target_new": r.target_new}
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(quiet):
                apply_rome_to_model(model, tok, [request], ehp)
            times.append(time.perf_counter() - t0)
    return t_cov, times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--easyedit", required=True, type=Path)
    ap.add_argument("--samples", type=int, default=839)
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tools", nargs="+", choices=["prune_fast", "EasyEdit"], default=["prune_fast", "EasyEdit"])
    args = ap.parse_args()
    sys.path.insert(0, str(args.easyedit))
    torch.set_num_threads(1)
    base, tok, _ = load_smollm2()
    base.eval()
    texts = covariance_corpus()[:args.samples]
    hp = ROMEHyperParams.for_model(base)
    hp.cov_samples = len(texts)
    reqs = shipped_requests(limit=args.edits)
    print(f"SmolLM2-135M, layer {hp.layer}, {len(texts)} texts (≤ {hp.cov_max_tokens} tokens), {len(reqs)} sequential "
          f"ROME edits, 1 thread, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    with tempfile.TemporaryDirectory() as tmp:
        corpus_file = Path(tmp) / "corpus.txt"
        corpus_file.write_text("\n".join(texts) + "\n")
        for rnd in range(args.rounds):
            for name, fn in (("prune_fast", lambda: run_ours(base, tok, texts, reqs, hp)),
                             ("EasyEdit", lambda: run_easyedit(base, tok, corpus_file, reqs, hp, len(texts)))):
                if name not in args.tools:
                    continue
                t_cov, times = fn()
                print(f"round {rnd + 1} {name:10s}: statistics (+ factor/inverse) {t_cov:6.1f} s; edit median "
                      f"{statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}); "
                      f"{len(times)} edits {sum(times):6.1f} s; statistics + edits {t_cov + sum(times):6.1f} s")


if __name__ == "__main__":
    main()
