"""Every subcommand turns malformed input into one line naming the file, record or option, exit
status 2, no traceback and nothing written (issue 19)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prune_fast.cli import main

CF_RECORD = {"case_id": 7, "requested_rewrite": {"prompt": "{} lives in", "subject": "Bakiro",
                                                 "target_new": {"str": "Oslo"}, "target_true": {"str": "Paris"}},
             "paraphrase_prompts": ["Bakiro's home is in"], "neighborhood_prompts": ["Kenu lives in"]}


def _refused(capsys, argv: list[str], *needles: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(f"python -m prune_fast {argv[0]}: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _record(**rewrite_changes) -> dict:
    rec = json.loads(json.dumps(CF_RECORD))
    for k, v in rewrite_changes.items():
        if k in rec:
            rec[k] = v
        else:
            rec["requested_rewrite"][k] = v
    return rec


# ---------------------------------------------------------------------------------- restrain
def test_restrain_corrupt_header_one_line(tmp_path, capsys):
    w = torch.randn(4, 4)
    save_file({"w": w, "v": w[:2].clone()}, tmp_path / "good.safetensors")
    raw = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]},
                      "v": {"dtype": "F32", "shape": [2, 4], "data_offsets": [32, 64]}}).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "bad.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + w.numpy().tobytes())
    _refused(capsys, ["restrain", "--base", str(tmp_path / "good.safetensors"), "--edited",
                      str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "o.safetensors"), "--no-progress"],
             "bad.safetensors", "overlap")
    assert not (tmp_path / "o.safetensors").exists()


def test_restrain_ambiguous_folder_needs_allow_extra_files(tmp_path, capsys):
    for name in ("base", "edited"):
        (tmp_path / name).mkdir()
        save_file({"w": torch.eye(3) * (1 if name == "base" else 2)}, tmp_path / name / "model.safetensors")
        save_file({"w": torch.eye(2)}, tmp_path / name / "model-2.safetensors")
    argv = ["restrain", "--base", str(tmp_path / "base"), "--edited", str(tmp_path / "edited"), "--out",
            str(tmp_path / "out"), "--no-progress"]
    _refused(capsys, argv, "several .safetensors files", "--allow-extra-files")
    assert not (tmp_path / "out").exists()
    assert main(argv + ["--allow-extra-files"]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------ example/demo
@pytest.mark.parametrize("option", ["--edits", "--rows", "--cols"])
def test_example_refuses_non_positive_sizes(option, capsys):
    _refused(capsys, ["example", option, "0"], option)


@pytest.mark.parametrize("argv,needle", [(["--n", "0"], "--n"), (["--n", "-3"], "--n"),
                                         (["--eval-every", "-1"], "--eval-every"), (["--threads", "0"], "--threads"),
                                         (["--parallel", "0"], "--parallel"), (["--parallel", "-2"], "--parallel")])
def test_demo_refuses_bad_counts_before_loading_anything(argv, needle, tmp_path, capsys):
    _refused(capsys, ["demo", "--out", str(tmp_path / "demo"), "--no-progress", *argv], needle)
    assert not (tmp_path / "demo").exists()


# ---------------------------------------------------------------------------------- mend-train
@pytest.mark.parametrize("option", ["--requests", "--locality", "--eval-requests", "--hparams"])
def test_mend_train_refuses_missing_files_before_loading_the_model(option, tmp_path, capsys):
    missing = str(tmp_path / "missing.file")
    _refused(capsys, ["mend-train", "--model", str(tmp_path), "--out", str(tmp_path / "m.safetensors"),
                      "--no-progress", option, missing], option, missing)


def test_mend_train_refuses_zero_steps(tmp_path, capsys):
    _refused(capsys, ["mend-train", "--model", str(tmp_path), "--out", str(tmp_path / "m.safetensors"),
                      "--steps", "0"], "--steps")


# ---------------------------------------------------------------------------------------- edit
@pytest.fixture(scope="module")
def testbed_folder() -> Path:
    from prune_fast.testbed import load_testbed

    return load_testbed(progress=False).path


def _edit(tmp_path: Path, model: Path | str, requests: Path, *extra: str) -> list[str]:
    return ["edit", "--model", str(model), "--requests", str(requests), "--out", str(tmp_path / "run"),
            "--no-progress", "--threads", "1", *extra]


def _cf(tmp_path: Path, records, name="cf.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records) if name.endswith(".json") else
                    "".join(json.dumps(r) + "\n" for r in records))
    return path


def test_edit_gguf_only_folder(tmp_path, capsys):
    folder = tmp_path / "smol"
    folder.mkdir()
    (folder / "model-q8_0.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    _refused(capsys, _edit(tmp_path, folder, _cf(tmp_path, [CF_RECORD])), str(folder), "model-q8_0.gguf",
             "no config.json")


@pytest.mark.parametrize("option", ["--requests", "--corpus", "--heldout", "--hparams", "--tasks"])
def test_edit_missing_files_name_the_option(option, tmp_path, capsys):
    missing = str(tmp_path / "nope.txt")
    requests = _cf(tmp_path, [CF_RECORD])
    argv = _edit(tmp_path, tmp_path, requests)
    if option == "--requests":
        argv[4] = missing
    else:
        argv += [option, f"t={missing}" if option == "--tasks" else missing]
    _refused(capsys, argv, option, missing, "does not exist")


@pytest.mark.parametrize("content,name,needle", [
    ([], "cf.json", "holds no requests"),
    ([], "cf.jsonl", "holds no requests"),
    ("jsonl-in-json", "cf.json", ".jsonl"),
    ("broken-line", "cf.jsonl", "cf.jsonl:2"),
], ids=["empty-json", "empty-jsonl", "json-lines-in-json", "broken-jsonl-line"])
def test_edit_malformed_request_files(content, name, needle, tmp_path, capsys):
    path = tmp_path / name
    if content == "jsonl-in-json":
        path.write_text(json.dumps(CF_RECORD) + "\n" + json.dumps(CF_RECORD) + "\n")
    elif content == "broken-line":
        path.write_text(json.dumps(CF_RECORD) + "\n{oops\n")
    else:
        path.write_text("[]" if name.endswith(".json") else "\n")
    _refused(capsys, _edit(tmp_path, tmp_path, path), name, needle)


@pytest.mark.parametrize("n", ["-1", "0"])
def test_edit_n_must_be_positive(n, tmp_path, capsys):
    _refused(capsys, _edit(tmp_path, tmp_path, _cf(tmp_path, [CF_RECORD] * 3), "--n", n), "--n", n)


@pytest.mark.parametrize("change,needle", [
    ({"paraphrase_prompts": "Bakiro's home is in"}, "paraphrase_prompts"),
    ({"neighborhood_prompts": 5}, "neighborhood_prompts"),
    ({"subject": "Bakiro "}, "whitespace"),
    ({"prompt": "lives in"}, "'{}'"),
], ids=["paraphrases-as-string", "neighbours-as-number", "subject-trailing-space", "no-placeholder"])
def test_edit_malformed_records_name_the_record(change, needle, tmp_path, capsys):
    requests = _cf(tmp_path, [CF_RECORD, _record(**change)])
    _refused(capsys, _edit(tmp_path, tmp_path, requests), "cf.json", "7", needle)


def test_edit_unknown_preset_and_bad_yaml_need_the_model(testbed_folder, tmp_path, capsys):
    requests = _cf(tmp_path, [CF_RECORD])
    _refused(capsys, _edit(tmp_path, testbed_folder, requests, "--preset", "gpt3"), "no preset", "'gpt3'")
    bad = tmp_path / "hp.yaml"
    bad.write_text("v_steps: 20\n")
    _refused(capsys, _edit(tmp_path, testbed_folder, requests, "--hparams", str(bad)), str(bad), "'layer'")
    bad.write_text("layer: 0\nv_steps: abc\n")
    _refused(capsys, _edit(tmp_path, testbed_folder, requests, "--hparams", str(bad)), str(bad), "wrong type")
    bad.write_text("layr: 3\n")
    _refused(capsys, _edit(tmp_path, testbed_folder, requests, "--hparams", str(bad)), str(bad), "'layr'")
    bad.write_text("site: [unclosed\n")
    _refused(capsys, _edit(tmp_path, testbed_folder, requests, "--hparams", str(bad)), str(bad))
    assert not (tmp_path / "run").exists()


def test_task_file_errors_are_the_librarys(tmp_path):
    from prune_fast.errors import InvalidInputError
    from prune_fast.lm.evaluation import load_task_jsonl

    with pytest.raises(InvalidInputError, match="nope.jsonl"):
        load_task_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "t.jsonl").write_bytes(b"\xff\xfe{")
    with pytest.raises(InvalidInputError, match="t.jsonl"):
        load_task_jsonl(tmp_path / "t.jsonl")


def test_plain_string_target_new_still_loads(tmp_path):
    from prune_fast.commands.edit import load_requests

    (req,) = load_requests(_cf(tmp_path, [_record(target_new="Oslo")]))
    assert req.target_new == "Oslo" and req.paraphrase_prompts == ("Bakiro's home is in",)


# ------------------------------------------------------------- the library's own error types
def _error_cases():
    from prune_fast.editors import CovarianceStore, MEMITHyperParams, ROMEHyperParams
    from prune_fast.updates import TrackerSet
    from prune_fast.editors.mend_network import MENDNetwork
    from prune_fast.lm.probes import site_index
    from prune_fast.testbed import World, WordTokenizer
    from prune_fast.testbed.world import WorldSpec

    tok = WordTokenizer(["alpha", "beta"])
    return {
        "unknown preset": (lambda: ROMEHyperParams.preset("gpt3"), ValueError),
        "bad hparams field": (lambda: MEMITHyperParams.from_dict({"layers": [2, 1]}), ValueError),
        "hparams yaml not a mapping": (lambda: ROMEHyperParams.from_yaml("- 1\n- 2\n"), ValueError),
        "unknown token site": (lambda: site_index(tok, "{}", "{} beta", "alpha", "middle"), ValueError),
        "empty corpus": (lambda: CovarianceStore([]), ValueError),
        "tracker kwargs and factory": (lambda: TrackerSet(torch.nn.Linear(2, 2), lambda w: None, fn="ln"),
                                       TypeError),
        "MEND without weights": (lambda: MENDNetwork({}, 4, 1, 1e-3), ValueError),
        "unknown word": (lambda: tok.token_id("gamma"), KeyError),
        "bad vocabulary word": (lambda: WordTokenizer(["two words"]), ValueError),
        "unknown relation": (lambda: World.generate(WorldSpec(n_subjects=4, n_relations=1)).relation("nope"),
                             KeyError),
        "bad world spec": (lambda: WorldSpec(n_subjects=1), ValueError),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_user_errors_are_prune_fast_errors_of_their_natural_type(case):
    from prune_fast.errors import PruneFastError

    call, natural = _error_cases()[case]
    with pytest.raises(PruneFastError) as info:
        call()
    assert isinstance(info.value, natural)
    assert str(info.value) and not str(info.value).startswith("'")  # one readable line, not a quoted KeyError
