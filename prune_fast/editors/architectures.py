"""Where the editors write, per architecture: a small declarative table.

Each :class:`ArchitectureSpec` names the ``config.model_type`` values it covers, the template of a
transformer block (whose output is the residual stream MEMIT targets) and the template of the
MLP down projection that ROME and MEMIT rewrite (MEND also edits the MLP's input projections).  The *layout* of that weight is detected from the
module's type when the site is resolved, never assumed from the table:

    Layout.IN_OUT   transformers ``Conv1D`` (GPT-2):   y = x @ W + b,    W: (d_in, d_out)
    Layout.OUT_IN   ``nn.Linear`` (Llama, Mistral, Qwen2): y = x @ W.T + b, W: (d_out, d_in)

Mathematically every editor update is ``ΔW = R Kᵀ`` with ``R: (d_out, r)`` (value side) and
``K: (d_in, r)`` (key side); :meth:`EditSite.factors` turns that into the ``(u, v)`` pair in the
stored layout (``ΔW_stored = u @ v.T``).

Example::

    site = resolve_site(model, layer=2)        # GPT-2: transformer.h.2.mlp.c_proj, Layout.IN_OUT
    u, v = site.factors(R, K)                   # u: (d_in, r), v: (d_out, r)
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import EditorError, InvalidLayerError, UnsupportedArchitectureError

__all__ = ["ArchitectureSpec", "ARCHITECTURES", "Layout", "EditSite", "architecture_of", "detect_layout",
           "num_layers", "resolve_site", "resolve_module"]


@dataclass(frozen=True)
class ArchitectureSpec:
    """Module-name templates of one family; ``{}`` is the layer index.

    ``mlp_in_templates``: the MLP's input projection(s), edited by MEND besides the output one.
    """

    name: str
    model_types: tuple[str, ...]
    layer_template: str
    mlp_out_template: str
    mlp_in_templates: tuple[str, ...] = ()


ARCHITECTURES: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec("gpt2", ("gpt2",), "transformer.h.{}", "transformer.h.{}.mlp.c_proj",
                     ("transformer.h.{}.mlp.c_fc",)),
    ArchitectureSpec("llama", ("llama", "mistral", "qwen2"), "model.layers.{}", "model.layers.{}.mlp.down_proj",
                     ("model.layers.{}.mlp.gate_proj", "model.layers.{}.mlp.up_proj")),
)


class Layout(enum.Enum):
    """How a 2-D weight is stored relative to the math convention ``W: (d_out, d_in)``."""

    IN_OUT = "in_out"  # Conv1D
    OUT_IN = "out_in"  # nn.Linear


def architecture_of(model: nn.Module) -> ArchitectureSpec:
    """The table entry for ``model.config.model_type``; :class:`UnsupportedArchitectureError` otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for spec in ARCHITECTURES:
        if model_type in spec.model_types:
            return spec
    known = sorted(t for s in ARCHITECTURES for t in s.model_types)
    raise UnsupportedArchitectureError(
        f"model_type {model_type!r} ({type(model).__name__}) is not supported; known: {known}. "
        "Pass explicit module templates in the hyper-parameters to edit another architecture."
    )


def num_layers(model: nn.Module) -> int:
    """``config.num_hidden_layers`` (GPT-2's ``n_layer`` maps onto it)."""
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise UnsupportedArchitectureError(f"{type(model).__name__} has no config.num_hidden_layers")
    return n


def detect_layout(module: nn.Module) -> Layout:
    """The weight layout of ``module`` from its type; ``UnsupportedArchitectureError`` if unknown."""
    if isinstance(module, nn.Linear):
        return Layout.OUT_IN
    # transformers.pytorch_utils.Conv1D, matched structurally so this module needs no transformers import
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx"):
        if tuple(module.weight.shape) != (module.nx, module.nf):
            raise UnsupportedArchitectureError(f"Conv1D with weight {tuple(module.weight.shape)} != (nx, nf)")
        return Layout.IN_OUT
    raise UnsupportedArchitectureError(
        f"cannot tell the weight layout of {type(module).__name__}; expected nn.Linear or transformers Conv1D"
    )


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` with an :class:`InvalidLayerError` naming what is missing."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise InvalidLayerError(f"{type(model).__name__} has no module {name!r}") from exc


@dataclass(frozen=True)
class EditSite:
    """A resolved edit target: the down projection of one layer and the block around it."""

    layer: int
    module_name: str
    param_name: str
    layer_name: str
    layout: Layout
    d_in: int
    d_out: int

    def factors(self, value_side: torch.Tensor, key_side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(u, v)`` with ``u @ v.T`` equal to ``ΔW = R Kᵀ`` in the stored layout.

        Args:
            value_side: ``R``, ``(d_out, r)``.
            key_side: ``K``, ``(d_in, r)``.
        """
        if value_side.shape[0] != self.d_out or key_side.shape[0] != self.d_in:
            raise EditorError(f"factor shapes {tuple(value_side.shape)}, {tuple(key_side.shape)} do not fit "
                             f"d_out={self.d_out}, d_in={self.d_in}")
        if self.layout is Layout.IN_OUT:
            return key_side, value_side
        return value_side, key_side


def resolve_site(model: nn.Module, layer: int, mlp_out_template: str | None = None,
                 layer_template: str | None = None) -> EditSite:
    """Find and check the edit target of ``layer``; raises before anything is computed.

    Templates default to the architecture table; explicit templates let an unlisted architecture
    be edited without changing the table.
    """
    if mlp_out_template is None or layer_template is None:
        spec = architecture_of(model)
        mlp_out_template = mlp_out_template or spec.mlp_out_template
        layer_template = layer_template or spec.layer_template
    n = num_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < n:
        raise InvalidLayerError(f"layer {layer!r} is out of range: the model has {n} layers (0..{n - 1})")
    module_name = mlp_out_template.format(layer)
    module = resolve_module(model, module_name)
    resolve_module(model, layer_template.format(layer))
    layout = detect_layout(module)
    rows, cols = module.weight.shape
    d_in, d_out = (rows, cols) if layout is Layout.IN_OUT else (cols, rows)
    return EditSite(layer=layer, module_name=module_name, param_name=module_name + ".weight",
                    layer_name=layer_template.format(layer), layout=layout, d_in=d_in, d_out=d_out)
