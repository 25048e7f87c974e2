"""General abilities of a real pretrained model, and the paper's summary figure.

What "the model still works" means after sequential edits of SmolLM2 (or any English causal LM):

* ``recall``: the never-edited facts of the shipped edit set (:func:`prune_fast.lm.edit_set.shipped_recall`,
  facts the unedited model answers), minus any whose (subject, relation) a run edited;
* few-shot tasks written here (:data:`FEW_SHOT_TASKS`): three solved examples, then the question;
  scored as the whole answer top-1 (teacher forced), like every other ability
  (:func:`prune_fast.lm.evaluation.answer_logprob`).  A task's chance level is that of guessing
  uniformly among the task's distinct answers (1 / #answers), a generous bound for free generation.
  :func:`real_abilities` keeps only tasks the unedited model solves well above chance
  (accuracy ≥ max(3 × chance, chance + 0.25)) and reports every task's accuracy and chance;
* ``perplexity`` of held-out English: ``prune_fast/data/heldout_en.txt``, thirty paragraphs of
  plain prose written for this package (same licence as the package), never used for statistics.

The key covariance of ROME/MEMIT needs other text: :func:`covariance_corpus` takes the English
paragraphs of the Python documentation topics that ship with CPython itself (``pydoc_data.topics``,
PSF License) — technical prose, available on every Python install, nothing downloaded.

The paper's summary figure (Ma et al. report 37.2 %): the average over abilities of the relative
reduction of capability loss, ``(loss_none − loss_prune) / loss_none`` with ``loss = baseline − final``
for accuracies and ``log(ppl_final / ppl_baseline)`` for perplexity; abilities the unrestrained run
did not degrade are left out (:func:`loss_reduction`).

Example::

    abilities, info = real_abilities(model, tok)
    Evaluator(model, tok, abilities=abilities, heldout=heldout_text())
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .edit_set import shipped_recall
from .evaluation import Evaluator
from .requests import EditRequest

__all__ = ["FEW_SHOT_TASKS", "heldout_text", "covariance_corpus", "recall_task", "real_abilities",
           "loss_reduction", "HELDOUT_FILE"]

HELDOUT_FILE = Path(__file__).resolve().parents[1] / "data" / "heldout_en.txt"  # prune_fast/data


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(tuple(x.strip() for x in item.split("=")) for item in text.split(";") if item.strip())  # type: ignore[misc]


# (three solved examples, the items asked). Hand-written; the examples never appear among the items.
FEW_SHOT_TASKS: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
    "capitals": (_pairs("France=Paris; Japan=Tokyo; Egypt=Cairo"), _pairs(
        "Italy=Rome; Germany=Berlin; Spain=Madrid; Russia=Moscow; China=Beijing; England=London; Greece=Athens; "
        "Portugal=Lisbon; Austria=Vienna; Poland=Warsaw; Norway=Oslo; Sweden=Stockholm; Finland=Helsinki; "
        "Denmark=Copenhagen; Ireland=Dublin; Hungary=Budapest; Turkey=Ankara; Thailand=Bangkok; "
        "South Korea=Seoul; Argentina=Buenos Aires; Peru=Lima; Kenya=Nairobi; Cuba=Havana; Canada=Ottawa; "
        "Australia=Canberra; Mexico=Mexico City; Belgium=Brussels; the Netherlands=Amsterdam; "
        "Switzerland=Bern; Iran=Tehran; Iraq=Baghdad; Afghanistan=Kabul")),
    "opposites": (_pairs("hot=cold; big=small; up=down"), _pairs(
        "good=bad; fast=slow; happy=sad; high=low; long=short; old=young; light=dark; open=closed; "
        "rich=poor; strong=weak; early=late; wet=dry; hard=soft; left=right; true=false; in=out; full=empty; "
        "thick=thin; loud=quiet; clean=dirty; day=night; win=lose; love=hate; push=pull; first=last; "
        "inside=outside; heavy=light; easy=difficult; black=white; alive=dead")),
    "past_tense": (_pairs("walk=walked; go=went; see=saw"), _pairs(
        "eat=ate; run=ran; take=took; give=gave; write=wrote; speak=spoke; swim=swam; drink=drank; "
        "sing=sang; begin=began; come=came; know=knew; fly=flew; buy=bought; think=thought; teach=taught; "
        "catch=caught; bring=brought; sleep=slept; keep=kept; feel=felt; leave=left; make=made; say=said; "
        "play=played; jump=jumped; talk=talked; help=helped; open=opened; call=called")),
    "plurals": (_pairs("cat=cats; child=children; box=boxes"), _pairs(
        "dog=dogs; mouse=mice; foot=feet; tooth=teeth; man=men; woman=women; person=people; goose=geese; "
        "book=books; house=houses; city=cities; baby=babies; knife=knives; leaf=leaves; wolf=wolves; "
        "bus=buses; church=churches; tree=trees; car=cars; apple=apples; girl=girls; boy=boys; story=stories; "
        "glass=glasses; key=keys; day=days; potato=potatoes; hero=heroes; wife=wives; life=lives")),
    "number_words": (_pairs("3=three; 8=eight; 12=twelve"), _pairs(
        "1=one; 2=two; 4=four; 5=five; 6=six; 7=seven; 9=nine; 10=ten; 11=eleven; 13=thirteen; 14=fourteen; "
        "15=fifteen; 16=sixteen; 17=seventeen; 18=eighteen; 19=nineteen; 20=twenty; 30=thirty; 40=forty; "
        "50=fifty; 60=sixty; 70=seventy; 80=eighty; 90=ninety; 100=hundred")),
    "nationalities": (_pairs("France=French; Japan=Japanese; Mexico=Mexican"), _pairs(
        "Italy=Italian; Germany=German; Spain=Spanish; Russia=Russian; China=Chinese; England=English; "
        "Greece=Greek; Portugal=Portuguese; Poland=Polish; Sweden=Swedish; Norway=Norwegian; Finland=Finnish; "
        "Ireland=Irish; Turkey=Turkish; Brazil=Brazilian; Canada=Canadian; India=Indian; Egypt=Egyptian; "
        "Korea=Korean; Vietnam=Vietnamese; Thailand=Thai; Peru=Peruvian; Argentina=Argentine; Iran=Iranian")),
}
THRESHOLD_FACTOR = 3.0
THRESHOLD_MARGIN = 0.25


def few_shot_pairs(name: str) -> list[tuple[str, str]]:
    """(prompt, answer) items of a :data:`FEW_SHOT_TASKS` task: three examples, then the item."""
    shots, items = FEW_SHOT_TASKS[name]
    head = "".join(f"{q}: {a}\n" for q, a in shots)
    return [(f"{head}{q}:", a) for q, a in items]


def chance_of(pairs: Sequence[tuple[str, str]]) -> float:
    """Chance of a uniform guess among the task's distinct answers."""
    return 1.0 / len({a for _, a in pairs})


