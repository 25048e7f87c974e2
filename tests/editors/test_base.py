"""editors/base.py and registry.py: one protocol for every editor, one table from names and hyper-parameters."""
from __future__ import annotations

import pytest
import torch

from prune_fast.editors import (EDITORS, MEMIT, MEND, ROME, AlphaEdit, AlphaEditHyperParams, Editor, EditResult,
                                MEMITHyperParams, ROMEHyperParams, editor_for)
from prune_fast.errors import EditorCheckpointError, InvalidInputError, InvalidTypeError
from prune_fast.runs.runner import RunConfig, SequentialEditor


def test_every_editor_is_one_class_of_the_protocol():
    assert set(EDITORS) == {"rome", "memit", "alphaedit", "mend"}
    for name, cls in EDITORS.items():
        assert issubclass(cls, Editor) and cls.name == name
        assert cls.compute is not Editor.compute, f"{name} does not implement compute"
    assert ROME.max_batch == 1 and MEMIT.max_batch is None and AlphaEdit.max_batch is None
    assert MEND.hparams_class is None  # built from a trained checkpoint


def test_results_share_the_base():
    from prune_fast.editors import AlphaEditResult, MEMITResult, MENDResult, ROMEResult

    for cls in (ROMEResult, MEMITResult, AlphaEditResult, MENDResult):
        assert issubclass(cls, EditResult)
    assert EditResult(updates=[]).state_update == {}


def test_editor_for_picks_by_exact_hparams_class():
    model = torch.nn.Linear(2, 2)
    for hp_cls, cls in ((ROMEHyperParams, ROME), (MEMITHyperParams, MEMIT)):
        hp = hp_cls.preset("testbed")
        ed = editor_for(model, None, hp, None)
        assert type(ed) is cls and ed.hparams is hp and ed.model is model
    with pytest.raises(InvalidTypeError, match="hparams must be one of"):
        editor_for(model, None, object(), None)
    with pytest.raises(InvalidTypeError, match="MEMITHyperParams"):
        MEMIT(model, None, ROMEHyperParams.preset("testbed"), None)
    assert AlphaEditHyperParams in {c.hparams_class for c in EDITORS.values()}


def test_stateless_editors_keep_no_state():
    ed = ROME(torch.nn.Linear(2, 2), None, ROMEHyperParams.preset("testbed"), None)
    assert ed.state_dict() == {}
    ed.load_state_dict({})
    ed.replay({})
    with pytest.raises(EditorCheckpointError, match="keeps no state"):
        ed.load_state_dict({"cache.0": torch.zeros(1)})
    assert ed.describe() == ed.hparams.to_dict()


def test_runner_takes_any_editor_and_refuses_the_rest():
    model = torch.nn.Linear(2, 2)
    hp = ROMEHyperParams.preset("testbed")
    runner = SequentialEditor(model, None, editor=ROME(model, None, hp, None), progress=False)
    assert runner.editor.name == "rome" and runner.hparams is hp
    with pytest.raises(InvalidInputError, match="Editor"):
        SequentialEditor(model, None, editor=object(), progress=False)
    with pytest.raises(InvalidInputError, match="at most 1 request"):
        SequentialEditor(model, None, hparams=hp, covariance=None, config=RunConfig(batch_size=2), progress=False)
    with pytest.raises(InvalidInputError, match="another model object"):
        SequentialEditor(torch.nn.Linear(2, 2), None, editor=ROME(model, None, hp, None), progress=False)
