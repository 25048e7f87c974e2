"""The trained test-bed model, loaded (or trained) once per test session and copied per test.

Tests edit models in place, so each gets a deep copy (0.9 M parameters: milliseconds); the
covariance store is shared because its statistics are of the unedited model.
"""
from __future__ import annotations

import copy
import functools

from prune_fast.editors import CovarianceStore
from prune_fast.testbed import Testbed, load_testbed, shipped_corpus
from prune_fast.cache import default_cache_dir


@functools.lru_cache(maxsize=1)
def _shared() -> Testbed:
    return load_testbed(progress=False)


def fresh_testbed() -> Testbed:
    """A copy of the session's test-bed whose model a test may edit."""
    bed = _shared()
    return Testbed(model=copy.deepcopy(bed.model), tokenizer=bed.tokenizer, world=bed.world, report=bed.report,
                   path=bed.path)


@functools.lru_cache(maxsize=1)
def shared_store() -> CovarianceStore:
    """Key statistics from the shipped corpus, cached on disk beside the model."""
    return CovarianceStore(shipped_corpus(), cache_dir=default_cache_dir(), progress=False)



@functools.lru_cache(maxsize=1)
def shared_mend():
    """The test bed's trained MEND editor (trained once per machine, then cached beside the model)."""
    from prune_fast.testbed.mend_editor import load_testbed_mend

    return load_testbed_mend(_shared(), progress=False)
