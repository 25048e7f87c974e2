"""restrain_checkpoint and restrain_model_ against the float64 reference, on tiny GPT-2 / Llama checkpoints."""
from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import prune_fast
from prune_fast import InvalidInputError, restrain_checkpoint, restrain_model_
from prune_fast.spectral.reference import restrain_reference

from checkpoint_models import (SEED, check_restrained_output, dense_update, load_all, low_rank_update, make_pair,
                               rel_fro, same_bits)


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("gpt2"), "gpt2", shard=True, seed=SEED)


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("llama"), "llama", shard=False, seed=SEED + 1)


def _non_weight_files(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file() and p.suffix != ".safetensors")


def _no_leftovers(parent: Path) -> None:
    left = [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert not left, f"temporary output left behind: {left}"


# ----------------------------------------------------------------------------- checkpoint path
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_restrain_checkpoint_matches_reference(arch, gpt2_pair, llama_pair, tmp_path):
    pair = gpt2_pair if arch == "gpt2" else llama_pair
    out = tmp_path / "out"
    report = restrain_checkpoint(pair.base, pair.edited, out, progress=False)

    expected = {n: a for n, a in pair.edits.items()}
    assert {t.name: t.action for t in report.tensors} == expected, f"seed {SEED}"
    restrained = {t.name for t in report.restrained}
    base, edited = load_all(pair.base), load_all(pair.edited)
    check_restrained_output(base, edited, load_all(out), restrained)
    for t in report.restrained:  # the reported spectrum is the reference's (F may raise σ when σ* < 1)
        _, info = restrain_reference(base[t.name], edited[t.name].double() - base[t.name].double())
        n = t.n_restrained
        assert abs(t.sigma_star - info["sigma_star"]) <= 1e-5 * info["sigma_star"]
        torch.testing.assert_close(torch.tensor(t.sigma_before, dtype=torch.float64), info["sigma"][:n], rtol=1e-5, atol=0)
        torch.testing.assert_close(torch.tensor(t.sigma_after, dtype=torch.float64), info["sigma_restrained"][:n], rtol=1e-5, atol=0)
        assert t.sigma_delta_before == t.sigma_before[0] and t.sigma_delta_after == t.sigma_after[0]
    # sharding, index, config, tokenizer and other files of EDITED: same names, same bytes
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in pair.edited.glob("*.safetensors"))
    assert _non_weight_files(out) == _non_weight_files(pair.edited)
    for rel in _non_weight_files(pair.edited):
        assert filecmp.cmp(pair.edited / rel, out / rel, shallow=False), rel
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_output_loads_with_from_pretrained_and_generates(arch, gpt2_pair, llama_pair, tmp_path):
    from transformers import AutoModelForCausalLM

    pair = gpt2_pair if arch == "gpt2" else llama_pair
    out = tmp_path / "out"
    restrain_checkpoint(pair.base, pair.edited, out, progress=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    written = load_all(out)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), written[name]), name
    ids = torch.tensor([[1, 2, 3, 4]])
    # min_new_tokens: a random tiny model may emit its EOS token first, which would end generation early
    gen = model.generate(ids, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 7)


def test_modules_filter_and_dry_run(llama_pair, tmp_path):
    out = tmp_path / "out"
    report = restrain_checkpoint(llama_pair.base, llama_pair.edited, out, modules=[r"layers\.0\."], dry_run=True,
                                 progress=False)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    actions = {t.name: t.action for t in report.tensors}
    assert actions["model.layers.0.mlp.down_proj.weight"] == "restrained"
    assert actions["model.layers.1.mlp.down_proj.weight"] == "not_selected"
    report = restrain_checkpoint(llama_pair.base, llama_pair.edited, out, modules=r"layers\.0\.", progress=False)
    check_restrained_output(load_all(llama_pair.base), load_all(llama_pair.edited), load_all(out),
                            {"model.layers.0.mlp.down_proj.weight"})
    table = report.format_table()
    assert "model.layers.0.mlp.down_proj.weight" in table and "1 of 4 differing" in table


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.float16, 2e-3),
                                       (torch.bfloat16, 1e-2)], ids=["fp64", "fp32", "fp16", "bf16"])
