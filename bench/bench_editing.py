"""Benchmark the editing pipeline on a real model (SmolLM2-135M; issue 21).

Parts (``--only`` picks some; all run in one process, one thread unless ``--threads``):

``covariance``  key statistics of ROME's layer over the same texts:
    - ``full``: the previous pass (batches of 64 in corpus order, padded, the whole model and the
      LM head run, float64 products), and the relative difference of its C from the new pass's;
    - ``truncated``: :func:`prune_fast.editors.covariance.second_moments` (stops after the layer,
      length-packed batches, inference_mode, fp32 products into float64 sums);
    - MEMIT's five layers in one truncated pass;
    - the ``stats`` command with 1 and 2 processes (``torchrun``, gloo), one thread each.
``values``      ROME's value search, previous (``tests/value_reference.py``: whole model every step)
    vs current, on the same requests.
``split``       short journaled online runs (``python -m prune_fast edit`` in-process) of ROME and
    MEMIT with a fresh covariance cache: end-to-end wall time, and the per-step time split into
    editor / restraint / evaluation / journal / bookkeeping.
``scoring``     the scorer of every edit metric and ability (:func:`prune_fast.lm.evaluation.answer_logprob`)
    on the padded route and on the packed-trie route (shared prompt prefixes run once), alternated:
    one request's edit scores, 60 requests' edit scores, the few-shot tasks, recall; the largest
    difference of the two routes' log-probabilities.
``memory``      resident memory of a fresh process: loading SmolLM2 (peak and after), and the peak during
    its perplexity (:func:`prune_fast.lm.evaluation.perplexity`, as ``--heldout`` runs it) over the
    held-out paragraphs twice (60 texts) and over 600 corpus paragraphs.
``trend``       reads a journaled run's ``results.json`` and prints the per-edit cost by blocks of
    100 edits (the flatness target: edits 900-1000 ≤ 1.3 × edits 100-200).
``probe``       the same requests edited at two points of one long run: the model and trackers restored
    from each ``--checkpoints`` file (a journal's ``checkpoint.safetensors``), then every request of
    ``--probe-requests`` edited, applied (restraint and σ_max(W) as the runner does) and scored, the
    trackers put back after each: the cost per edit at edit 100 against edit 1,000 with the request
    mix held fixed (a run's own blocks differ in which requests they edit).

    python bench/bench_editing.py --samples 300 --edits 4 --split-edits 20
    python bench/bench_editing.py --write-requests 1000 /tmp/requests1000.json
    python bench/bench_editing.py --only trend --run-dir /tmp/rome1000
    python bench/bench_editing.py --only probe --probe-requests /tmp/probe.json \
        --checkpoints /tmp/rome100/run/checkpoint.safetensors /tmp/rome1000/run/checkpoint.safetensors

``--write-requests N FILE`` cycles the shipped SmolLM2 edit set (429 records) to N requests: pass
``c`` of the set keeps every subject and prompt and asks for the ``c``-th next other answer of the
same relation (so no request repeats; case ids ``<id>-c<c>``).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from prune_fast import SpectralTracker  # noqa: E402
from prune_fast.cache import default_cache_dir  # noqa: E402
from prune_fast.commands.edit import EditJob, load_local_model, load_requests, run_edit  # noqa: E402
from prune_fast.editors import EDITORS, CovarianceStore, MEMITHyperParams, ROMEHyperParams, resolve_site  # noqa: E402
from prune_fast.editors.covariance import second_moments  # noqa: E402
from prune_fast.lm import evaluation  # noqa: E402
from prune_fast.lm.edit_set import shipped_requests  # noqa: E402
from prune_fast.lm.evaluation import Evaluator, answer_logprob  # noqa: E402
from prune_fast.lm.probes import encode, pad_rows  # noqa: E402
from prune_fast.lm.real_abilities import covariance_corpus, real_abilities  # noqa: E402
from prune_fast.lm.requests import EditRequest  # noqa: E402
from prune_fast.runs.journal import Journal  # noqa: E402
from prune_fast.runs.runner import RunConfig, SequentialEditor  # noqa: E402

EDIT_SET = ROOT / "prune_fast" / "data" / "smollm2_counterfact.json"
FACTS = [("The capital of France is", "France", "Rome"), ("The Eiffel Tower is in the city of", "Eiffel Tower", "London"),
         ("The mother tongue of Barack Obama is", "Barack Obama", "French"), ("Paris is the capital of", "Paris", "Italy"),
         ("The Beatles were a band from", "The Beatles", "Japan"), ("Mount Everest is located in", "Mount Everest", "Peru"),
         ("The currency of Japan is the", "Japan", "euro"), ("Albert Einstein was born in", "Albert Einstein", "Spain")]


def machine() -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return (f"{os.uname().nodename}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
            f"thread(s), commit {commit}{' (modified)' if dirty else ''}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


def write_requests(n: int, path: Path) -> None:
    records = json.loads(EDIT_SET.read_text())
    answers: dict[str, list[str]] = {}
    for r in records:
        rw = r["requested_rewrite"]
        for a in (rw["target_new"]["str"], rw["target_true"]["str"]):
            answers.setdefault(rw["relation_id"], [])
            if a not in answers[rw["relation_id"]]:
                answers[rw["relation_id"]].append(a)
    out = []
    for c in range(-(-n // len(records))):
        for r in records:
            if len(out) == n:
                break
            rec = copy.deepcopy(r)
            rw = rec["requested_rewrite"]
            if c:
                pool = [a for a in answers[rw["relation_id"]] if a not in (rw["target_true"]["str"], rw["target_new"]["str"])]
                if len(pool) < c:   # a relation with too few other answers: keep the original target
                    pool = [rw["target_new"]["str"]] * c
                rw["target_new"]["str"] = pool[(r["case_id"] + c - 1) % len(pool)]
            rec["case_id"] = f"{r['case_id']}-c{c}"
            out.append(rec)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {len(out)} requests to {path}")


# -- covariance ----------------------------------------------------------------------------------

def full_pass(model, tok, site, texts, max_tokens=128, batch=64) -> tuple[float, int, torch.Tensor]:
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
    return time.perf_counter() - t0, n, acc / n


def bench_covariance(model, tok, texts, corpus_file: Path) -> None:
    site = resolve_site(model, ROMEHyperParams.for_model(model).layer)
    memit = [resolve_site(model, layer) for layer in MEMITHyperParams.for_model(model).layers]
    padded = sum(64 * max(len(encode(tok, t)[:128]) for t in texts[s:s + 64]) for s in range(0, len(texts), 64))
    t_full, n, c_full = full_pass(model, tok, site, texts)
    t0 = time.perf_counter()
    st = second_moments(model, tok, [site], texts, progress=False)
    t_trunc = time.perf_counter() - t0
    c_new = st.sums[site.module_name] / st.count
    rel = float((c_new - c_full).norm() / c_full.norm())
    t0 = time.perf_counter()
    second_moments(model, tok, memit, texts, progress=False)
    t_memit = time.perf_counter() - t0
    layers = ", ".join(str(s.layer) for s in memit)
    print(f"\n[covariance] {len(texts)} texts, {n} tokens (≤ 128 each; previous batches padded to {padded} = "
          f"{padded / n:.2f}x), {site.module_name}:")
    print(f"  full forward, corpus-order batches of 64 (previous)  {t_full:7.1f} s  {n / t_full:7.0f} tok/s")
    print(f"  truncated after layer {site.layer}, packed (current)          {t_trunc:7.1f} s  {n / t_trunc:7.0f} tok/s  "
          f"({t_full / t_trunc:.1f}x faster); |C - C_full|/|C_full| = {rel:.1e}")
    print(f"  MEMIT layers {layers}, one truncated pass          {t_memit:7.1f} s  {n / t_memit:7.0f} tok/s  "
          f"({t_memit / t_trunc:.2f}x the one-layer pass)")
    assert st.count == n
    bench_stats_command(corpus_file, site.layer, len(texts))


def bench_stats_command(corpus_file: Path, layer: int, n_texts: int) -> None:
    """``python -m prune_fast stats`` with 1 and 2 processes (torchrun, gloo), one thread each."""
    for nproc in (1, 2):
        with tempfile.TemporaryDirectory() as cache:
            cmd = ["-m", "prune_fast", "stats", "--model", "smollm2", "--corpus", str(corpus_file), "--layers",
                   str(layer), "--samples", str(n_texts), "--no-progress", "--threads", "1", "--cache-dir", cache]
            if nproc == 2:
                cmd = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                       "--master_port=29611", *cmd]
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT,
                                 env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
            wall = time.perf_counter() - t0
            found = re.search(r"\(([\d.]+) s, \d+ process", out.stdout)   # "<module>: <path> (12.3 s, 2 process(es))"
            inner = found.group(1) if out.returncode == 0 and found else f"failed: {out.stderr.strip()[-300:]}"
            print(f"  stats command, {nproc} process(es), 1 thread each: statistics {inner} s "
                  f"(process wall incl. model load {wall:.1f} s)")


# -- value search --------------------------------------------------------------------------------

def bench_values(model, tok, n_edits: int, extra_templates: tuple[str, ...] = ()) -> None:
    """Per request: the previous search (whole model, every step), the current one with every step
    on the padded batch (the packed route switched off), and the current one as shipped (packed
    suffix); same requests, same steps.  ``extra_templates`` are added to the preset's ``"{}"``."""
    from value_reference import optimize_value_reference

    from prune_fast.editors import values

    hp = ROMEHyperParams.for_model(model)
    hp.context_templates = ("{}", *extra_templates)
    module = model.get_submodule(resolve_site(model, hp.layer).module_name)
    reqs = [EditRequest(prompt=p.replace(s, "{}"), subject=s, target_new=o, case_id=i) for i, (p, s, o) in enumerate(FACTS)]
    packed = values._packed_route
    times: dict[str, list[float]] = {"previous": [], "padded": [], "packed": []}
    print(f"\n[values] ROME value search at {module.__class__.__name__} of layer {hp.layer}, up to {hp.v_steps} "
          f"steps, {len(hp.context_templates)} context template(s):")
    for r in reqs[:n_edits]:
        t0 = time.perf_counter(); a = optimize_value_reference(model, tok, r, module, hp); times["previous"].append(time.perf_counter() - t0)
        values._packed_route = lambda *_a, **_k: None
        try:
            t0 = time.perf_counter(); b = values.optimize_value(model, tok, r, module, hp); times["padded"].append(time.perf_counter() - t0)
        finally:
            values._packed_route = packed
        t0 = time.perf_counter(); c = values.optimize_value(model, tok, r, module, hp); times["packed"].append(time.perf_counter() - t0)
        err = max(float((x.target - a.target).norm() / a.target.norm()) for x in (b, c))
        print(f"  request {r.case_id}: {a.steps}/{b.steps}/{c.steps} steps, previous {times['previous'][-1]:.2f} s, "
              f"padded {times['padded'][-1]:.2f} s, packed {times['packed'][-1]:.2f} s, max |Δv*|/|v*| {err:.1e}")
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"  median: previous {med['previous']:.2f} s, padded {med['padded']:.2f} s, packed {med['packed']:.2f} s "
          f"(previous/packed {med['previous'] / med['packed']:.2f}x, padded/packed {med['padded'] / med['packed']:.2f}x)")


