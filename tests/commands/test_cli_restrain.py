"""``python -m prune_fast restrain``: arguments, table, report JSON, dry run, refusals (exit status 2)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prune_fast.cli import build_parser, main

from checkpoint_models import SEED, check_restrained_output, load_all, make_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("cli"), "gpt2", shard=True, seed=SEED + 5)


def test_restrain_command_writes_out_table_and_report(pair, tmp_path, capsys):
    out, rep = tmp_path / "out", tmp_path / "report.json"
    code = main(["restrain", "--base", str(pair.base), "--edited", str(pair.edited), "--out", str(out),
                 "--fn", "log1.2", "--report", str(rep), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    restrained = [n for n, a in pair.edits.items() if a == "restrained"]
    for name in restrained:
        assert name in printed
    assert "σ*" in printed and f"{len(restrained)} of {len(pair.edits)} differing" in printed
    d = json.loads(rep.read_text())
    assert d["fn"] == "log1.2" and d["out"] == str(out)
    assert {t["name"] for t in d["tensors"] if t["action"] == "restrained"} == set(restrained)
    check_restrained_output(load_all(pair.base), load_all(pair.edited), load_all(out), set(restrained), fn="log1.2")


def test_dry_run_writes_nothing(pair, tmp_path, capsys):
    code = main(["restrain", "--base", str(pair.base), "--edited", str(pair.edited), "--dry-run", "--no-progress",
                 "--modules", r"h\.0\.", r"nothing"])
    assert code == 0 and list(tmp_path.iterdir()) == []
    printed = capsys.readouterr().out
    assert "dry run, nothing written" in printed and "transformer.h.0.mlp.c_proj.weight" in printed


@pytest.mark.parametrize("case", ["out-exists", "out-is-edited", "missing-base", "pickle"])
def test_refusals_exit_2_with_message(case, pair, tmp_path, capsys):
    args = ["restrain", "--base", str(pair.base), "--edited", str(pair.edited), "--no-progress"]
    if case == "out-exists":
        (tmp_path / "o").mkdir()
        args += ["--out", str(tmp_path / "o")]
        needle = "already exists"
    elif case == "out-is-edited":
        args += ["--out", str(pair.edited), "--overwrite"]
        needle = "EDITED checkpoint itself"
    elif case == "missing-base":
        args[2] = str(tmp_path / "nope")
        args += ["--out", str(tmp_path / "o")]
        needle = "does not exist"
    else:
        (tmp_path / "w.bin").write_bytes(b"\x80\x02}q\x00.")
        args[2] = str(tmp_path / "w.bin")
        args += ["--out", str(tmp_path / "o")]
        needle = "w.bin is a pickle checkpoint"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "restrain: error:" in err and needle in err
    assert not (tmp_path / "o").exists() or case == "out-exists"


def test_out_required_without_dry_run(pair):
    with pytest.raises(SystemExit):
        main(["restrain", "--base", str(pair.base), "--edited", str(pair.edited)])


def test_parser_is_a_dispatcher():
    parser = build_parser()
    args = parser.parse_args(["restrain", "--base", "b", "--edited", "e", "--out", "o", "--modules", "a", "b"])
    assert args.command == "restrain" and args.modules == ["a", "b"] and callable(args.run)
    with pytest.raises(SystemExit):
        parser.parse_args(["restrain", "--base", "b", "--edited", "e", "--fn", "log3"])


def test_python_dash_m_end_to_end(pair, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    run = subprocess.run([sys.executable, "-m", "prune_fast", "restrain", "--base", str(pair.base), "--edited",
                          str(pair.edited), "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "restrain:" in run.stderr  # the tqdm bar
    assert "transformer.h.0.mlp.c_proj.weight" in run.stdout
    assert (out / "model.safetensors.index.json").read_bytes() == (pair.edited / "model.safetensors.index.json").read_bytes()