@pytest.mark.parametrize("shape", [(17, 33), (130, 70)], ids=["17x33", "130x70"])
def test_single_file_dtypes_and_fns(dtype, tol, shape, tmp_path):
    g = torch.Generator().manual_seed(SEED + 7)
    w0 = torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    we = (w0.double() + low_rank_update(w0, [5.0, 2.0, 0.5], g)).to(dtype)
    base, edited, out = tmp_path / "b.safetensors", tmp_path / "e.safetensors", tmp_path / "o.safetensors"
    save_file({"w": w0, "same": w0.clone(), "ints": torch.arange(5)}, base)
    save_file({"w": we, "same": w0.clone(), "ints": torch.arange(5)}, edited)
    for fn in ("log", "log1.2", "linear"):
        report = restrain_checkpoint(base, edited, out, fn=fn, overwrite=True, progress=False)
        got = load_all(out)
        assert [t.name for t in report.tensors] == ["w"] and report.tensors[0].n_restrained == 2
        assert got["w"].dtype == dtype
        ref, _ = restrain_reference(w0, we.double() - w0.double(), fn=fn)
        # half outputs: the reference itself rounds to the dtype, so compare in its units
        err = rel_fro(got["w"], ref)
        assert err <= tol, f"seed {SEED} {fn}: relative error {err:.3g} > {tol:g}"
        assert same_bits(got["same"], w0) and same_bits(got["ints"], torch.arange(5))
    _no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- refusals
def _single(path: Path, **tensors: torch.Tensor) -> Path:
    save_file(tensors, path)
    return path


def test_refuses_mismatched_checkpoints(tmp_path):
    w = torch.randn(8, 6)
    base = _single(tmp_path / "b.safetensors", w=w, b=torch.zeros(6))
    cases = {
        "names": (_single(tmp_path / "e1.safetensors", w=w, c=torch.zeros(6)), "'c'"),
        "shape": (_single(tmp_path / "e2.safetensors", w=torch.randn(6, 8), b=torch.zeros(6)), "shape"),
        "dtype": (_single(tmp_path / "e3.safetensors", w=w.double(), b=torch.zeros(6)), "dtype"),
    }
    for case, (edited, needle) in cases.items():
        with pytest.raises(InvalidInputError, match=needle) as exc:
            restrain_checkpoint(base, edited, tmp_path / "out.safetensors", progress=False)
        assert "'w'" in str(exc.value) or case == "names"
    assert not (tmp_path / "out.safetensors").exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("where", ["edited", "base"])
