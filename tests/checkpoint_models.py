"""Tiny BASE/EDITED checkpoint pairs for the checkpoint and CLI tests (not a test module).

Each run draws a fresh seed (``PRUNE_FAST_SEED`` reproduces one); edits are low-rank or dense
updates whose singular values are placed relative to σ* = σ_max(W0), so that some cross it.
"""
from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from prune_fast.spectral.reference import restrain_reference

SEED = int(os.environ.get("PRUNE_FAST_SEED", secrets.randbelow(2**31)))
print(f"checkpoint tests: PRUNE_FAST_SEED={SEED}")


def sigma_star_of(w0: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(w0.double())[0])


def random_orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q


def low_rank_update(w0: torch.Tensor, ratios: list[float], g: torch.Generator) -> torch.Tensor:
    """Δ with singular values ``ratios × σ*(w0)`` (rank len(ratios)), in float64."""
    m, n = w0.shape
    s = torch.tensor(ratios, dtype=torch.float64) * sigma_star_of(w0)
    return (random_orthonormal(m, len(ratios), g) * s) @ random_orthonormal(n, len(ratios), g).T


def dense_update(w0: torch.Tensor, top_ratio: float, g: torch.Generator) -> torch.Tensor:
    """Gaussian Δ scaled so that σ_max(Δ) = ``top_ratio × σ*(w0)``, float64."""
    d = torch.randn(*w0.shape, generator=g, dtype=torch.float64)
    return d * (top_ratio * sigma_star_of(w0) / float(torch.linalg.svdvals(d)[0]))


@dataclass
class Pair:
    base: Path
    edited: Path
    edits: dict[str, str] = field(default_factory=dict)  # name -> "restrained" / "below_sigma_star" / "not_2d"


def _tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=101, n_positions=64, bos_token_id=0,
                     eos_token_id=0)
    return GPT2LMHeadModel(cfg)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=101, max_position_embeddings=64, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg)


def _extras(folder: Path, g: torch.Generator) -> None:
    """Non-weight files a real model folder carries: they must reach OUT bit for bit."""
    (folder / "tokenizer.json").write_text(json.dumps({"version": "1.0", "seed": int(torch.randint(0, 99, (1,), generator=g))}))
    (folder / "special_tokens_map.json").write_text("{}\n")
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.bin").write_bytes(os.urandom(100))


@torch.no_grad()
def make_pair(root: Path, arch: str, *, shard: bool, seed: int) -> Pair:
    """Save BASE, edit a few weights in memory (Conv1D in×out for GPT-2, Linear out×in for Llama), save EDITED."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _tiny_gpt2() if arch == "gpt2" else _tiny_llama()
    kwargs = {"max_shard_size": "40KB"} if shard else {}
    base, edited = root / f"{arch}-base", root / f"{arch}-edited"
    model.save_pretrained(base, **kwargs)
    params = dict(model.named_parameters())
    if arch == "gpt2":
        plan = {
            "transformer.h.0.mlp.c_proj.weight": ("low", [3.0, 1.6, 1.0, 0.4]),  # σ = σ* exactly: inclusive
            "transformer.h.1.mlp.c_fc.weight": ("dense", 2.5),
            "transformer.h.1.attn.c_attn.weight": ("low", [0.5, 0.2]),
            "transformer.h.0.mlp.c_proj.bias": ("bias", None),
        }
    else:
        plan = {
            "model.layers.0.mlp.down_proj.weight": ("low", [4.0, 2.0]),
            "model.layers.1.mlp.down_proj.weight": ("dense", 1.8),
            "model.layers.1.mlp.up_proj.weight": ("low", [0.3]),
            "model.layers.0.post_attention_layernorm.weight": ("bias", None),
        }
    pair = Pair(base, edited)
    for name, (kind, arg) in plan.items():
        p = params[name]
        if kind == "bias":
            p.add_(0.1 * torch.randn(p.shape, generator=g))
            pair.edits[name] = "not_2d"
            continue
        w0 = p.detach().clone()
        d = low_rank_update(w0, arg, g) if kind == "low" else dense_update(w0, arg, g)
        p.add_(d.to(p.dtype))
        top = arg[0] if kind == "low" else arg
        pair.edits[name] = "restrained" if top >= 1.0 else "below_sigma_star"
    model.save_pretrained(edited, **kwargs)
    _extras(edited, g)
    _extras(base, g)
    return pair


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    files = [folder] if folder.is_file() else sorted(folder.glob("*.safetensors"))
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bytes(a.contiguous().reshape(-1).view(torch.uint8).numpy()) == \
        bytes(b.contiguous().reshape(-1).view(torch.uint8).numpy())


def rel_fro(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return float(torch.linalg.norm(x.double() - ref) / torch.linalg.norm(ref))


def check_restrained_output(base: dict, edited: dict, out: dict, restrained: set[str], *, fn: str = "log",
                            tol: float = 1e-5) -> None:
    """Restrained tensors ≈ float64 reference (relative Frobenius ≤ tol); every other tensor bit-identical to EDITED."""
    assert out.keys() == edited.keys(), f"seed {SEED}: tensor names differ: {out.keys() ^ edited.keys()}"
    for name, t in out.items():
        if name in restrained:
            ref, info = restrain_reference(base[name], edited[name].double() - base[name].double(), fn=fn)
            assert info["n_restrained"] > 0
            assert t.dtype == edited[name].dtype, name
            err = rel_fro(t, ref)
            assert err <= tol, f"seed {SEED}: {name}: relative Frobenius error {err:.3g} > {tol:g}"
        else:
            assert same_bits(t, edited[name]), f"seed {SEED}: {name} is not bit-identical to EDITED"
