"""Hyper-parameters of ROME, MEMIT, AlphaEdit and MEND as dataclasses, with presets per architecture and YAML I/O.

Module templates default to :mod:`prune_fast.editors.architectures` (``None`` here means "from the
table"); layers in the presets are given as fractions of the depth, so one preset serves every size
of a family (ROME edits layer 17 of GPT-2 XL's 48 and layer 5 of Llama-7B's 32).

Example::

    hp = ROMEHyperParams.for_model(model)                 # the preset of model.config.model_type
    hp = ROMEHyperParams.preset("testbed")                # the package's small model
    ROMEHyperParams.from_yaml(hp.to_yaml()) == hp         # True
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .architectures import architecture_of, num_layers
from ..errors import HyperParamsError

__all__ = ["HyperParams", "ValueHyperParams", "ROMEHyperParams", "MEMITHyperParams", "AlphaEditHyperParams",
           "MENDHyperParams", "SITES"]

SITES: tuple[str, ...] = ("subject_last", "prompt_last")

_H = TypeVar("_H", bound="HyperParams")


@dataclass(kw_only=True)
class HyperParams:
    """Base of the editors' settings: ``validate()``, dict and YAML round trips."""

    def validate(self) -> None:
        """:class:`HyperParamsError` (a ``ValueError``) naming the offending field; called by the editors
        before any work."""

    # -- YAML ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The YAML text of these settings; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls: type[_H], data: dict[str, Any]) -> _H:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise HyperParamsError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(names)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            hp = cls(**kwargs)  # a required field missing
        except TypeError as e:
            raise HyperParamsError(f"{cls.__name__}: {e}") from None
        try:
            hp.validate()
        except TypeError as e:  # a field of the wrong kind compared with a number ("abc" < 1)
            raise HyperParamsError(f"{cls.__name__}: a field has the wrong type ({e}); got {data}") from None
        return hp

    @classmethod
    def preset(cls: type[_H], name: str, n_layers: int | None = None) -> _H:
        raise NotImplementedError

    @classmethod
    def for_model(cls: type[_H], model: Any) -> _H:
        """The preset of the model's architecture, its layers placed by the model's depth."""
        return cls.preset(architecture_of(model).name, num_layers(model))

    @classmethod
    def resolve(cls: type[_H], model: Any, *, yaml_path: str | None = None, preset: str | None = None,
                testbed: bool = False) -> _H:
        """What a command line asks for: a YAML file, else a named preset (the test bed's for the
        package's own model), else the preset of the model's architecture."""
        if yaml_path:
            return cls.from_yaml(Path(yaml_path))
        if preset or testbed:
            return cls.preset(preset or "testbed", num_layers(model))
        return cls.for_model(model)

    @classmethod
    def from_yaml(cls: type[_H], source: str | Path) -> _H:
        """Read settings from a YAML file path or YAML text (``yaml.safe_load``)."""
        is_file = isinstance(source, Path) or (isinstance(source, str) and "\n" not in source
                                               and Path(source).is_file())
        where = f"{source}: " if is_file else ""
        try:
            text = Path(source).read_text() if is_file else source
            data = yaml.safe_load(text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise HyperParamsError(f"{where}cannot read the hyper-parameters: {e}") from None
        if not isinstance(data, dict):
            raise HyperParamsError(f"{where}{cls.__name__}.from_yaml expects a mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except HyperParamsError as e:
            raise HyperParamsError(f"{where}{e}") from None


@dataclass(kw_only=True)
class ValueHyperParams(HyperParams):
    """Settings shared by ROME and MEMIT: token site, prompts, and the value optimisation.

    The target value is ``v* = v0 + δ`` where ``δ`` minimises, with Adam (``v_lr``, ``v_steps``),

        NLL(target_new | prompts)  +  kl_factor · KL(p0 ‖ p_δ) on ``kl_template``
                                   +  v_weight_decay · ‖δ‖² / ‖v0‖²

    and is clamped after each step to ``‖δ‖ ≤ clamp_norm_factor · ‖v0‖``; it stops early once the
    NLL is below ``nll_stop``.
    """

    site: str = "subject_last"
    mlp_out_template: str | None = None
    layer_template: str | None = None
    context_templates: tuple[str, ...] = ("{}",)
    kl_template: str = "{} is a"
    v_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    nll_stop: float = 0.05
    cov_samples: int = 100_000
    cov_max_tokens: int = 128
    # ROME's key: the mean over this many greedy prefixes the model generates (editors/contexts.py)
    # in front of the context templates; 0 = the context templates alone.
    n_key_prefixes: int = 0

    def validate(self) -> None:
        """:class:`HyperParamsError` (a ``ValueError``) naming the offending field; called by the editors
        before any work."""
        if not 0 <= self.n_key_prefixes <= 20:
            raise HyperParamsError(f"n_key_prefixes must be in [0, 20], got {self.n_key_prefixes}")
        if self.site not in SITES:
            raise HyperParamsError(f"site must be one of {SITES}, got {self.site!r}")
        for t in self.context_templates:
            if not t.endswith("{}") or t.count("{}") != 1:
                raise HyperParamsError(f"context template must end with its single '{{}}', got {t!r}")
        if not self.context_templates:
            raise HyperParamsError("context_templates is empty")
        if self.kl_template.count("{}") != 1:
            raise HyperParamsError(f"kl_template must contain one '{{}}', got {self.kl_template!r}")
        for name in ("v_steps", "cov_samples", "cov_max_tokens"):
            if getattr(self, name) < 1:
                raise HyperParamsError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("v_lr", "clamp_norm_factor"):
            if not getattr(self, name) > 0:
                raise HyperParamsError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("v_weight_decay", "kl_factor", "nll_stop"):
            if getattr(self, name) < 0:
                raise HyperParamsError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(kw_only=True)
class ROMEHyperParams(ValueHyperParams):
    """ROME: one rank-one update of the down projection of ``layer``.

    ``cov_ridge`` regularises the key covariance as ``C + cov_ridge · mean(diag C) · I`` before it
    is inverted (0 = the paper's plain ``C``).  A larger ridge makes the update less aligned with
    the rare directions of C, which lowers its largest singular value.
    """

    layer: int
    cov_ridge: float = 0.0

    def validate(self) -> None:
        super().validate()
        if self.cov_ridge < 0:
            raise HyperParamsError(f"cov_ridge must be >= 0, got {self.cov_ridge}")

    @classmethod
    def preset(cls, name: str, n_layers: int | None = None) -> "ROMEHyperParams":
        """Settings of a named preset (``gpt2``, ``llama``, ``testbed``); ``n_layers`` places the layer."""
        p, depth = _preset(_ROME_PRESETS, name, n_layers)
        return cls(layer=_layer_at(p.pop("layer_fraction"), depth), **p)


@dataclass(kw_only=True)
class MEMITHyperParams(ValueHyperParams):
    """MEMIT: a batch of requests spread over ``layers``.

    Per layer ``l`` (ascending), with keys ``K: (d_in, b)`` and residuals ``R: (d_out, b)`` divided
    over the remaining layers, ``ΔW_l = R Kᵀ (λ C + K Kᵀ)⁻¹`` with ``λ = mom2_update_weight``.
    The targets ``z*`` are values of the residual stream at the output of the last layer in
    ``layers`` (the block, ``layer_template``).
    """

    layers: tuple[int, ...]
    mom2_update_weight: float = 15000.0

    def validate(self) -> None:
        super().validate()
        _check_layers(self.layers)
        if not self.mom2_update_weight > 0:
            raise HyperParamsError(f"mom2_update_weight must be > 0, got {self.mom2_update_weight}")

    @classmethod
    def preset(cls, name: str, n_layers: int | None = None) -> "MEMITHyperParams":
        """Settings of a named preset (``gpt2``, ``llama``, ``testbed``); ``n_layers`` places the layers."""
        return cls(**_layer_range_preset(_MEMIT_PRESETS, name, n_layers))


@dataclass(kw_only=True)
class AlphaEditHyperParams(ValueHyperParams):
    """AlphaEdit (Fang et al., ICLR 2025): MEMIT's batch over ``layers``, projected and sequential.

    Per layer ``l`` with keys ``K: (d_in, b)``, residuals ``R: (d_out, b)`` (as MEMIT's), the
    null-space projector ``P`` of the preserved keys' second moment ``C = E[k kᵀ]`` (the span of its
    eigenvectors whose eigenvalue is below ``nullspace_threshold``, an absolute threshold as in the
    reference code) and the keys of all earlier edits ``C_prev = Σ K_i K_iᵀ``::

        ΔWᵀ = (P (K Kᵀ + C_prev) + l2 · I)⁻¹ P K Rᵀ          (d_in, d_out), rank ≤ b

    ``l2`` is the reference's ``L2``.  ``mom2_update_weight`` has no counterpart: ``C`` enters only
    through ``P``.
    """

    layers: tuple[int, ...]
    nullspace_threshold: float = 2e-2
    l2: float = 10.0

    def validate(self) -> None:
        super().validate()
        _check_layers(self.layers)
        for name in ("nullspace_threshold", "l2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise HyperParamsError(f"{name} must be a finite number > 0, got {value!r}")

    @classmethod
    def preset(cls, name: str, n_layers: int | None = None) -> "AlphaEditHyperParams":
        """Settings of a named preset (``gpt2``, ``llama``, ``mistral``, ``qwen2``, ``testbed``);
        ``n_layers`` places the layers."""
        return cls(**_layer_range_preset(_ALPHAEDIT_PRESETS, name, n_layers))

    @classmethod
    def for_model(cls, model: Any) -> "AlphaEditHyperParams":
        """The preset of ``config.model_type`` when there is one (``mistral``, ``qwen2``), else of the
        architecture family (``gpt2``, ``llama``)."""
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        name = model_type if model_type in _ALPHAEDIT_PRESETS else architecture_of(model).name
        return cls.preset(name, num_layers(model))


@dataclass(kw_only=True)
class MENDHyperParams(HyperParams):
    """MEND: the edited weights, the editor network's shape, and how it is trained.

    Edited weights: every template of ``module_templates`` (default: the architecture's MLP input
    and output projections) at every layer of ``layers``.  The network (see
    :mod:`prune_fast.editors.mend_network`): ``n_hidden`` ReLU residual layers and one linear one,
    each of rank ``rank``, shared per weight shape; step sizes start at ``edit_lr``.

    Training (:func:`prune_fast.editors.mend.train`): ``steps`` Adam steps (``lr`` for the networks,
    ``lr_lr`` for the log step sizes, gradient norm clipped at ``grad_clip``), each over
    ``batch_size`` independent single-request edits; per edit the loss is
    ``c_edit · NLL(target_new | edit prompt and paraphrases, edited) + c_loc · KL(p_before ‖ p_edited)``
    on the request's neighbourhood prompts and ``n_loc`` texts of the locality pool (every token).
    A training-state checkpoint is written every ``checkpoint_every`` steps.
    """

    layers: tuple[int, ...]
    module_templates: tuple[str, ...] | None = None
    rank: int = 1920
    n_hidden: int = 1
    edit_lr: float = 1e-4
    lr: float = 1e-6
    lr_lr: float = 1e-4
    c_edit: float = 0.1
    c_loc: float = 1.0
    steps: int = 100_000
    batch_size: int = 10
    n_loc: int = 4
    grad_clip: float = 100.0
    seed: int = 0
    checkpoint_every: int = 500

    def validate(self) -> None:
        _check_layers(self.layers)
        if self.module_templates is not None:
            if not self.module_templates or any(t.count("{}") != 1 for t in self.module_templates):
                raise HyperParamsError(f"module_templates must be templates with one '{{}}' each, "
                                 f"got {self.module_templates}")
        for name in ("rank", "steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise HyperParamsError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n_hidden", "n_loc", "seed"):
            if getattr(self, name) < 0:
                raise HyperParamsError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("edit_lr", "lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise HyperParamsError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("lr_lr", "c_edit", "c_loc"):
            if getattr(self, name) < 0:
                raise HyperParamsError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def preset(cls, name: str, n_layers: int | None = None) -> "MENDHyperParams":
        """Settings of a named preset (``gpt2``, ``llama``, ``testbed``); ``n_layers`` places the layers."""
        return cls(**_layer_range_preset(_MEND_PRESETS, name, n_layers))


def _check_layers(layers: tuple[int, ...]) -> None:
    if not layers or list(layers) != sorted(set(layers)):
        raise HyperParamsError(f"layers must be a non-empty strictly increasing sequence, got {layers}")


def _preset(table: dict[str, dict[str, Any]], name: str, n_layers: int | None) -> tuple[dict[str, Any], int]:
    """A copy of the preset's settings without its reference depth, and the depth to place layers in
    (``n_layers``, else the preset's reference model's)."""
    if name not in table:
        raise HyperParamsError(f"no preset {name!r}; presets: {sorted(table)}")
    p = dict(table[name])
    depth = p.pop("n_layers_ref")
    return p, n_layers or depth


def _layer_range_preset(table: dict[str, dict[str, Any]], name: str, n_layers: int | None) -> dict[str, Any]:
    """The preset's settings with its ``layer_fractions`` (lo, hi) turned into a ``layers`` range."""
    p, depth = _preset(table, name, n_layers)
    lo, hi = p.pop("layer_fractions")
    return p | {"layers": tuple(range(_layer_at(lo, depth), _layer_at(hi, depth) + 1))}


def _layer_at(fraction: float, depth: int) -> int:
    """The layer at ``fraction`` of a ``depth``-layer model (clamped to the last layer)."""
    return min(depth - 1, round(fraction * depth))


# Reference settings: ROME / MEMIT papers (GPT-2 XL), EasyEdit (Llama-2-7B); the test bed's were
# measured on the package's small model (see tests/editors/test_rome.py, tests/editors/test_memit.py).
_ROME_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layers_ref=48, layer_fraction=17 / 48, v_steps=20, v_lr=0.5, v_weight_decay=0.5,
                 clamp_norm_factor=4.0, kl_factor=0.0625, cov_samples=100_000),
    "llama": dict(n_layers_ref=32, layer_fraction=5 / 32, v_steps=25, v_lr=0.5, v_weight_decay=1e-3,
                  clamp_norm_factor=4.0, kl_factor=0.0625, cov_samples=100_000),
    "testbed": dict(n_layers_ref=4, layer_fraction=0.0, site="prompt_last", v_steps=60, v_lr=1.0,
                    v_weight_decay=0.1, clamp_norm_factor=6.0, kl_factor=0.0625, cov_samples=2000,
                    cov_ridge=0.01),
}
_MEMIT_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layers_ref=48, layer_fractions=(13 / 48, 17 / 48), v_steps=20, v_lr=0.5,
                 v_weight_decay=0.5, clamp_norm_factor=0.75, kl_factor=0.0625, mom2_update_weight=20000.0,
                 cov_samples=100_000),
    "llama": dict(n_layers_ref=32, layer_fractions=(4 / 32, 8 / 32), v_steps=25, v_lr=0.5,
                  v_weight_decay=1e-3, clamp_norm_factor=4.0, kl_factor=0.0625, mom2_update_weight=15000.0,
                  cov_samples=100_000),
    "testbed": dict(n_layers_ref=4, layer_fractions=(0.0, 2 / 4), site="prompt_last", v_steps=60, v_lr=1.0,
                    v_weight_decay=0.1, clamp_norm_factor=6.0, kl_factor=0.0625, mom2_update_weight=50.0,
                    cov_samples=2000),
}
# AlphaEdit: the reference repository's settings (jianghoucheng/AlphaEdit hparams/AlphaEdit: gpt2-xl,
# Llama3-8B) and EasyEdit's for Qwen2.5-7B; no reference exists for Mistral, which gets Llama3-8B's
# (same block layout).  ``nullspace_threshold`` is absolute: it suits keys of the scale of those
# models' down projections.  The test bed's was measured on its own spectrum (12 sequential batches
# of 10 edits, README.md (AlphaEdit)): at the reference's 2e-2 only 99 of layer 0's 512 key
# directions are free and the edits barely land (efficacy 0.50 with l2 = 1); 0.05 frees 229 and
# gives efficacy 0.93, first-half survival 0.95 (MEMIT 0.70), unrelated facts kept 0.81 (MEMIT 0.79).
_ALPHAEDIT_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layers_ref=48, layer_fractions=(13 / 48, 17 / 48), v_steps=20, v_lr=0.5, v_weight_decay=0.5,
                 clamp_norm_factor=0.75, kl_factor=0.0625, cov_samples=100_000, nullspace_threshold=2e-2, l2=10.0),
    "llama": dict(n_layers_ref=32, layer_fractions=(4 / 32, 8 / 32), v_steps=25, v_lr=0.1, v_weight_decay=0.5,
                  clamp_norm_factor=0.75, kl_factor=0.0625, cov_samples=100_000, nullspace_threshold=2e-2, l2=10.0),
    "mistral": dict(n_layers_ref=32, layer_fractions=(4 / 32, 8 / 32), v_steps=25, v_lr=0.1, v_weight_decay=0.5,
                    clamp_norm_factor=0.75, kl_factor=0.0625, cov_samples=100_000, nullspace_threshold=2e-2,
                    l2=10.0),
    "qwen2": dict(n_layers_ref=28, layer_fractions=(4 / 28, 8 / 28), v_steps=25, v_lr=0.5, v_weight_decay=1e-3,
                  clamp_norm_factor=4.0, kl_factor=0.0625, cov_samples=100_000, nullspace_threshold=2e-2, l2=1.0),
    "testbed": dict(n_layers_ref=4, layer_fractions=(0.0, 2 / 4), site="prompt_last", v_steps=60, v_lr=1.0,
                    v_weight_decay=0.1, clamp_norm_factor=6.0, kl_factor=0.0625, cov_samples=2000,
                    nullspace_threshold=0.05, l2=1.0),
}
# MEND: the paper's settings edit the MLP projections of the last three layers (GPT-2 XL: 45-47).
# The test bed's were measured on the package's small model (600 steps, a quarter of the subjects
# held out, prune_fast/testbed/mend_editor.py): held-out single-edit efficacy / neighbourhood
# locality 0.78 / 0.62 editing layer 0 only (where the causal trace puts the facts), 0.86 / 0.68
# layers 0-1, 0.84 / 0.71 layers 0-3; layers 0-1 has the best efficacy with half the weights of 0-3.
_MEND_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_layers_ref=48, layer_fractions=(45 / 48, 47 / 48), rank=1920, n_hidden=1, edit_lr=1e-4,
                 lr=1e-6, lr_lr=1e-4, c_edit=0.1, c_loc=1.0, batch_size=10),
    "llama": dict(n_layers_ref=32, layer_fractions=(29 / 32, 31 / 32), rank=1920, n_hidden=1, edit_lr=1e-4,
                  lr=1e-6, lr_lr=1e-4, c_edit=0.1, c_loc=1.0, batch_size=10),
    "testbed": dict(n_layers_ref=4, layer_fractions=(0.0, 1 / 4), rank=64, n_hidden=1, edit_lr=1e-2,
                    lr=1e-3, lr_lr=1e-2, c_edit=1.0, c_loc=1.0, steps=600, batch_size=16, n_loc=6,
                    grad_clip=10.0, checkpoint_every=100),
}
