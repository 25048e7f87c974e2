"""Knowledge editors that produce factored updates for the tracker: ROME, MEMIT, AlphaEdit and MEND.

Every editor is an :class:`Editor` (``editors/base.py``): ``ROME``, ``MEMIT``, ``AlphaEdit`` and ``MEND``
are built on a model and ``.compute(requests) -> EditResult``.  Data flows one way:
:class:`~prune_fast.lm.requests.EditRequest` → ``editor.compute`` (factored ``u, v``, nothing written) →
:class:`prune_fast.updates.TrackerSet` ``.apply_`` (one ``SpectralTracker`` per edited weight) → weights.  MEND's editor network is trained first by :func:`prune_fast.editors.mend.train`.
``transformers`` is not imported by this package; the editors work on any model whose
``config.model_type`` is in :data:`ARCHITECTURES` (or given explicit module templates).
"""
from .alphaedit import AlphaEdit, AlphaEditResult
from .architectures import ARCHITECTURES, ArchitectureSpec, EditSite, Layout, architecture_of, resolve_site
from .base import Editor, EditResult
from .covariance import CovarianceStore, read_corpus
from .hparams import AlphaEditHyperParams, MEMITHyperParams, MENDHyperParams, ROMEHyperParams
from .memit import MEMIT, MEMITResult, compute_memit
from .mend import MEND, MENDResult
from .registry import EDITORS, editor_for
from .rome import ROME, ROMEResult, compute_rome

__all__ = [
    "Editor", "EditResult", "EDITORS", "editor_for", "ROME", "MEMIT",
    "ROMEHyperParams", "MEMITHyperParams", "compute_rome", "compute_memit", "ROMEResult", "MEMITResult",
    "MENDHyperParams", "MEND", "MENDResult", "AlphaEditHyperParams", "AlphaEdit", "AlphaEditResult",
    "CovarianceStore", "read_corpus",
    "ARCHITECTURES", "ArchitectureSpec", "EditSite", "Layout", "architecture_of", "resolve_site",
]
