"""The runner's step records reuse what the restraint computed: ``TrackerSet.apply_`` returns each
tracker's ``RestrainResult`` (with σ_next, the largest σ(Δ) below σ*), the online records need no
second spectral solve of Δ, and their values equal a fresh ``spectrum()`` of the same state."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from prune_fast import SpectralTracker
from prune_fast.updates import FactoredUpdate, TrackerSet
from prune_fast.editors import ROMEHyperParams
from prune_fast.runs.runner import RunConfig, SequentialEditor
from testbed_models import fresh_testbed, shared_store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_apply_returns_each_trackers_result_and_sigma_next_is_the_top_value_below(rng):
    model = torch.nn.Sequential(torch.nn.Linear(96, 80, bias=False), torch.nn.Linear(80, 96, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=rng) / math.sqrt(p.shape[1]))
    ts = TrackerSet(model, fn="ln")
    w0 = model[0].weight.detach().double().clone()
    s_star = float(torch.linalg.svdvals(w0)[0])
    for scale, expect_restrained in ((0.1, False), (3.0, True)):   # below σ*, then above it
        u = torch.randn(80, 2, generator=rng)
        v = torch.randn(96, 2, generator=rng)
        uu = u * scale * s_star / (u.norm() * v.norm())
        res = ts.apply_([FactoredUpdate("0.weight", uu, v), FactoredUpdate("1.weight", v, uu)])
        assert set(res) == {"0.weight", "1.weight"}
        r = res["0.weight"]
        delta = ts.trackers["0.weight"].delta().double()
        sv = torch.linalg.svdvals(delta)
        assert (r.n_restrained > 0) == expect_restrained
        assert r.n_restrained == int((sv >= s_star).sum())
        below = sv[sv < s_star]
        assert abs(r.sigma_next - float(below[0])) <= 1e-5 * float(sv[0]), (r.sigma_next, float(below[0]))
    none_set = TrackerSet(model, restrain_every=None)
    assert none_set.apply_([FactoredUpdate("0.weight", u, v)]) == {"0.weight": None}


def test_online_records_match_a_fresh_spectrum_without_a_second_delta_solve(monkeypatch):
    bed = fresh_testbed()
    model = copy.deepcopy(bed.model)
    runner = SequentialEditor(model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"),
                              covariance=shared_store(), config=RunConfig(protocol="online", fn="ln", eval_every=0),
                              progress=False)
    checked, spectra = [], []
    real_records = SequentialEditor._layer_records
    real_spectrum = SpectralTracker.spectrum

    def spectrum_counted(self):
        spectra.append(1)
        return real_spectrum(self)

    def records_checked(self, updates, results, with_spectrum):
        n0 = len(spectra)
        out = real_records(self, updates, results, with_spectrum)
        assert len(spectra) == n0, "the online step record ran spectrum()"
        for name, rec in out.items():
            sp = real_spectrum(self.trackers.trackers[name])             # the old, independent path
            assert rec["n_above"] == sp.n_above == rec["n_restrained"]
            assert math.isclose(rec["sigma_max_delta"], sp.sigma_delta[0], rel_tol=1e-5)
            assert math.isclose(rec["sigma_max_weight"], sp.sigma_max_weight, rel_tol=1e-5)
            assert rec["cond"] == pytest.approx(sp.cond_weight, rel=1e-9)
            checked.append(rec["n_above"])
        return out

    monkeypatch.setattr(SequentialEditor, "_layer_records", records_checked)
    monkeypatch.setattr(SpectralTracker, "spectrum", spectrum_counted)
    runner.run(bed.world.edit_requests(8, seed=3))
    assert len(checked) == 8 and max(checked) >= 1, checked     # the restraint acted on some steps
