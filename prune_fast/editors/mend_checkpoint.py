"""MEND checkpoints: the trained editor network (safetensors) and the state of an unfinished training.

Editor checkpoint (one ``.safetensors`` file, read with safetensors only — never pickle)::

    tensors     net.<name>                  every parameter and statistics buffer of MENDNetwork
    metadata    format        "prune_fast.mend/1"
                hparams       MENDHyperParams as JSON
                model         {"model_type", "params": {name: stored shape}, "embedding_sample": [...]}
                report        free-form JSON (how training went), optional

The ``model`` entry is the fingerprint of the model the editor was trained for: the names and
stored shapes of the edited weights and a fixed sample of the input embedding (which no editor
changes, so it survives edits; compared with a tolerance, so a model cast to another dtype still
matches).  :func:`load_editor` checks, in order and before anything is built or written: the
file, the format, the hyper-parameters, the fingerprint against the given model, the presence,
shape and finiteness of every tensor the network needs.  Each failure raises
:class:`EditorCheckpointError` naming the file and what is wrong.

Training state (a folder, written every ``checkpoint_every`` steps by ``train``)::

    state.safetensors   net.<name> and opt.<index>.<field> (Adam moments and step counts)
    state.json          {"format", "step", "hparams", "model", "param_groups", "history"}

Example::

    save_editor("editor.safetensors", net, hp, fingerprint(model, sites))
    net, hp, meta = load_editor("editor.safetensors", model)
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from .._atomic import save_safetensors, write_text
from .architectures import EditSite, architecture_of, resolve_site
from ..errors import EditorCheckpointError
from .hparams import MENDHyperParams
from .mend_network import MENDNetwork

__all__ = ["CHECKPOINT_FORMAT", "STATE_FORMAT", "edited_sites", "fingerprint", "build_network", "save_editor",
           "load_editor", "save_training_state", "load_training_state", "check_fingerprint"]

CHECKPOINT_FORMAT = "prune_fast.mend/1"
STATE_FORMAT = "prune_fast.mend_training/1"
_SAMPLE_ROWS, _SAMPLE_COLS = 16, 16


def edited_sites(model: nn.Module, hp: MENDHyperParams) -> list[EditSite]:
    """The weights MEND edits: every module template at every layer (templates default to the
    architecture's MLP input and output projections).  Raises before anything is computed."""
    templates = hp.module_templates
    layer_template = None
    if templates is None:
        spec = architecture_of(model)
        templates = (*spec.mlp_in_templates, spec.mlp_out_template)
        layer_template = spec.layer_template
    sites = []
    for layer in hp.layers:
        for template in templates:
            sites.append(resolve_site(model, layer, template, layer_template or template))
    return sites


def _embedding_sample(model: nn.Module) -> list[float]:
    emb = model.get_input_embeddings().weight.detach()
    return emb[:_SAMPLE_ROWS, :_SAMPLE_COLS].float().cpu().reshape(-1).tolist()


def fingerprint(model: nn.Module, sites: Sequence[EditSite]) -> dict[str, Any]:
    """What identifies the model an editor was trained for (see the module docstring)."""
    params = dict(model.named_parameters())
    return {"model_type": getattr(getattr(model, "config", None), "model_type", None),
            "params": {s.param_name: list(params[s.param_name].shape) for s in sites},
            "embedding_sample": _embedding_sample(model)}


def check_fingerprint(expected: dict[str, Any], model: nn.Module, source: str) -> None:
    """:class:`EditorCheckpointError` unless ``model`` is the model ``expected`` describes."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if expected.get("model_type") != model_type:
        raise EditorCheckpointError(f"{source} was trained for a {expected.get('model_type')!r} model; "
                                    f"this model is {model_type!r}")
    params = dict(model.named_parameters())
    for name, shape in expected.get("params", {}).items():
        if name not in params:
            raise EditorCheckpointError(f"{source} edits {name}, which this model does not have")
        if list(params[name].shape) != list(shape):
            raise EditorCheckpointError(f"{source} edits {name} of shape {tuple(shape)}; in this model it is "
                                        f"{tuple(params[name].shape)}")
    want = torch.tensor(expected.get("embedding_sample", []), dtype=torch.float32)
    got = torch.tensor(_embedding_sample(model), dtype=torch.float32)
    scale = float(want.abs().max()) if want.numel() else 0.0
    if want.shape != got.shape or not torch.allclose(got, want, rtol=1e-2, atol=1e-3 * scale):
        raise EditorCheckpointError(f"{source} was trained for another model: the input embeddings differ "
                                    "(same architecture and shapes, different weights)")


def build_network(hp: MENDHyperParams, sites: Sequence[EditSite], seed: int | None = None) -> MENDNetwork:
    """A fresh (identity) network for ``sites``; its random init is seeded without touching the
    global RNG when ``seed`` is given."""
    shapes = {s.param_name: (s.d_in, s.d_out) for s in sites}
    if seed is None:
        return MENDNetwork(shapes, hp.rank, hp.n_hidden, hp.edit_lr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MENDNetwork(shapes, hp.rank, hp.n_hidden, hp.edit_lr)


def _net_tensors(net: MENDNetwork) -> dict[str, torch.Tensor]:
    return {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def save_editor(path: str | Path, net: MENDNetwork, hp: MENDHyperParams, model_fingerprint: dict[str, Any],
                report: dict[str, Any] | None = None) -> Path:
    """Write the editor checkpoint to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": CHECKPOINT_FORMAT, "hparams": json.dumps(hp.to_dict()),
            "model": json.dumps(model_fingerprint), "report": json.dumps(report or {})}
    save_safetensors(path, _net_tensors(net), meta)
    return path


