"""Knowledge editors that produce factored updates for the tracker: ROME, MEMIT, AlphaEdit and MEND.

Data flows one way: ``EditRequest`` → ``compute_rome`` / ``compute_memit`` / ``AlphaEdit.compute`` / ``MEND.compute``
(factored ``u, v``, nothing written) → ``TrackerSet.apply_`` (one ``SpectralTracker`` per edited
weight) → weights.  MEND's editor network is trained first by :func:`prune_fast.editors.mend.train`.
``transformers`` is not imported by this package; the editors work on any model whose
``config.model_type`` is in :data:`ARCHITECTURES` (or given explicit module templates).
"""
from .alphaedit import AlphaEdit, AlphaEditResult
from .apply import FactoredUpdate, TrackerSet
from .architectures import ARCHITECTURES, ArchitectureSpec, EditSite, Layout, architecture_of, resolve_site
from .covariance import CovarianceStore, read_corpus
from .errors import (EditorCheckpointError, EditorError, InvalidLayerError, MalformedRequestError,
                     UnsupportedArchitectureError)
from .hparams import AlphaEditHyperParams, MEMITHyperParams, MENDHyperParams, ROMEHyperParams
from .memit import MEMITResult, compute_memit
from .mend import MEND, MENDResult
from .requests import EditRequest, counterfact_request, load_counterfact, load_zsre, zsre_request
from .rome import ROMEResult, compute_rome

__all__ = [
    "EditRequest", "load_counterfact", "load_zsre", "counterfact_request", "zsre_request",
    "ROMEHyperParams", "MEMITHyperParams", "compute_rome", "compute_memit", "ROMEResult", "MEMITResult",
    "MENDHyperParams", "MEND", "MENDResult", "AlphaEditHyperParams", "AlphaEdit", "AlphaEditResult",
    "FactoredUpdate", "TrackerSet", "CovarianceStore", "read_corpus",
    "ARCHITECTURES", "ArchitectureSpec", "EditSite", "Layout", "architecture_of", "resolve_site",
    "EditorError", "UnsupportedArchitectureError", "InvalidLayerError", "MalformedRequestError",
    "EditorCheckpointError",
]