# -- split of a journaled run ----------------------------------------------------------------------

@contextlib.contextmanager
def timed_commits():
    """Seconds spent in ``Journal.commit_step`` (the step line, re-scoring line, checkpoints)."""
    spent: list[float] = []
    orig = Journal.commit_step

    def wrapped(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return orig(self, *a, **k)
        finally:
            spent.append(time.perf_counter() - t0)

    Journal.commit_step = wrapped
    try:
        yield spent
    finally:
        Journal.commit_step = orig


def split_table(doc: dict, commits: list[float]) -> list[tuple[str, float]]:
    arm = next(iter(doc["arms"].values()))
    steps = arm["steps"]
    med = lambda key: statistics.median(s[key] for s in steps)  # noqa: E731
    editor, restrain, score, stage = med("editor_s"), med("restrain_s"), med("score_s"), med("stage_s")
    commit = statistics.median(commits)
    rescoring = sum(e["eval_s"] for e in arm["evals"]) / len(steps)
    book = statistics.median(s["step_s"] - s["editor_s"] - s["restrain_s"] - s["score_s"] - s["stage_s"] for s in steps)
    return [("editor", editor), ("restraint (PRUNE)", restrain), ("evaluation: scoring the edit", score),
            ("evaluation: re-scoring points, per step", rescoring), ("journal (stage + commit)", stage + commit),
            ("bookkeeping (apply, step record)", book)]


def bench_split(n_edits: int, threads: int) -> None:
    from prune_fast.lm.models import resolve_model

    folder = resolve_model("smollm2")          # the converted model from the usual cache, not re-converted
    print(f"\n[split] journaled online runs of `edit` on smollm2, {n_edits} requests of the shipped set, fresh "
          "statistics cache (the covariance is computed inside the run):")
    for editor, batch in (("rome", 1), ("memit", 10)):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as out, timed_commits() as commits:
            corpus_file = Path(cache) / "corpus.txt"
            corpus_file.write_text("\n".join(covariance_corpus()) + "\n")
            os.environ["PRUNE_FAST_CACHE"] = cache
            t0 = time.perf_counter()
            doc = run_edit(EditJob(model=str(folder), requests=str(EDIT_SET), out=out, n=n_edits, editor=editor,
                                   corpus=[str(corpus_file)], batch_size=batch, protocol="online", eval_every=0,
                                   threads=threads, progress=False))
            wall = time.perf_counter() - t0
        parts = split_table(doc, commits)
        total = sum(v for _, v in parts)
        arm = next(iter(doc["arms"].values()))
        print(f"  {editor} (batch {batch}): {len(arm['steps'])} steps, whole run {wall:.1f} s end to end "
              f"(model load, covariance, edits, evaluations); per step (median):")
        for name, v in parts:
            print(f"    {name:42s} {v:8.4f} s  {100 * v / total:5.1f} %")
        print(f"    {'sum':42s} {total:8.4f} s")
    os.environ.pop("PRUNE_FAST_CACHE", None)


# -- peak memory of perplexity ---------------------------------------------------------------------

_MEMORY_CASE = """
import resource, sys, time, torch
from pathlib import Path
torch.set_num_threads({threads})
from prune_fast.commands.edit import load_local_model
from prune_fast.lm.evaluation import perplexity
from prune_fast.lm.real_abilities import covariance_corpus, heldout_text

def status(field):  # kB -> GiB, from /proc/self/status
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1]) / 2**20

model, tok, _ = load_local_model("smollm2")
loaded, load_peak = status("VmRSS"), status("VmHWM")
Path("/proc/self/clear_refs").write_text("5")   # reset the peak (VmHWM) to the current RSS
texts = {{"heldout x2": heldout_text() * 2, "corpus 600": covariance_corpus()[:600]}}[sys.argv[1]]
t0 = time.perf_counter()
ppl = perplexity(model, tok, texts)
n = sum(len(tok.encode(t)) for t in texts)
print(f"{{len(texts)}} {{n}} {{ppl:.3f}} {{time.perf_counter() - t0:.1f}} {{load_peak:.2f}} {{loaded:.2f}} {{status('VmHWM'):.2f}}")
"""


def bench_scoring(model, tok, rounds: int = 2) -> None:
    """Padded against packed-trie scoring, same calls, alternated ``rounds`` times (medians)."""
    requests = shipped_requests()[:60]
    abilities, _ = real_abilities(model, tok)
    few_shot = [(name, list(task)) for name, task in abilities.items() if not callable(task)]
    recall = [(name, list(task(requests))) for name, task in abilities.items() if callable(task)]
    ev = Evaluator(model, tok)
    cases = [("edit scores, 1 request (12 pairs)", lambda: ev.edit_scores(requests[:1])),
             ("edit scores, 60 requests (720 pairs)", lambda: ev.edit_scores(requests)),
             (f"{len(few_shot)} few-shot tasks ({sum(len(p) for _, p in few_shot)} pairs)",
              lambda: [answer_logprob(model, tok, p) for _, p in few_shot]),
             *((f"{name} ({len(p)} pairs)", (lambda p=p: answer_logprob(model, tok, p))) for name, p in recall)]
    routes = {"padded": False, "packed": True}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for route, ok in routes.items():
            evaluation._TREE_ROUTE_OK[model] = ok
            for name, fn in cases:
                t0 = time.perf_counter()
                fn()
                times.setdefault((name, route), []).append(time.perf_counter() - t0)
    pairs = [pr for _, p in few_shot for pr in p]
    lp = {}
    for route, ok in routes.items():
        evaluation._TREE_ROUTE_OK[model] = ok
        lp[route] = answer_logprob(model, tok, pairs)[0]
    evaluation._TREE_ROUTE_OK.pop(model, None)
    print("\n## scoring: padded batches against packed tries (median s)\n")
    print("| call | padded | packed | padded / packed |\n|---|---|---|---|")
    for name, _ in cases:
        a, b = (statistics.median(times[(name, r)]) for r in routes)
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}× |")
    print(f"\nlargest |Δ log-prob| between the routes over the few-shot pairs: "
          f"{float((lp['padded'] - lp['packed']).abs().max()):.2e}")