def _read(path: Path, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise EditorCheckpointError(f"{what} {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise EditorCheckpointError(f"{what} {path} is not a readable safetensors file ({e})") from None
    return tensors, meta


def _json(meta: dict[str, str], key: str, source: str) -> Any:
    if key not in meta:
        raise EditorCheckpointError(f"{source} has no {key!r} metadata")
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError as e:
        raise EditorCheckpointError(f"{source}: {key!r} metadata is not JSON ({e})") from None


def _hparams(data: Any, source: str) -> MENDHyperParams:
    if not isinstance(data, dict):
        raise EditorCheckpointError(f"{source}: hparams metadata is not an object")
    try:
        return MENDHyperParams.from_dict(data)
    except (TypeError, ValueError) as e:
        raise EditorCheckpointError(f"{source}: invalid hparams ({e})") from None


def _load_net(net: MENDNetwork, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``net.*`` tensors into ``net`` after checking names, shapes, dtypes and finiteness."""
    want = net.state_dict()
    have = {k[len("net."):]: v for k, v in tensors.items() if k.startswith("net.")}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    if missing or unexpected:
        raise EditorCheckpointError(f"{source} does not match the network its hparams describe: missing "
                                    f"{missing[:6]}{' ...' if len(missing) > 6 else ''}, unexpected "
                                    f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
    for k, ref in want.items():
        t = have[k]
        if t.shape != ref.shape:
            raise EditorCheckpointError(f"{source}: tensor net.{k} has shape {tuple(t.shape)}, expected "
                                        f"{tuple(ref.shape)}")
        if t.dtype != ref.dtype:
            raise EditorCheckpointError(f"{source}: tensor net.{k} is {t.dtype}, expected {ref.dtype}")
        if not torch.isfinite(t).all():
            raise EditorCheckpointError(f"{source}: tensor net.{k} has non-finite entries")
    net.load_state_dict(have, strict=True)


def load_editor(path: str | Path, model: nn.Module) -> tuple[MENDNetwork, MENDHyperParams, dict[str, Any]]:
    """``(network, hparams, metadata)`` from an editor checkpoint, checked against ``model``.

    The network is in ``eval`` mode (its statistics frozen).  ``model`` is only read.
    """
    path = Path(path)
    source = f"MEND checkpoint {path}"
    tensors, meta = _read(path, "MEND checkpoint")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise EditorCheckpointError(f"{source}: format is {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    hp = _hparams(_json(meta, "hparams", source), source)
    model_fp = _json(meta, "model", source)
    if not isinstance(model_fp, dict):
        raise EditorCheckpointError(f"{source}: model metadata is not an object")
    check_fingerprint(model_fp, model, source)
    try:
        sites = edited_sites(model, hp)
    except EditorCheckpointError:
        raise
    except ValueError as e:  # UnsupportedArchitectureError, InvalidLayerError
        raise EditorCheckpointError(f"{source}: its edited weights do not exist in this model ({e})") from None
    if sorted(s.param_name for s in sites) != sorted(model_fp.get("params", {})):
        raise EditorCheckpointError(f"{source}: hparams select {[s.param_name for s in sites]}, the fingerprint "
                                    f"names {sorted(model_fp.get('params', {}))}")
    net = build_network(hp, sites)
    _load_net(net, tensors, source)
    net.eval()
    report = json.loads(meta["report"]) if meta.get("report") else {}
    return net, hp, {"model": model_fp, "report": report}


# -- training state -----------------------------------------------------------------------------
def save_training_state(folder: str | Path, net: MENDNetwork, optimizer: torch.optim.Optimizer, step: int,
                        hp: MENDHyperParams, model_fingerprint: dict[str, Any], history: list[dict[str, float]]
                        ) -> None:
    """Write the network, the optimizer's state and the step reached to ``folder`` (tensors first)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    opt_state = optimizer.state_dict()
    tensors = _net_tensors(net)
    for idx, st in opt_state["state"].items():
        for key, value in st.items():
            tensors[f"opt.{idx}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_safetensors(folder / "state.safetensors", tensors, {"format": STATE_FORMAT, "step": str(step)})
    doc = {"format": STATE_FORMAT, "step": step, "hparams": hp.to_dict(), "model": model_fingerprint,
           "param_groups": opt_state["param_groups"], "history": history}
    write_text(folder / "state.json", json.dumps(doc))


def load_training_state(folder: str | Path, net: MENDNetwork, optimizer: torch.optim.Optimizer,
                        hp: MENDHyperParams, model: nn.Module) -> tuple[int, list[dict[str, float]]]:
    """Restore ``net`` and ``optimizer`` from ``folder``; returns ``(step reached, history)``.

    Refuses (``EditorCheckpointError``) a state written with other hyper-parameters (``steps`` and
    ``checkpoint_every`` may differ: a run can be extended) or for another model.
    """
    folder = Path(folder)
    source = f"MEND training state {folder}"
    try:
        doc = json.loads((folder / "state.json").read_text())
    except FileNotFoundError:
        raise EditorCheckpointError(f"{source}: nothing to resume (no state.json)") from None
    except json.JSONDecodeError as e:
        raise EditorCheckpointError(f"{source}: state.json is not JSON ({e})") from None
    if doc.get("format") != STATE_FORMAT:
        raise EditorCheckpointError(f"{source}: format is {doc.get('format')!r}, expected {STATE_FORMAT!r}")
    saved = {k: v for k, v in doc.get("hparams", {}).items() if k not in ("steps", "checkpoint_every")}
    mine = {k: v for k, v in hp.to_dict().items() if k not in ("steps", "checkpoint_every")}
    diffs = [f"{k}: state has {saved.get(k)!r}, this run has {v!r}" for k, v in mine.items() if saved.get(k) != v]
    if diffs:
        raise EditorCheckpointError(f"refusing to resume {folder}: " + "; ".join(diffs))
    check_fingerprint(doc.get("model", {}), model, source)
    tensors, meta = _read(folder / "state.safetensors", "MEND training state")
    if str(doc["step"]) != meta.get("step"):
        raise EditorCheckpointError(f"{source}: state.json is at step {doc['step']}, state.safetensors at "
                                    f"{meta.get('step')}")
    _load_net(net, tensors, source)
    opt_state: dict[str, Any] = {"state": {}, "param_groups": doc["param_groups"]}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, field = key.split(".", 2)
            opt_state["state"].setdefault(int(idx), {})[field] = value
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError) as e:
        raise EditorCheckpointError(f"{source}: optimizer state does not fit ({e})") from None
    return int(doc["step"]), list(doc.get("history", []))