def test_refuses_non_finite_and_leaves_no_out(where, gpt2_pair, tmp_path):
    w = torch.randn(8, 6)
    bad = w.clone()
    bad[3, 2] = float("nan")
    other = w + 1.0
    base = _single(tmp_path / "b.safetensors", a=torch.randn(4, 4), w=bad if where == "base" else w)
    edited = _single(tmp_path / "e.safetensors", a=torch.randn(4, 4), w=bad if where == "edited" else other)
    out = tmp_path / "o.safetensors"
    with pytest.raises(InvalidInputError, match=r"non-finite.*|.*'w'") as exc:
        restrain_checkpoint(base, edited, out, progress=False)
    assert "'w'" in str(exc.value) and "non-finite" in str(exc.value) and where.upper() in str(exc.value)
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_refuses_bad_out(gpt2_pair, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="already exists"):
        restrain_checkpoint(gpt2_pair.base, gpt2_pair.edited, out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    for same in (gpt2_pair.base, gpt2_pair.edited, gpt2_pair.edited.parent):
        with pytest.raises(InvalidInputError, match="OUT"):
            restrain_checkpoint(gpt2_pair.base, gpt2_pair.edited, same, overwrite=True, progress=False)
    with pytest.raises(InvalidInputError, match="inside the EDITED"):
        restrain_checkpoint(gpt2_pair.base, gpt2_pair.edited, gpt2_pair.edited / "sub", progress=False)
    with pytest.raises(InvalidInputError, match="unknown fn"):
        restrain_checkpoint(gpt2_pair.base, gpt2_pair.edited, tmp_path / "x", fn="log3", progress=False)
    with pytest.raises(InvalidInputError, match="regular expression"):
        restrain_checkpoint(gpt2_pair.base, gpt2_pair.edited, tmp_path / "x", modules="(", progress=False)
    assert not (tmp_path / "x").exists()
    # --overwrite replaces it, atomically
    restrain_checkpoint(gpt2_pair.base, gpt2_pair.edited, out, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "config.json").exists()
    _no_leftovers(tmp_path)


def test_pickle_refused_unless_allowed(tmp_path):
    g = torch.Generator().manual_seed(SEED + 3)
    w0 = torch.randn(20, 12, generator=g)
    we = (w0.double() + low_rank_update(w0, [3.0], g)).float()
    for d, w in (("b", w0), ("e", we)):
        (tmp_path / d).mkdir()
        torch.save({"w": w, "bias": torch.ones(3)}, tmp_path / d / "pytorch_model.bin")
        (tmp_path / d / "config.json").write_text("{}")
    with pytest.raises(InvalidInputError, match=r"pytorch_model\.bin.*pickle"):
        restrain_checkpoint(tmp_path / "b", tmp_path / "e", tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    restrain_checkpoint(tmp_path / "b", tmp_path / "e", tmp_path / "o", allow_pickle=True, progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["config.json", "model.safetensors"]
    check_restrained_output({"w": w0}, {"w": we, "bias": torch.ones(3)}, load_all(tmp_path / "o"), {"w"})


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "overwrite"])
def test_interrupted_write_leaves_no_out(existing, gpt2_pair, tmp_path, monkeypatch):
    from prune_fast.checkpoint import safetensors_io

    out = tmp_path / "out"
    if existing:
        out.mkdir()
        (out / "old.txt").write_text("old")
    calls = {"n": 0}
    real = safetensors_io._ShardWriter.write

    def failing(self, name, chunks):
        calls["n"] += 1
        if calls["n"] == 12:  # midway through the second shard
            raise _Boom("disk full")
        return real(self, name, chunks)

    monkeypatch.setattr(safetensors_io._ShardWriter, "write", failing)
    with pytest.raises(_Boom):
        restrain_checkpoint(gpt2_pair.base, gpt2_pair.edited, out, overwrite=existing, progress=False)
    assert calls["n"] == 12
    if existing:
        assert sorted(p.name for p in out.iterdir()) == ["old.txt"]
    else:
        assert not out.exists()
    _no_leftovers(tmp_path)


# ----------------------------------------------------------------------------- in memory
def _load_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("form", ["dict", "path"])
def test_restrain_model_matches_reference(form, gpt2_pair):
    model = _load_model(gpt2_pair.edited)
    base, edited = load_all(gpt2_pair.base), load_all(gpt2_pair.edited)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if form == "dict":  # what an editor hands back: the originals of the modules it touched
        original = {n: base[n].clone() for n in gpt2_pair.edits}
    else:
        original = gpt2_pair.base
    report = restrain_model_(model, original, fn="log")
    assert {t.name: t.action for t in report.tensors} == gpt2_pair.edits, f"seed {SEED}"
    after = {n: p.detach() for n, p in model.named_parameters()}
    check_restrained_output(base, before, after, {t.name for t in report.restrained})
    # same numbers as the checkpoint path
    for t in report.restrained:
        ref, _ = restrain_reference(base[t.name], edited[t.name].double() - base[t.name].double())
        assert rel_fro(after[t.name], ref) <= 1e-5


def _assert_untouched(model, before):
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), f"{n} changed although the call failed"


