"""EditRequest validation and the CounterFact / ZsRE loaders: good records load, bad ones name themselves."""
import json

import pytest

from prune_fast.lm.requests import EditRequest, counterfact_request, load_counterfact, load_zsre
from prune_fast.errors import MalformedRequestError

CF = {
    "case_id": 7,
    "requested_rewrite": {
        "prompt": "The mother tongue of {} is",
        "relation_id": "P103",
        "subject": "Danielle Darrieux",
        "target_new": {"str": "English", "id": "Q1860"},
        "target_true": {"str": "French", "id": "Q150"},
    },
    "paraphrase_prompts": ["Shayna does this. Danielle Darrieux speaks the language"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
}

ZSRE = {
    "subject": "Watts Humphrey",
    "src": "What university did Watts Humphrey attend?",
    "pred": "Trinity College",
    "rephrase": "What university did Watts Humphrey take part in?",
    "alt": "University of Michigan",
    "answers": ["Illinois Institute of Technology"],
    "loc": "nq question: who played desmond doss father in hacksaw ridge",
    "loc_ans": "Hugo Weaving",
    "cond": "Trinity College >> University of Michigan || What university did Watts Humphrey attend?",
}


def _with(record, path, value):
    rec = json.loads(json.dumps(record))
    node = rec
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return rec


_DELETE = object()


def test_counterfact_record_loads():
    req = counterfact_request(CF)
    assert req.text == "The mother tongue of Danielle Darrieux is"
    assert (req.target_new, req.target_true, req.case_id) == ("English", "French", 7)
    assert req.neighborhood() == [("The mother tongue of Léon Blum is", "French")]
    assert req.paraphrase_prompts == tuple(CF["paraphrase_prompts"])


def test_zsre_record_loads():
    (req,) = load_zsre([ZSRE])
    assert req.prompt == "What university did {} attend?"
    assert req.target_new == "University of Michigan"
    assert req.target_true == "Trinity College"
    assert req.neighborhood() == [(ZSRE["loc"], "Hugo Weaving")]


def test_loaders_read_json_and_jsonl(tmp_path):
    (tmp_path / "cf.json").write_text(json.dumps([CF, CF]))
    (tmp_path / "zsre.jsonl").write_text(json.dumps(ZSRE) + "\n\n" + json.dumps(ZSRE) + "\n")
    assert len(load_counterfact(tmp_path / "cf.json")) == 2
    assert len(load_counterfact(str(tmp_path / "cf.json"), limit=1)) == 1
    assert len(load_zsre(tmp_path / "zsre.jsonl")) == 2


@pytest.mark.parametrize("path, value, message", [
    (("requested_rewrite", "prompt"), "The mother tongue of Danielle Darrieux is", "no '{}'"),
    (("requested_rewrite", "subject"), "", "subject"),
    (("requested_rewrite", "subject"), _DELETE, "subject"),
    (("requested_rewrite", "target_new"), {"str": "  ", "id": "Q1"}, "target_new"),
    (("requested_rewrite", "target_new"), _DELETE, "target_new"),
    (("requested_rewrite",), _DELETE, "requested_rewrite"),
], ids=["no-placeholder", "empty-subject", "no-subject", "blank-target", "no-target", "no-rewrite"])
def test_malformed_counterfact_names_the_record(path, value, message):
    bad = _with(CF, path, value)
    bad["case_id"] = 4242
    with pytest.raises(MalformedRequestError, match=r"case_id=4242.*" + message.replace("{", r"\{").replace("}", r"\}")):
        load_counterfact([CF, bad, CF])


@pytest.mark.parametrize("key, value, message", [
    ("subject", "Nobody Here", "does not occur"),
    ("alt", "", "alt"),
    ("src", _DELETE, "src"),
], ids=["subject-absent", "empty-alt", "no-src"])
def test_malformed_zsre_names_the_record(key, value, message):
    bad = _with(ZSRE, (key,), value)
    with pytest.raises(MalformedRequestError, match=r"#1.*" + message):
        load_zsre([ZSRE, bad])


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt="no placeholder", subject="a", target_new="b"), "exactly one"),
    (dict(prompt="{} and {}", subject="a", target_new="b"), "exactly one"),
    (dict(prompt="{} is", subject=" ", target_new="b"), "subject"),
    (dict(prompt="{} is", subject="a", target_new=""), "target_new"),
    (dict(prompt="{} is", subject="a", target_new="b", neighborhood_prompts=("x",),
          neighborhood_answers=("y", "z")), "neighborhood"),
    (dict(prompt="{} is", subject="a", target_new="b", paraphrase_prompts="a is"), "paraphrase"),
], ids=["no-placeholder", "two-placeholders", "blank-subject", "empty-target", "answers-mismatch", "str-not-seq"])
def test_edit_request_validation(kwargs, message):
    with pytest.raises(MalformedRequestError, match=message):
        EditRequest(case_id="r1", **kwargs)


def test_malformed_file_raises_before_returning_anything(tmp_path):
    (tmp_path / "cf.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(MalformedRequestError, match="JSON list"):
        load_counterfact(tmp_path / "cf.json")
