"""restrain_checkpoint on hostile folders: corrupt headers, OUT inside an input, symlinks and link
loops, ambiguous layouts, OUT's permissions — refused before anything is written (issue 19)."""
from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prune_fast import InvalidInputError, restrain_checkpoint
from prune_fast.spectral.reference import restrain_reference

from checkpoint_models import SEED, load_all, low_rank_update, rel_fro


def _folders(root: Path, seed: int = SEED) -> tuple[Path, Path, torch.Tensor, torch.Tensor]:
    """BASE and EDITED folders with one 24×16 weight edited above σ*, plus a config file."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(24, 16, generator=g, dtype=torch.float64).float()
    we = (w0.double() + low_rank_update(w0, [3.0, 0.5], g)).float()
    base, edited = root / "base", root / "edited"
    for folder, w in ((base, w0), (edited, we)):
        folder.mkdir()
        save_file({"w": w, "b": torch.ones(4)}, folder / "model.safetensors")
        (folder / "config.json").write_text('{"model_type": "toy"}\n')
    return base, edited, w0, we


def _nothing_written(root: Path, *keep: str) -> None:
    left = sorted(p.name for p in root.iterdir() if p.name not in ("base", "edited", *keep))
    assert not left, f"written although refused: {left}"


def _check_out(out: Path, w0: torch.Tensor, we: torch.Tensor) -> None:
    got = load_all(out)
    ref, _ = restrain_reference(w0, we.double() - w0.double())
    assert rel_fro(got["w"], ref) <= 1e-6


def _raw_file(path: Path, header: dict, payload: bytes) -> None:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + payload)


def test_overlapping_byte_ranges_are_refused(tmp_path):
    g = torch.Generator().manual_seed(SEED + 40)
    w = torch.randn(4, 4, generator=g)
    payload = w.numpy().tobytes()
    good = tmp_path / "good.safetensors"
    save_file({"w": w, "v": w[:2].clone()}, good)
    bad = tmp_path / "bad.safetensors"  # v's bytes lie inside w's
    _raw_file(bad, {"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
                    "v": {"dtype": "F32", "shape": [2, 4], "data_offsets": [32, 64]}}, payload)
    with pytest.raises(InvalidInputError, match=r"bad\.safetensors is corrupt.*overlap"):
        restrain_checkpoint(good, bad, tmp_path / "o.safetensors", progress=False)
    assert not (tmp_path / "o.safetensors").exists()
    with pytest.raises(InvalidInputError, match="overlap"):
        restrain_checkpoint(bad, good, None, dry_run=True, progress=False)


@pytest.mark.parametrize("role", ["base", "edited"])
def test_out_inside_base_or_edited_is_refused(role, tmp_path):
    base, edited, _, _ = _folders(tmp_path)
    folder = base if role == "base" else edited
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(InvalidInputError, match=f"inside the {role.upper()} folder"):
        restrain_checkpoint(base, edited, folder / "out", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_symlinked_folder_and_file_inside_edited_are_copied(tmp_path):
    base, edited, w0, we = _folders(tmp_path)
    elsewhere = tmp_path / "shared_tokenizer"
    elsewhere.mkdir()
    (elsewhere / "vocab.txt").write_text("a\nb\n")
    (tmp_path / "readme.md").write_text("model card\n")
    (edited / "tokenizer").symlink_to(elsewhere, target_is_directory=True)
    (edited / "README.md").symlink_to(tmp_path / "readme.md")
    out = tmp_path / "out"
    restrain_checkpoint(base, edited, out, progress=False)
    _check_out(out, w0, we)
    assert (out / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    assert (out / "README.md").read_text() == "model card\n"
    assert not (out / "tokenizer").is_symlink() and not (out / "README.md").is_symlink()


@pytest.mark.parametrize("kind", ["folder loop", "self loop file", "dangling file"])
def test_symlink_loops_inside_edited_are_refused_before_writing(kind, tmp_path):
    base, edited, _, _ = _folders(tmp_path)
    if kind == "folder loop":
        (edited / "sub").mkdir()
        (edited / "sub" / "back").symlink_to(edited, target_is_directory=True)
    elif kind == "self loop file":
        (edited / "loop.json").symlink_to(edited / "loop.json")
    else:
        (edited / "gone.json").symlink_to(tmp_path / "missing.json")
    with pytest.raises(InvalidInputError, match="loop|dangling"):
        restrain_checkpoint(base, edited, tmp_path / "out", progress=False)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("role", ["out", "base", "edited"])
def test_symlink_loop_as_a_path_argument_is_refused(role, tmp_path):
    base, edited, _, _ = _folders(tmp_path)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    args = {"base": base, "edited": edited, "out": tmp_path / "out"}
    args[role] = loop
    with pytest.raises(InvalidInputError, match=f"{role.upper()} .*loop"):
        restrain_checkpoint(args["base"], args["edited"], args["out"], progress=False)
    _nothing_written(tmp_path, "loop")


def test_model_safetensors_beside_another_file_without_index_is_ambiguous(tmp_path):
    base, edited, w0, we = _folders(tmp_path)
    for folder in (base, edited):
        save_file({"w": torch.zeros(2, 2)}, folder / "model-2.safetensors")
    with pytest.raises(InvalidInputError, match="several .safetensors files.*allow-extra-files"):
        restrain_checkpoint(base, edited, tmp_path / "out", progress=False)
    _nothing_written(tmp_path)
    out = tmp_path / "out"
    restrain_checkpoint(base, edited, out, progress=False, allow_extra_files=True)
    _check_out(out, w0, we)
    assert not (out / "model-2.safetensors").exists()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_out_folder_mode_follows_the_umask(umask, tmp_path):
    base, edited, _, _ = _folders(tmp_path)
    old = os.umask(umask)
    try:
        restrain_checkpoint(base, edited, tmp_path / "out", progress=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask
