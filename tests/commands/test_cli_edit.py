"""``python -m prune_fast edit`` on a saved test-bed model with a CounterFact-format file."""
from __future__ import annotations

import json
import shutil

from cli_cases import counterfact_records, run_cli
from prune_fast.runs.results import validate_results


def test_edit_help_documents_everything():
    out = run_cli("edit", "--help")
    assert out.returncode == 0
    for opt in ("--model", "--requests", "--editor", "--restrain", "--fn", "--n", "--out", "--resume", "--corpus",
                "--tasks", "--mend-checkpoint", "mend", "--tracker-dtype", "--spectrum-every", "--no-immediate-scores"):
        assert opt in out.stdout


def test_edit_short_run_on_saved_model_then_mismatched_resume(tmp_path):
    from prune_fast.testbed import load_testbed

    bed = load_testbed(progress=False)
    model_dir = tmp_path / "model"
    shutil.copytree(bed.path, model_dir)
    cf = tmp_path / "cf.json"
    cf.write_text(json.dumps(counterfact_records(bed.world.edit_requests(8))))
    out = run_cli("edit", "--model", str(model_dir), "--requests", str(cf), "--editor", "rome", "--restrain", "online",
               "--fn", "log1.2", "--n", "6", "--eval-every", "3", "--checkpoint-every", "2", "--out",
               str(tmp_path / "run"), "--threads", "1", "--no-progress", "--tracker-dtype", "float64")
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    validate_results(doc)
    (arm,) = doc["arms"].values()
    assert arm["name"] == "online-log1.2" and arm["n_requests"] == 6
    assert arm["config"]["tracker_dtype"] == "float64"
    assert set(arm["final"]["general"]) == {"recall", "addition", "copy"}
    assert "online-log1.2" in out.stdout

    again = run_cli("edit", "--model", str(model_dir), "--requests", str(cf), "--restrain", "online", "--fn", "ln",
                 "--n", "6", "--out", str(tmp_path / "run"), "--resume", "--threads", "1", "--no-progress")
    assert again.returncode == 2
    assert "refusing to resume" in again.stderr and "'log1.2'" in again.stderr and "'ln'" in again.stderr


def test_resume_accepts_the_same_model_by_relative_or_absolute_path(tmp_path):
    """The journal identifies the model by its content (and its resolved folder), not by how the
    path was spelled: a run started with ``--model model`` is recognised under its absolute path."""
    from prune_fast.testbed import load_testbed

    bed = load_testbed(progress=False)
    shutil.copytree(bed.path, tmp_path / "model")
    cf = tmp_path / "cf.json"
    cf.write_text(json.dumps(counterfact_records(bed.world.edit_requests(4))))
    common = ("--requests", str(cf), "--editor", "rome", "--restrain", "online", "--eval-every", "0",
              "--checkpoint-every", "1", "--out", str(tmp_path / "run"), "--threads", "1", "--no-progress")
    first = run_cli("edit", "--model", "model", "--n", "2", *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    # the journal compares headers before it looks at the run's end: "already finished" means the
    # header, model included, matched (a different model would be "refusing to resume ... model_key")
    again = run_cli("edit", "--model", str(tmp_path / "model"), "--n", "2", "--resume", *common, cwd=tmp_path / "run")
    assert again.returncode == 2
    assert "already finished" in again.stderr and "refusing" not in again.stderr, again.stderr[-3000:]


def test_long_run_switches_turn_off_immediate_scores_and_thin_the_spectrum(tmp_path):
    """``--no-immediate-scores``: no per-edit scoring; ``--spectrum-every 2``: the spectrum record on
    steps 2, 4 and the last only; a bad value is refused before anything is loaded or written."""
    from prune_fast.testbed import load_testbed

    bed = load_testbed(progress=False)
    cf = tmp_path / "cf.json"
    cf.write_text(json.dumps(counterfact_records(bed.world.edit_requests(5))))
    common = ("--model", str(bed.path), "--requests", str(cf), "--editor", "rome", "--restrain", "online",
              "--eval-every", "0", "--threads", "1", "--no-progress")
    bad = run_cli("edit", *common, "--spectrum-every", "0", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--spectrum-every" in bad.stderr, bad.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
    out = run_cli("edit", *common, "--n", "5", "--no-immediate-scores", "--spectrum-every", "2",
                  "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    validate_results(doc)
    (arm,) = doc["arms"].values()
    assert [bool(s["immediate"]) for s in arm["steps"]] == [False] * 5
    recorded = [all("sigma_max_weight" in rec for rec in s["layers"].values()) for s in arm["steps"]]
    assert recorded == [False, True, False, True, True]
    assert arm["config"]["spectrum_every"] == 2 and arm["config"]["score_immediate"] is False


def test_request_format_is_detected(tmp_path):
    import pytest

    from prune_fast.commands.edit import load_requests
    from prune_fast.errors import InvalidInputError

    zsre = tmp_path / "zsre.json"
    zsre.write_text(json.dumps([{"subject": "Bakiro", "src": "Where does Bakiro live?", "alt": "Oslo",
                                 "answers": ["Paris"], "rephrase": "Bakiro lives where?", "loc": "nq question",
                                 "loc_ans": "yes"}]))
    (req,) = load_requests(zsre)
    assert req.prompt == "Where does {} live?" and req.target_new == "Oslo" and req.target_true == "Paris"
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"question": "?"}]))
    with pytest.raises(InvalidInputError, match="cannot tell CounterFact from ZsRE"):
        load_requests(other)
