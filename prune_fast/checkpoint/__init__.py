"""Restraining whole models: safetensors checkpoints on disk and models in memory.

``restrain_checkpoint(base, edited, out)`` streams every edited 2-D weight of EDITED against BASE
through :func:`prune_fast.restrain_`; ``restrain_model_(model, original_weights)`` does the same in
place on a loaded model.
"""
from .restrain_saved import RestrainReport, TensorReport, restrain_checkpoint
from .restrain_model import restrain_model_

__all__ = ["restrain_checkpoint", "restrain_model_", "RestrainReport", "TensorReport"]