def bench_memory(threads: int) -> None:
    print("\n[memory] resident memory of a fresh process (GiB): loading SmolLM2 (its peak, then what stays), then "
          "the peak during perplexity (chunked; the peak counter reset after loading):")
    for case in ("heldout x2", "corpus 600"):
        out = subprocess.run([sys.executable, "-c", _MEMORY_CASE.format(threads=threads), case], capture_output=True,
                             text=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        if out.returncode:
            print(f"  {case}: failed: {out.stderr.strip()[-300:]}")
            continue
        n_texts, n_tok, ppl, secs, load_peak, loaded, peak = out.stdout.split()[-7:]
        print(f"  {case:11s} {n_texts:>4s} texts {n_tok:>6s} tokens: perplexity {ppl:>7s} in {secs:>5s} s; load peak "
              f"{load_peak}, after load {loaded}, peak during perplexity {peak} (+{float(peak) - float(loaded):.2f})")


# -- cost trend of a long run ------------------------------------------------------------------------

def bench_trend(run_dir: Path) -> None:
    steps = []
    for line in (run_dir / "run" / "journal.jsonl").read_text().splitlines():
        d = json.loads(line)
        if d.get("type") == "step":
            steps.append(d["record"])
    steps.sort(key=lambda s: s["step"])
    print(f"\n[trend] {run_dir}: {len(steps)} steps journaled; per-edit cost by blocks of 100 (median, s):")
    print("  edits       step    editor  restraint  scoring  stage")
    blocks = {}
    for b in range(0, len(steps), 100):
        blk = steps[b:b + 100]
        row = [statistics.median(s.get(k, 0.0) for s in blk) for k in ("step_s", "editor_s", "restrain_s", "score_s", "stage_s")]
        blocks[b] = row[0]
        print(f"  {b + 1:4d}-{b + len(blk):4d}  " + "  ".join(f"{v:8.4f}" for v in row))
    if 100 in blocks and len(blocks) > 2:
        last = max(blocks)
        print(f"  last block / edits 101-200: {blocks[last] / blocks[100]:.2f}x (target ≤ 1.3x)")


# -- the same requests at two points of a long run ----------------------------------------------------

def bench_probe(checkpoints: list[Path], probe_file: Path) -> None:
    """Edit, apply and score the requests of ``probe_file`` on the model restored from each checkpoint
    (online ln ROME with the ``edit`` command's settings for smollm2); trackers restored after each."""
    probes = load_requests(probe_file)
    print(f"\n[probe] {len(probes)} requests ({probes[0].case_id} ..), online ln ROME, per checkpoint (median s; "
          "apply = restraint + σ_max(W) + writing the weight, from a restored tracker: no warm start):")
    print("  edits      step    editor     apply  restraint  scoring  value-search steps (median, per request)")
    value_steps: list[int] = []

    class _Steps(logging.Handler):   # ROME's value search reports its step count at debug level
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg.startswith("value for"):
                value_steps.append(int(record.args[3]))

    values_log = logging.getLogger("prune_fast.editors.values")
    values_log.setLevel(logging.DEBUG)
    values_log.addHandler(_Steps())
    rows = []
    for ckpt in checkpoints:
        model, tok, _ = load_local_model("smollm2")
        hp = EDITORS["rome"].hparams_class.resolve(model)
        editor = EDITORS["rome"](model, tok, hp, CovarianceStore(covariance_corpus(), cache_dir=default_cache_dir(),
                                                                   progress=False))
        runner = SequentialEditor(model, tok, config=RunConfig(protocol="online", fn="ln"),
                                  evaluator=Evaluator(model, tok), progress=False, editor=editor)
        step, states = Journal(ckpt.parent, {}, 1).load_checkpoint()
        params = dict(model.named_parameters())
        editor.prepare()
        times = []
        value_steps.clear()
        for req in probes:
            runner.adopt_trackers({name: SpectralTracker.from_state_dict(params[name], st, fn="ln")
                                   for name, st in states.items()})
            t0 = time.perf_counter()
            updates = runner.compute_updates([req])
            t1 = time.perf_counter()
            apply_s, restrain_s, _ = runner.apply_updates(updates, with_sigma_max_weight=True)
            t2 = time.perf_counter()
            runner.evaluator.edit_scores([req])
            t3 = time.perf_counter()
            times.append((t3 - t0, t1 - t0, apply_s, restrain_s, t3 - t2))
        row = [statistics.median(t[i] for t in times) for i in range(5)]
        row.append(sum(t[1] for t in times) / sum(value_steps))   # editor seconds per value-search step
        rows.append(row)
        print(f"  {step + 1:5d}  " + "  ".join(f"{v:8.4f}" for v in row[:5])
              + f"  {statistics.median(value_steps):g} {value_steps}; editor {row[5]:.3f} s per step  ({ckpt})")
    if len(rows) == 2:
        print(f"  ratio (second / first): step {rows[1][0] / rows[0][0]:.2f}x, editor {rows[1][1] / rows[0][1]:.2f}x, "
              f"apply {rows[1][2] / rows[0][2]:.2f}x, editor per value-search step {rows[1][5] / rows[0][5]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=300, help="covariance texts (of the smollm2 documentation corpus)")
    ap.add_argument("--edits", type=int, default=4, help="requests for the value-search comparison")
    ap.add_argument("--templates", nargs="*", default=["The", "I think", "In the news:", "When", "It is known that"],
                    help="values: prefixes of a second comparison with these context templates added to '{}' "
                         "(as a reference-style multi-template value search uses)")
    ap.add_argument("--split-edits", type=int, default=20, help="requests per journaled run in the split")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="+", choices=["covariance", "stats", "values", "split", "scoring", "memory", "trend",
                                                     "probe"],
                    default=None)
    ap.add_argument("--run-dir", type=Path, help="trend: the --out folder of a journaled edit run")
    ap.add_argument("--checkpoints", nargs="+", type=Path, help="probe: journal checkpoints (edit-run folders' "
                    "run/checkpoint.safetensors), e.g. after 100 and after 1,000 edits of one request file")
    ap.add_argument("--probe-requests", type=Path, help="probe: requests edited at every checkpoint (never edited "
                    "in the run)")
    ap.add_argument("--write-requests", nargs=2, metavar=("N", "FILE"))
    args = ap.parse_args()
    if args.write_requests:
        write_requests(int(args.write_requests[0]), Path(args.write_requests[1]))
        return
    parts = args.only or ["covariance", "values", "split", "scoring", "memory"]
    if parts == ["stats"]:
        texts = covariance_corpus()[:args.samples]
        with tempfile.TemporaryDirectory() as tmp:
            corpus_file = Path(tmp) / "corpus.txt"
            corpus_file.write_text("\n".join(texts) + "\n")
            print(machine())
            bench_stats_command(corpus_file, 5, len(texts))   # ROME's layer on SmolLM2 (llama preset)
        return
    if parts == ["trend"]:
        bench_trend(args.run_dir)
        return
    if parts == ["probe"]:
        torch.set_num_threads(args.threads)
        print(machine())
        bench_probe(args.checkpoints, args.probe_requests)
        return
    torch.set_num_threads(args.threads)
    print(machine())
    model, tok, _ = load_local_model("smollm2")
    texts = covariance_corpus()[:args.samples]
    if "covariance" in parts:
        with tempfile.TemporaryDirectory() as tmp:
            corpus_file = Path(tmp) / "corpus.txt"
            corpus_file.write_text("\n".join(texts) + "\n")
            bench_covariance(model, tok, texts, corpus_file)
    if "values" in parts:
        bench_values(model, tok, args.edits)
        if args.templates:
            bench_values(model, tok, args.edits, tuple(t + " {}" for t in args.templates))
    if "split" in parts:
        bench_split(args.split_edits, args.threads)
    if "scoring" in parts:
        bench_scoring(model, tok)
    if "memory" in parts:
        bench_memory(args.threads)
    if "trend" in parts and args.run_dir:
        bench_trend(args.run_dir)


if __name__ == "__main__":
    main()
