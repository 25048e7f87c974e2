"""A journaled sequential run in its own process, for the SIGKILL/resume test of tests/test_journal.py.

Usage: python tests/journal_worker.py OUT N PROTOCOL [--resume]
Writes OUT/final.safetensors (the edited weights) when the run finishes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch


def main() -> int:
    out, n, protocol = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    resume = "--resume" in sys.argv
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from prune_fast.editors import CovarianceStore, ROMEHyperParams
    from prune_fast.lm.evaluation import Evaluator
    from prune_fast.runs.runner import RunConfig, SequentialEditor
    from prune_fast.cache import default_cache_dir
    from prune_fast.testbed import load_testbed, shipped_corpus

    bed = load_testbed(progress=False)
    store = CovarianceStore(shipped_corpus(), cache_dir=default_cache_dir(), progress=False)
    adds = [(e.prompt, e.answer) for e in bed.world.addition_examples()]
    ev = Evaluator(bed.model, bed.tokenizer, abilities={"addition": adds})
    runner = SequentialEditor(bed.model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"), covariance=store,
                              config=RunConfig(protocol=protocol, fn="log1.2", eval_every=5), evaluator=ev,
                              progress=False)
    requests = bed.world.edit_requests(n)
    header = {"model": str(bed.path), "requests": [r.case_id for r in requests]}
    runner.run_journaled(requests, out / "run", header, resume=resume, checkpoint_every=4)
    save_file({name: tr.weight.detach().contiguous() for name, tr in runner.spectral_trackers().items()},
              str(out / "final.safetensors"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