def heldout_text() -> list[str]:
    """The held-out English paragraphs for perplexity (see the module docstring)."""
    return [line.strip() for line in HELDOUT_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]


def covariance_corpus(min_words: int = 12) -> list[str]:
    """English prose paragraphs of CPython's own documentation topics (``pydoc_data.topics``, PSF License).

    Paragraphs that look like code (``>>>``, indentation, more symbols than letters) are skipped.
    """
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            if para.startswith((" ", "\t")) or ">>>" in para or "::" in para:
                continue
            text = " ".join(para.split())
            letters = sum(c.isalpha() or c == " " for c in text)
            if len(text.split()) >= min_words and letters >= 0.85 * len(text):
                out.append(text)
    return out


def recall_task(facts: Sequence[dict[str, str]] | None = None):
    """The never-edited facts as an ability: a callable ``edited_requests → (prompt, answer) pairs``.

    A fact is dropped when a run edited its subject under the same prompt template.
    """
    if facts is None:
        facts = shipped_recall()
    items = [(f["prompt"], f["answer"]) for f in facts]

    def recall(edited: Sequence[EditRequest]) -> list[tuple[str, str]]:
        touched = {r.text for r in edited}
        return [(p, a) for p, a in items if p not in touched]

    return recall


def real_abilities(model: Any, tokenizer: Any, *, tasks: Sequence[str] | None = None,
                   recall_facts: Sequence[dict[str, str]] | None = None) -> tuple[dict[str, Any], dict[str, dict]]:
    """Abilities for :class:`prune_fast.lm.evaluation.Evaluator`, with the unedited accuracy and chance of each.

    Returns ``(abilities, info)``; ``info[name] = {"accuracy", "chance", "kept", "n"}``.  Few-shot
    tasks below the threshold (see the module docstring) are left out of ``abilities``.
    """
    candidates: dict[str, Any] = {"recall": recall_task(recall_facts)}
    for name in tasks if tasks is not None else FEW_SHOT_TASKS:
        candidates[name] = few_shot_pairs(name)
    unedited = {name: task(()) if callable(task) else task for name, task in candidates.items()}
    # scored by Evaluator.general itself, so a start evaluation may take these accuracies as its own
    accuracy = Evaluator(model, tokenizer, abilities=unedited).general()
    kept, info = {}, {}
    for name, task in candidates.items():
        pairs, acc = unedited[name], accuracy[name]
        # recall: every fact was selected as known, so "chance" is that of its answers' spread
        chance = chance_of(pairs)
        keep = name == "recall" or acc >= max(THRESHOLD_FACTOR * chance, chance + THRESHOLD_MARGIN)
        info[name] = {"accuracy": acc, "chance": chance, "kept": keep, "n": len(pairs)}
        if keep:
            kept[name] = task
    return kept, info


def loss_reduction(baseline: dict[str, float], none: dict[str, float], prune: dict[str, float]) -> dict[str, Any]:
    """The paper's summary figure from three ``general`` dicts (before, unrestrained, with PRUNE).

    Per ability: ``loss = baseline − final`` (accuracies) or ``log(final / baseline)`` (``perplexity``);
    ``reduction = (loss_none − loss_prune) / loss_none`` where ``loss_none > 0``.  Returns
    ``{"per_ability": {name: reduction}, "mean": average or NaN if no ability degraded}``.
    """
    per: dict[str, float] = {}
    for name, base in baseline.items():
        if name not in none or name not in prune:
            continue
        if name == "perplexity":
            l_none, l_prune = math.log(none[name] / base), math.log(prune[name] / base)
        else:
            l_none, l_prune = base - none[name], base - prune[name]
        if l_none > 0 and math.isfinite(l_none) and math.isfinite(l_prune):
            per[name] = (l_none - l_prune) / l_none
    mean = sum(per.values()) / len(per) if per else float("nan")
    return {"per_ability": per, "mean": mean}
