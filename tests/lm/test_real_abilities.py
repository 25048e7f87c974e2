"""The real model's ability definitions that need no model: the summary figure, chance, task texts."""
from __future__ import annotations

import math

import pytest
import torch

from prune_fast.lm.real_abilities import (FEW_SHOT_TASKS, chance_of, covariance_corpus, few_shot_pairs, heldout_text,
                                          loss_reduction)


def test_loss_reduction_against_hand_computed_values(rng):
    base = {"a": 0.9, "b": 0.8, "c": 0.5, "perplexity": 30.0}
    none = {"a": 0.5, "b": 0.8, "c": 0.6, "perplexity": 45.0}        # b not degraded, c improved: left out
    prune = {"a": 0.8, "b": 0.7, "c": 0.4, "perplexity": 33.0}
    out = loss_reduction(base, none, prune)
    want_a = ((0.9 - 0.5) - (0.9 - 0.8)) / (0.9 - 0.5)
    want_ppl = (math.log(45 / 30) - math.log(33 / 30)) / math.log(45 / 30)
    assert set(out["per_ability"]) == {"a", "perplexity"}
    assert out["per_ability"]["a"] == pytest.approx(want_a, rel=1e-12)
    assert out["per_ability"]["perplexity"] == pytest.approx(want_ppl, rel=1e-12)
    assert out["mean"] == pytest.approx((want_a + want_ppl) / 2, rel=1e-12)
    # random accuracies: the formula, ability by ability, in float64
    vals = torch.rand((3, 20), generator=rng, dtype=torch.float64).tolist()
    b, n, p = ({f"t{i}": v for i, v in enumerate(row)} for row in vals)
    got = loss_reduction(b, n, p)["per_ability"]
    for i in range(20):
        k = f"t{i}"
        if vals[0][i] - vals[1][i] > 0:
            assert got[k] == pytest.approx(((vals[0][i] - vals[1][i]) - (vals[0][i] - vals[2][i]))
                                           / (vals[0][i] - vals[1][i]), rel=1e-12)
        else:
            assert k not in got
    assert math.isnan(loss_reduction({"a": 0.5}, {"a": 0.5}, {"a": 0.1})["mean"])   # nothing degraded


def test_few_shot_tasks_are_well_formed():
    for name, (shots, items) in FEW_SHOT_TASKS.items():
        assert len(shots) == 3 and len(items) >= 20, name
        assert not {q for q, _ in shots} & {q for q, _ in items}, f"{name}: an example is also asked"
        pairs = few_shot_pairs(name)
        assert all(p.count("\n") == 3 and p.endswith(":") for p, _ in pairs)
        assert chance_of(pairs) == pytest.approx(1 / len({a for _, a in items}))


def test_shipped_texts():
    held = heldout_text()
    assert len(held) == 30 and sum(len(t.split()) for t in held) > 1000
    corpus = covariance_corpus()
    assert len(corpus) > 500 and not set(held) & set(corpus)
    assert all(">>>" not in t and len(t.split()) >= 12 for t in corpus)
