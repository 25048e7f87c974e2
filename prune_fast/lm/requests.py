"""Edit requests and loaders for the CounterFact and ZsRE record formats.

An :class:`EditRequest` says: in ``prompt.format(subject)`` the next word should be ``target_new``
(it was ``target_true``).  Loaders accept a path (``.json`` list or ``.jsonl``) or records already
in memory; a malformed record raises :class:`MalformedRequestError` naming the record, and no
request of the batch is returned (so nothing can be applied from a half-read file).

Example::

    reqs = load_counterfact("counterfact.json", limit=100)
    reqs[0].text   # 'The mother tongue of Danielle Darrieux is'
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import MalformedRequestError

__all__ = [
    "EditRequest",
    "counterfact_request",
    "zsre_request",
    "load_counterfact",
    "load_zsre",
]


@dataclass(frozen=True)
class EditRequest:
    """One fact to rewrite.

    Attributes:
        prompt: template with exactly one ``{}`` where the subject goes, e.g. ``"{} lives in"``.
        subject: the subject string, e.g. ``"Danielle Darrieux"``.
        target_new: the answer the edited model should give (without a leading space).
        target_true: the answer before the edit, if known.
        paraphrase_prompts: full prompts that state the same fact differently (generalisation).
        neighborhood_prompts: full prompts about other subjects that must keep their answers.
        neighborhood_answers: their answers; empty means ``target_true`` for each (CounterFact).
        case_id: an identifier used in error messages and reports.
    """

    prompt: str
    subject: str
    target_new: str
    target_true: str | None = None
    paraphrase_prompts: tuple[str, ...] = ()
    neighborhood_prompts: tuple[str, ...] = ()
    neighborhood_answers: tuple[str, ...] = ()
    case_id: str | int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        name = f"request {self.case_id!r}" if self.case_id is not None else f"request {self.prompt!r}"
        if not isinstance(self.prompt, str) or self.prompt.count("{}") != 1:
            raise MalformedRequestError(f"{name}: prompt must contain exactly one '{{}}', got {self.prompt!r}")
        if not isinstance(self.subject, str) or not self.subject.strip():
            raise MalformedRequestError(f"{name}: subject is missing or empty")
        if self.subject != self.subject.strip():  # the edit would land on a whitespace token, not the subject's
            raise MalformedRequestError(f"{name}: subject {self.subject!r} has leading or trailing whitespace")
        if not isinstance(self.target_new, str) or not self.target_new.strip():
            raise MalformedRequestError(f"{name}: target_new is missing or empty")
        if self.target_true is not None and not isinstance(self.target_true, str):
            raise MalformedRequestError(f"{name}: target_true must be a string, got {type(self.target_true).__name__}")
        for attr in ("paraphrase_prompts", "neighborhood_prompts", "neighborhood_answers"):
            value = getattr(self, attr)
            if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
                raise MalformedRequestError(f"{name}: {attr} must be a list of strings, got {value!r:.80}")
            object.__setattr__(self, attr, tuple(value))
        if self.neighborhood_answers and len(self.neighborhood_answers) != len(self.neighborhood_prompts):
            raise MalformedRequestError(
                f"{name}: {len(self.neighborhood_answers)} neighborhood answers for "
                f"{len(self.neighborhood_prompts)} neighborhood prompts"
            )

    @property
    def text(self) -> str:
        """The prompt with the subject filled in."""
        return self.prompt.format(self.subject)

    def neighborhood(self) -> list[tuple[str, str]]:
        """(prompt, expected answer) pairs; answers default to ``target_true``."""
        if self.neighborhood_answers:
            return list(zip(self.neighborhood_prompts, self.neighborhood_answers))
        if self.target_true is None:
            return []
        return [(p, self.target_true) for p in self.neighborhood_prompts]


def _get(record: Mapping[str, Any], key: str, name: str) -> Any:
    if key not in record:
        raise MalformedRequestError(f"{name}: missing field {key!r}")
    return record[key]


def _answer_str(value: Any, key: str, name: str) -> str:
    """CounterFact answers are ``{"str": ..., "id": ...}``; ZsRE ones are plain strings."""
    if isinstance(value, Mapping):
        value = value.get("str")
    if not isinstance(value, str) or not value.strip():
        raise MalformedRequestError(f"{name}: {key} is empty or not a string")
    return value.strip()


def counterfact_request(record: Mapping[str, Any], index: int | None = None) -> EditRequest:
    """One CounterFact record -> :class:`EditRequest`.

    Fields read: ``case_id``, ``requested_rewrite.{prompt, subject, target_new.str, target_true.str}``,
    ``paraphrase_prompts``, ``neighborhood_prompts``.
    """
    if not isinstance(record, Mapping):
        raise MalformedRequestError(f"CounterFact record #{index}: not a JSON object")
    case_id = record.get("case_id", index)
    name = f"CounterFact record case_id={case_id!r}"
    rewrite = _get(record, "requested_rewrite", name)
    if not isinstance(rewrite, Mapping):
        raise MalformedRequestError(f"{name}: requested_rewrite is not an object")
    prompt = _get(rewrite, "prompt", name)
    subject = _get(rewrite, "subject", name)
    if not isinstance(prompt, str) or "{}" not in prompt:
        raise MalformedRequestError(f"{name}: prompt has no '{{}}' placeholder: {prompt!r}")
    if not isinstance(subject, str) or not subject.strip():
        raise MalformedRequestError(f"{name}: subject is missing or empty")
    target_true = rewrite.get("target_true")
    return EditRequest(
        prompt=prompt,
        subject=subject,
        target_new=_answer_str(_get(rewrite, "target_new", name), "target_new", name),
        target_true=None if target_true is None else _answer_str(target_true, "target_true", name),
        # Passed as read: tuple() here would split a string into one-character prompts.
        paraphrase_prompts=record.get("paraphrase_prompts", ()),
        neighborhood_prompts=record.get("neighborhood_prompts", ()),
        case_id=case_id,
    )


def zsre_request(record: Mapping[str, Any], index: int | None = None) -> EditRequest:
    """One ZsRE record -> :class:`EditRequest`.

    Fields read: ``subject``, ``src`` (the question, containing the subject), ``alt`` (new answer),
    ``answers``/``pred`` (old answer, optional), ``rephrase``, ``loc`` and ``loc_ans``.
    """
    if not isinstance(record, Mapping):
        raise MalformedRequestError(f"ZsRE record #{index}: not a JSON object")
    case_id = record.get("case_id", index)
    name = f"ZsRE record #{case_id}"
    subject = _get(record, "subject", name)
    src = _get(record, "src", name)
    if not isinstance(subject, str) or not subject.strip():
        raise MalformedRequestError(f"{name}: subject is missing or empty")
    if not isinstance(src, str) or subject not in src:
        raise MalformedRequestError(f"{name}: subject {subject!r} does not occur in src {src!r}")
    answers = record.get("answers") or ()
    old = record.get("pred") or (answers[0] if answers else None)
    rephrase = record.get("rephrase")
    loc, loc_ans = record.get("loc"), record.get("loc_ans")
    return EditRequest(
        prompt=src.replace(subject, "{}", 1),
        subject=subject,
        target_new=_answer_str(_get(record, "alt", name), "alt", name),
        target_true=None if old is None else _answer_str(old, "answers", name),
        paraphrase_prompts=(rephrase,) if rephrase else (),
        neighborhood_prompts=(loc,) if loc else (),
        neighborhood_answers=(_answer_str(loc_ans, "loc_ans", name),) if loc else (),
        case_id=case_id,
    )


def read_records(source: str | Path | Iterable[Mapping[str, Any]]) -> list[Any]:
    """The records of a ``.json`` list or ``.jsonl`` file (or an iterable already in memory).

    A missing or unreadable file, malformed JSON (naming the line), JSON lines in a ``.json``
    file or an empty file raise :class:`MalformedRequestError`.
    """
    if not isinstance(source, (str, Path)):
        return list(source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MalformedRequestError(f"requests file {path}: cannot be read ({e})") from None
    if path.suffix == ".jsonl":
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise MalformedRequestError(f"{path}:{i}: not a JSON record ({e})") from None
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            hint = "; it looks like JSON lines: name the file .jsonl" if e.msg == "Extra data" else ""
            raise MalformedRequestError(f"{path}:{e.lineno}: not valid JSON ({e.msg}){hint}") from None
        if not isinstance(records, list):
            raise MalformedRequestError(f"{path}: expected a JSON list of records")
    if not records:
        raise MalformedRequestError(f"{path}: holds no requests")
    return records


def _load(source: Any, convert: Any, limit: int | None) -> list[EditRequest]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise MalformedRequestError(f"limit must be a positive number of requests or None, got {limit!r}")
    records = read_records(source)
    if limit is not None:
        records = records[:limit]
    try:
        return [convert(rec, i) for i, rec in enumerate(records)]
    except MalformedRequestError as e:
        if isinstance(source, (str, Path)):
            raise MalformedRequestError(f"{source}: {e}") from None
        raise


def load_counterfact(source: str | Path | Sequence[Mapping[str, Any]], limit: int | None = None) -> list[EditRequest]:
    """Read CounterFact records from a ``.json``/``.jsonl`` file or a list; all-or-nothing."""
    return _load(source, counterfact_request, limit)


def load_zsre(source: str | Path | Sequence[Mapping[str, Any]], limit: int | None = None) -> list[EditRequest]:
    """Read ZsRE records from a ``.json``/``.jsonl`` file or a list; all-or-nothing."""
    return _load(source, zsre_request, limit)