def test_restrain_model_refusals_change_nothing(gpt2_pair):
    model = _load_model(gpt2_pair.edited)
    base = load_all(gpt2_pair.base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    good = {n: base[n].clone() for n in gpt2_pair.edits}
    nan_w0 = dict(good)
    nan_w0["transformer.h.1.mlp.c_fc.weight"] = good["transformer.h.1.mlp.c_fc.weight"].clone()
    nan_w0["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("inf")
    bad_cases = {
        "unknown name": ({**good, "transformer.h.9.mlp.c_fc.weight": torch.zeros(2, 2)}, "not parameters"),
        "shape": ({**good, "transformer.h.1.mlp.c_fc.weight": torch.zeros(4, 4)}, "shape"),
        "dtype": ({**good, "transformer.h.1.mlp.c_fc.weight": torch.zeros(32, 128, dtype=torch.int32)}, "floating"),
        "non-finite": (nan_w0, "non-finite"),
        "not a tensor": ({**good, "transformer.h.1.mlp.c_fc.weight": [1.0]}, "tensor"),
    }
    for case, (weights, needle) in bad_cases.items():
        with pytest.raises(InvalidInputError, match=needle):
            restrain_model_(model, weights)
        _assert_untouched(model, before)
    with pytest.raises(InvalidInputError):
        restrain_model_(model, 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="does not exist"):
        restrain_model_(model, gpt2_pair.base.parent / "nowhere")
    _assert_untouched(model, before)

    # a failure while computing the second restrained weight: the first is not written either
    calls = {"n": 0}

    def fn_fails_late(sigma, sigma_star):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Boom("custom F failed")
        return sigma_star + torch.log(sigma / sigma_star)

    with pytest.raises(_Boom):
        restrain_model_(model, good, fn=fn_fails_late)
    assert calls["n"] == 2
    _assert_untouched(model, before)


def test_restrain_model_refuses_meta_parameters(gpt2_pair):
    model = _load_model(gpt2_pair.edited)
    name = "transformer.h.1.mlp.c_fc.weight"
    before = {n: p.detach().clone() for n, p in model.named_parameters() if n != name}
    mod = model.get_submodule(name.rsplit(".", 1)[0])
    mod.weight = torch.nn.Parameter(torch.empty(mod.weight.shape, device="meta"))
    with pytest.raises(InvalidInputError, match="meta"):
        restrain_model_(model, {name: torch.zeros(mod.weight.shape), **{
            "transformer.h.0.mlp.c_proj.weight": load_all(gpt2_pair.base)["transformer.h.0.mlp.c_proj.weight"]}})
    for n, p in model.named_parameters():
        if n != name:
            assert torch.equal(p.detach(), before[n]), n


def test_restrain_model_dense_update_plain_module():
    """Any nn.Module works (no transformers), fp64 and fp32 parameters, m>n and m<n, dense Δ (> 64 wide:
    the Krylov path, not the small-matrix direct SVD)."""
    g = torch.Generator().manual_seed(SEED + 11)
    lin = torch.nn.Sequential(torch.nn.Linear(80, 96), torch.nn.Linear(96, 80, dtype=torch.float64))
    originals = {n: p.detach().clone() for n, p in lin.named_parameters() if p.dim() == 2}
    with torch.no_grad():
        for n, p in lin.named_parameters():
            if p.dim() == 2:
                p.add_(dense_update(p.detach(), 3.0, g).to(p.dtype))
    edited = {n: p.detach().clone() for n, p in lin.named_parameters()}
    report = restrain_model_(lin, originals, fn="linear")
    assert len(report.restrained) == 2
    for n, w0 in originals.items():
        ref, _ = restrain_reference(w0, edited[n].double() - w0.double(), fn="linear")
        tol = 1e-10 if w0.dtype == torch.float64 else 1e-5
        assert rel_fro(dict(lin.named_parameters())[n].detach(), ref) <= tol, n


# ----------------------------------------------------------------------------- API
def test_public_api_is_lazy():
    for name in ("restrain_checkpoint", "restrain_model_", "RestrainReport"):
        assert name in prune_fast.__all__ and getattr(prune_fast, name) is not None
    code = ("import sys, prune_fast; heavy = [m for m in ('prune_fast.checkpoint', 'prune_fast.checkpoint.restrain_model', "
            "'safetensors', 'transformers') if m in sys.modules]; print(heavy); assert not heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_report_json_round_trip(llama_pair, tmp_path):
    report = restrain_checkpoint(llama_pair.base, llama_pair.edited, None, dry_run=True, progress=False)
    report.save_json(tmp_path / "r.json")
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["n_differing"] == len(llama_pair.edits) and d["dry_run"] is True
    assert {t["name"] for t in d["tensors"]} == set(llama_pair.edits)


def test_streams_only_differing_tensors(gpt2_pair, tmp_path, monkeypatch):
    """Identical tensors are compared as bytes and copied, never deserialised: only differing pairs are loaded."""
    from prune_fast.checkpoint import restrain_saved as checkpoint

    loaded: list[str] = []
    real = checkpoint._Source.load

    def spy(self, e):
        loaded.append(e.name)
        return real(self, e)

    monkeypatch.setattr(checkpoint._Source, "load", spy)
    restrain_checkpoint(gpt2_pair.base, gpt2_pair.edited, tmp_path / "out", progress=False)
    assert sorted(loaded) == sorted(2 * list(gpt2_pair.edits)), loaded


def test_keyboard_interrupt_leaves_no_out(llama_pair, tmp_path, monkeypatch):
    from prune_fast.checkpoint import restrain_saved as checkpoint

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "restrain_pair", interrupted)
    with pytest.raises(KeyboardInterrupt):
        restrain_checkpoint(llama_pair.base, llama_pair.edited, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_restrain_model_half_model_against_fp32_base(gpt2_pair):
    """A model loaded in fp16 from an fp32 BASE: W0 is BASE in the parameter's dtype, so only edited weights differ."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gpt2_pair.edited, dtype=torch.float16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = restrain_model_(model, gpt2_pair.base)
    assert {t.name: t.action for t in report.tensors} == gpt2_pair.edits, f"seed {SEED}"
    base = load_all(gpt2_pair.base)
    for n, p in model.named_parameters():
        assert p.dtype == torch.float16
        if n in {t.name for t in report.restrained}:
            w0 = base[n].half()
            ref, _ = restrain_reference(w0, before[n].double() - w0.double())
            assert rel_fro(p.detach(), ref) <= 2e-3, n
        else:
            assert torch.equal(p.detach(), before[n]), n


def test_stale_pickle_weights_beside_safetensors_are_not_copied(tmp_path):
    g = torch.Generator().manual_seed(SEED + 13)
    w0 = torch.randn(12, 20, generator=g)
    for d, w in (("b", w0), ("e", (w0.double() + low_rank_update(w0, [2.0], g)).float())):
        (tmp_path / d).mkdir()
        save_file({"w": w}, tmp_path / d / "model.safetensors")
        torch.save({"w": w0}, tmp_path / d / "pytorch_model.bin")  # unrestrained weights from a past save
        (tmp_path / d / "config.json").write_text("{}")
    restrain_checkpoint(tmp_path / "b", tmp_path / "e", tmp_path / "o", progress=False)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["config.json", "model.safetensors"]


# ----------------------------------------------------------------------------- the fast paths
_DTYPE_PAIRS = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                (torch.float64, torch.float64), (torch.float32, torch.float16), (torch.float16, torch.float32),
                (torch.float64, torch.float32)]


@pytest.mark.parametrize("base_dtype,edited_dtype", _DTYPE_PAIRS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", [(45, 33), (150, 120)], ids=["direct", "krylov"])
def test_restrain_pair_in_a_buffer_equals_restrain_on_a_copy(base_dtype, edited_dtype, shape, monkeypatch):
    """The buffer path (Δ, then Ŵ, in one reused tensor; half Δ converted block by block) gives the
    same bits as restrain_ on a compute-dtype copy of W_N, matches the float64 reference, writes
    every element of the buffer and leaves its inputs alone."""
    from prune_fast.checkpoint import restrain_saved as checkpoint
    from prune_fast._dtype import compute_dtype
    from prune_fast.restrain import sigma_max

    monkeypatch.setattr(checkpoint, "_SUBTRACT_BLOCK", 7 * shape[1])  # several blocks and a remainder
    g = torch.Generator().manual_seed(SEED + 11)
    w0 = torch.randn(*shape, generator=g, dtype=torch.float64).to(base_dtype)
    we = (w0.double() + low_rank_update(w0, [6.0, 3.0, 0.5], g)).to(edited_dtype)
    w0_copy, we_copy = w0.clone(), we.clone()
    acc = compute_dtype(we)
    work = torch.full(we.shape, float("nan"), dtype=acc)  # poisoned: every element must be written
    torch.manual_seed(SEED)  # the Krylov start blocks come from the global generator: same draws below
    new, rep = checkpoint.restrain_pair("w", w0, we, fn="log1.2", work=work)
    assert same_bits(w0, w0_copy) and same_bits(we, we_copy)
    assert rep.n_restrained == 2 and new.dtype == edited_dtype
    # the arithmetic before the buffer existed
    weight = we.to(acc, copy=True)
    torch.manual_seed(SEED)
    sigma_star, _ = sigma_max(w0.to(acc))
    prune_fast.restrain_(weight, weight - w0.to(acc), fn="log1.2", sigma_star=sigma_star)
    assert rep.sigma_star == sigma_star
    assert same_bits(new, weight.to(edited_dtype))
    ref, _ = restrain_reference(w0, we.double() - w0.double(), fn="log1.2")
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}
    assert rel_fro(new, ref) <= max(tol[base_dtype], tol[edited_dtype]), f"seed {SEED}: {rel_fro(new, ref):.3g}"
    if edited_dtype in (torch.float16, torch.bfloat16):  # Δ block by block rounds as the one-shot subtraction
        buf = w0.to(acc).clone()
        assert same_bits(checkpoint._subtract_from_(we, buf), we.to(acc) - w0.to(acc))
    with pytest.raises(InvalidInputError, match="work must be"):
        checkpoint.restrain_pair("w", w0, we, work=torch.empty(3, 3, dtype=acc))
    bad = we.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(InvalidInputError, match="non-finite"):  # checked unless the caller already did
        checkpoint.restrain_pair("w", w0, bad)
    if edited_dtype == acc:  # a buffer that is an input would overwrite it
        with pytest.raises(InvalidInputError, match="shares memory"):
            checkpoint.restrain_pair("w", w0, we, work=we)
        assert same_bits(we, we_copy)


def test_truncated_safetensors_is_refused_before_anything_is_written(tmp_path):
    w = torch.randn(20, 10)
    base = _single(tmp_path / "b.safetensors", w=w)
    edited = _single(tmp_path / "e.safetensors", w=w + 1.0)
    raw = edited.read_bytes()
    edited.write_bytes(raw[:-7])
    out = tmp_path / "o.safetensors"
    with pytest.raises(InvalidInputError, match=r"e\.safetensors is truncated.*'w'"):
        restrain_checkpoint(base, edited, out, progress=False)
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_unaligned_tensor_offsets_are_read_correctly(tmp_path):
    """A hand-written safetensors file whose fp32 tensor starts at an odd byte offset."""
    import struct

    from prune_fast.checkpoint.safetensors_io import _Source

    g = torch.Generator().manual_seed(SEED + 12)
    w = torch.randn(6, 5, generator=g)
    tag = torch.tensor([1, 2, 3], dtype=torch.uint8)
    header = {"tag": {"dtype": "U8", "shape": [3], "data_offsets": [0, 3]},
              "w": {"dtype": "F32", "shape": [6, 5], "data_offsets": [3, 3 + 4 * w.numel()]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + tag.numpy().tobytes() + w.numpy().tobytes())
    src = _Source("BASE", path, allow_pickle=False)
    try:
        assert same_bits(src.load(src.entries["w"]), w)
        assert same_bits(src.load(src.entries["tag"]), tag)
    finally:
        src.close()


@pytest.mark.parametrize("offset", [0, 3, 4], ids=["aligned", "odd-offset", "4-byte-offset"])
@pytest.mark.parametrize("n", [13, 16, 4096 + 5, 4096 + 8])
def test_byte_comparison_sees_one_changed_byte(n, offset):
    """Views at any storage offset (pickle tensors sliced from a larger storage, odd file offsets)."""
    from prune_fast.checkpoint.safetensors_io import _same_bytes

    g = torch.Generator().manual_seed(SEED + n)
    a = torch.randint(0, 256, (n + offset,), dtype=torch.uint8, generator=g)[offset:]
    assert _same_bytes(a, a.clone()) and _same_bytes(a.clone(), a)
    for i in (0, n // 2, n - 1):
        b = torch.empty(n + 5, dtype=torch.uint8)[5:]  # another misalignment on the other side
        b.copy_(a)
        b[i] ^= 1
        assert not _same_bytes(a, b) and not _same_bytes(b, a)
    assert not _same_bytes(a, a[:-1].clone())


def test_pickle_tensors_that_are_views_of_a_larger_storage(tmp_path):
    """torch.save keeps a slice's whole storage: the loaded tensor starts at an offset of 4 bytes."""
    g = torch.Generator().manual_seed(SEED + 13)
    big = torch.randn(300, generator=g, dtype=torch.float64).float()
    w0 = big[1:257].view(32, 8)
    we = (w0.double() + low_rank_update(w0, [5.0, 0.5], g)).float()
    torch.save({"w": w0, "same": big[3:7]}, tmp_path / "base.pt")
    torch.save({"w": we, "same": big[3:7].clone()}, tmp_path / "edited.pt")
    out = tmp_path / "out.safetensors"
    report = restrain_checkpoint(tmp_path / "base.pt", tmp_path / "edited.pt", out, allow_pickle=True,
                                 fn="log1.2", progress=False)
    assert [t.name for t in report.tensors] == ["w"] and report.tensors[0].n_restrained == 1
    got = load_all(out)
    ref, _ = restrain_reference(w0, we.double() - w0.double(), fn="log1.2")
    assert rel_fro(got["w"], ref) <= 1e-6 and same_bits(got["same"], big[3:7])


def test_header_whose_byte_range_does_not_fit_the_shape_is_refused(tmp_path):
    import struct

    w = torch.randn(6, 5)
    header = {"w": {"dtype": "F32", "shape": [6, 4], "data_offsets": [0, 4 * w.numel()]}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + w.numpy().tobytes())
    good = _single(tmp_path / "good.safetensors", w=w[:, :4].contiguous())
    with pytest.raises(InvalidInputError, match=r"bad\.safetensors is corrupt.*'w'.*needs 96 bytes"):
        restrain_checkpoint(good, bad, tmp_path / "o.safetensors", progress=False)
    assert not (tmp_path / "o.safetensors").exists()
    header["w"]["shape"] = [6, "5"]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    bad.write_bytes(struct.pack("<Q", len(raw)) + raw + w.numpy().tobytes())
    with pytest.raises(InvalidInputError, match=r"bad\.safetensors is corrupt.*'w'.*shape"):
        restrain_checkpoint(good, bad, tmp_path / "o.safetensors", progress=False)
    assert not (tmp_path / "o.safetensors").exists()
