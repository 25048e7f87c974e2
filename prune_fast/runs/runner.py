"""``SequentialEditor``: N edits one after another on one model, with PRUNE online, at the end, or not.

The editor is ROME or MEMIT (given by their hyper-parameters), or an editor object: a trained MEND, or
AlphaEdit (whose edit-key cache is run state: journaled with the trackers, so a resume continues exactly).

Protocols (one per run, ``RunConfig.protocol``):

    none     the baseline: W_n = W0 + Δ_n, never restrained
    online   restrain after every K-th edit (``restrain_every``); the next edit is computed on the
             restrained weight Ŵ_n = W0 + F(Δ_n)
    at_end   the paper's protocol: every edit computed on the unrestrained model, each edited
             weight restrained once after the last edit (Ŵ_N = W0 + F(W_N − W0))

Every update goes through :class:`prune_fast.editors.TrackerSet` (one
:class:`prune_fast.SpectralTracker` per edited weight), so F is always applied to the raw
accumulated Δ (no compounding).  Per step the runner records editor and restraint time, and per
edited weight σ*, σ_max of the live weight, σ_max of the raw Δ, how many singular values of Δ are
≥ σ* and how many were restrained, and the top singular value of this step's own update over σ*.
It scores each edit right after it is applied (``immediate``), and every ``eval_every`` edits and
at the end re-scores all edits so far and the general abilities (``evals``).

Example::

    bed = load_testbed()
    ev = Evaluator(bed.model, bed.tokenizer, abilities=...)
    runner = SequentialEditor(bed.model, bed.tokenizer, hparams=ROMEHyperParams.preset("testbed"),
                              covariance=store, config=RunConfig(protocol="online", fn="ln"),
                              evaluator=ev)
    result = runner.run(bed.world.edit_requests(200))
    result.final["after_sequence"]["efficacy"]
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..editors.base import Editor
from ..editors.registry import editor_for
from ..errors import InvalidInputError, InvalidTypeError
from ..lm.evaluation import Evaluator
from ..lm.requests import EditRequest
from ..spectral.restraint_fn import DEFAULT_FN, FnLike, resolve_fn
from ..tracker import SpectralTracker
from ..updates import FactoredUpdate, TrackerSet
from .journal import Journal
from .records import ArmResult, EvalPoint, StepRecord, arm_result
from .results import PROTOCOLS

__all__ = ["RunConfig", "SequentialEditor", "PROTOCOLS", "update_sigma_max"]

logger = logging.getLogger(__name__)

# RunConfig.tracker_dtype → SpectralTracker(state_dtype=...); None: fp32, or fp64 for fp64 weights.
TRACKER_DTYPES = {"float32": None, "float64": torch.float64}


@dataclass
class RunConfig:
    """How one arm runs.

    Attributes:
        protocol: ``none``, ``online`` or ``at_end``.
        fn, alpha: the restraint function (ignored by ``none``); a name or a callable.
        restrain_every: ``online`` only: restrain after every K-th edit step.
        eval_every: re-score all edits and the general abilities every this many edits (0: only
            at the start and the end).
        batch_size: requests per editor call (1 for ROME; MEMIT edits a batch at once).
        spectrum_every: record the per-weight spectrum every this many steps (it costs one σ_max
            solve of each edited weight, plus a top-k SVD of Δ on steps that did not restrain:
            a restraining step's own singular values are reused).
        score_immediate: score each edit right after it is applied.
        tracker_dtype: ``"float32"`` (default; float64 for float64 weights) or ``"float64"``: the
            trackers' state dtype (``SpectralTracker(state_dtype=...)``). float64 keeps runaway
            runs, whose raw Δ grows ≳ 10⁴σ*, exact at the cost of a float64 copy of each edited weight.
    """

    protocol: str = "online"
    fn: FnLike = DEFAULT_FN
    alpha: float = math.e
    restrain_every: int = 1
    eval_every: int = 50
    batch_size: int = 1
    spectrum_every: int = 1
    score_immediate: bool = True
    tracker_dtype: str = "float32"

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InvalidInputError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        resolve_fn(self.fn, self.alpha)
        for name in ("restrain_every", "batch_size", "spectrum_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise InvalidInputError(f"eval_every must be an int >= 0, got {self.eval_every!r}")
        if self.tracker_dtype not in TRACKER_DTYPES:
            raise InvalidInputError(f"tracker_dtype must be one of {tuple(TRACKER_DTYPES)}, got {self.tracker_dtype!r}")

    @property
    def fn_name(self) -> str:
        return resolve_fn(self.fn, self.alpha).describe()

    @property
    def name(self) -> str:
        """The arm's label in tables and JSON: ``none``, ``online-log1.2``, ``at_end-ln``, ..."""
        if self.protocol == "none":
            return "none"
        every = f"/{self.restrain_every}" if self.protocol == "online" and self.restrain_every != 1 else ""
        return f"{self.protocol}{every}-{self.fn_name}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fn"] = self.fn_name
        return d


def _evaluate_point(evaluator: Evaluator | None, done: Sequence[EditRequest], restrained: bool,
                    known_general: Mapping[str, float] | None = None) -> EvalPoint:
    """All edits in ``done`` re-scored and the general abilities, by ``evaluator`` (none: no scores;
    ``known_general``: see :meth:`Evaluator.general`)."""
    start = time.perf_counter()
    if evaluator is None:
        return EvalPoint(edits=len(done), edit={}, general={}, restrained=restrained)
    edit = evaluator.edit_scores(done) if done else {}
    general = evaluator.general(done, known=known_general)
    return EvalPoint(edits=len(done), edit=edit, general=general, restrained=restrained,
                     eval_s=time.perf_counter() - start)


def update_sigma_max(u: torch.Tensor, v: torch.Tensor) -> float:
    """σ_max(u vᵀ) from the factors (QR of each, SVD of the small core): no dense product."""
    if u.shape[1] == 1:
        return float(u.double().norm() * v.double().norm())
    _, ru = torch.linalg.qr(u.double())
    _, rv = torch.linalg.qr(v.double())
    return float(torch.linalg.svdvals(ru @ rv.T)[0])


class SequentialEditor:
    """Run requests one after another on ``model`` under one restraint protocol.

    Args:
        model, tokenizer: the model to edit in place, and its tokenizer.
        editor: a :class:`~prune_fast.editors.Editor` built on ``model`` (ROME, MEMIT, AlphaEdit, MEND):
            ``config.batch_size`` requests per ``compute`` (ROME: one); a stateful editor's state
            (AlphaEdit's key cache) goes into the journal with the trackers'.
        hparams, covariance: instead of ``editor``: the editor is the one whose hyper-parameters
            ``hparams`` are (:func:`~prune_fast.editors.editor_for`), on the key statistics ``covariance``
            (a ``CovarianceStore``).
        config: :class:`RunConfig`.
        evaluator: an :class:`~prune_fast.lm.evaluation.Evaluator` on the same model (none: no scores).
        journal: a :class:`prune_fast.runs.journal.Journal` for crash-safe runs (optional).
        progress: show a tqdm bar.

    Example::

        res = SequentialEditor(model, tok, hparams=hp, covariance=store,
                               config=RunConfig(protocol="at_end", fn="linear")).run(requests)
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, hparams: Any = None, covariance: Any = None,
                 editor: Editor | None = None, config: RunConfig | None = None, evaluator: Evaluator | None = None,
                 journal: Any = None, progress: bool = True) -> None:
        self.config = config or RunConfig()
        self.config.validate()
        if editor is not None:
            if hparams is not None:
                raise InvalidInputError("pass hparams and covariance (ROME, MEMIT, AlphaEdit) or editor, not both")
            if not isinstance(editor, Editor):
                raise InvalidInputError("editor must be a prune_fast.editors.Editor (ROME, MEMIT, AlphaEdit, MEND), "
                                        f"got {type(editor).__name__}")
            if editor.model is not model:
                raise InvalidInputError(f"the {type(editor).__name__} editor was built for another model object "
                                        "than the one to edit")
        else:
            try:
                editor = editor_for(model, tokenizer, hparams, covariance)
            except InvalidTypeError as e:
                raise InvalidInputError(str(e)) from None
        if editor.max_batch is not None and self.config.batch_size > editor.max_batch:
            raise InvalidInputError(f"{type(editor).__name__} edits at most {editor.max_batch} request(s) at a time; "
                                    f"batch_size={self.config.batch_size}")
        self.editor: Editor = editor
        self.hparams, self.covariance = editor.hparams, covariance
        self.model, self.tokenizer = model, tokenizer
        self.evaluator, self.journal, self.progress = evaluator, journal, progress
        cfg = self.config
        restrain_every = cfg.restrain_every if cfg.protocol == "online" else None
        self.tracker_kwargs = dict(fn=cfg.fn, alpha=cfg.alpha, restrain_every=restrain_every,
                                   state_dtype=TRACKER_DTYPES[cfg.tracker_dtype])
        self.trackers = TrackerSet(model, tracker_factory=self._new_tracker)

    # -- trackers --------------------------------------------------------------------------------
    def _new_tracker(self, weight: torch.Tensor) -> Any:
        return SpectralTracker(weight, **self.tracker_kwargs)

    def spectral_trackers(self) -> dict[str, Any]:
        """Parameter name → its :class:`SpectralTracker` (for checkpoints and reports)."""
        return dict(self.trackers.trackers)

    def adopt_trackers(self, trackers: dict[str, Any]) -> None:
        """Install restored trackers (from a checkpoint) before :meth:`run` resumes."""
        self.trackers.trackers.update(trackers)

    # -- one step --------------------------------------------------------------------------------
    def compute_updates(self, batch: Sequence[EditRequest]) -> list[FactoredUpdate]:
        """The editor's factored updates for ``batch`` on the current (live) model (AlphaEdit: its
        edit-key cache advances)."""
        return self._compute_step(batch)[0]

    def _compute_step(self, batch: Sequence[EditRequest]) -> tuple[list[FactoredUpdate], dict[str, torch.Tensor]]:
        """The updates and what the step adds to a stateful editor's state (staged with the updates)."""
        res = self.editor.compute(list(batch))
        return res.updates, res.state_update

    def apply_updates(self, updates: Sequence[FactoredUpdate], *,
                      with_sigma_max_weight: bool = False) -> tuple[float, float, dict[str, Any]]:
        """Hand ``updates`` to the trackers; returns (apply seconds, restraint seconds, and per weight
        the :class:`~prune_fast.RestrainResult` of this step, or ``None`` where it did not restrain;
        with σ_max of the live weight when ``with_sigma_max_weight``)."""
        start = time.perf_counter()
        results = self.trackers.apply_(updates, with_sigma_max_weight=with_sigma_max_weight)
        apply_s = time.perf_counter() - start
        restrain_s = sum(r.elapsed_s for r in results.values() if r is not None)
        return apply_s, restrain_s, results

    def _layer_records(self, updates: Sequence[FactoredUpdate], results: dict[str, Any],
                       with_spectrum: bool) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for upd in updates:
            tr = self.trackers.trackers[upd.param_name]
            res = results.get(upd.param_name)
            rec: dict[str, float] = {"sigma_star": tr.sigma_star,
                                     "update_ratio": update_sigma_max(upd.u, upd.v) / tr.sigma_star,
                                     "n_restrained": res.n_restrained if res is not None else 0}
            if with_spectrum and res is not None:
                # the restraint just solved for every σ(Δ) ≥ σ* (and the next one), and σ_max(W): reuse them
                smax = res.sigma_max_weight
                rec.update(sigma_max_weight=smax, ratio=smax / tr.sigma_star, n_above=res.n_restrained,
                           sigma_max_delta=res.sigma_before[0] if res.n_restrained else res.sigma_next,
                           cond=tr.cheap_cond())
            elif with_spectrum:
                sp = tr.spectrum()
                rec.update(sigma_max_weight=sp.sigma_max_weight, ratio=sp.ratio,
                           sigma_max_delta=sp.sigma_delta[0] if sp.sigma_delta else 0.0, n_above=sp.n_above,
                           cond=sp.cond_weight)
            out[upd.param_name] = rec
        return out

    # -- the run ---------------------------------------------------------------------------------
    def evaluate_start(self, known_general: Mapping[str, float] | None = None) -> EvalPoint:
        """The evaluation at 0 edits of this runner's model as it is now (unedited), for
        :meth:`run`'s ``prior_evals``: arms that start from the same model can share one.
        ``known_general``: ability accuracies already measured on this unedited model (the
        abilities' selection), taken instead of scoring them again."""
        return _evaluate_point(self.evaluator, [], restrained=False, known_general=known_general)

    def run(self, requests: Sequence[EditRequest], *, start_step: int = 0, prior_steps: Sequence[StepRecord] = (),
            prior_evals: Sequence[EvalPoint] = ()) -> ArmResult:
        """Apply ``requests`` in order (from step ``start_step`` when resuming) and return the arm's result.

        ``prior_steps``/``prior_evals`` are the records of the steps already done (from a journal).
        """
        cfg = self.config
        requests = list(requests)
        if not requests:
            raise InvalidInputError("no requests to run")
        batches = [requests[i:i + cfg.batch_size] for i in range(0, len(requests), cfg.batch_size)]
        steps, evals = list(prior_steps), list(prior_evals)
        online = cfg.protocol == "online"
        wall = time.perf_counter()
        if start_step == 0 and not evals:
            evals.append(self.evaluate_start())
            if self.journal is not None:
                self.journal.record_eval(evals[-1])
        bar = tqdm(total=len(batches), initial=start_step, desc=f"edits [{cfg.name}]", disable=not self.progress,
                   unit="step")
        done_requests = [r for b in batches[:start_step] for r in b]
        for i in range(start_step, len(batches)):
            batch = batches[i]
            t0 = time.perf_counter()
            updates, editor_state = self._compute_step(batch)
            editor_s = time.perf_counter() - t0
            if self.journal is not None:
                self.journal.stage_updates(i, updates, editor_state)
            stage_s = time.perf_counter() - t0 - editor_s
            with_spectrum = (i + 1) % cfg.spectrum_every == 0 or i + 1 == len(batches)
            apply_s, restrain_s, results = self.apply_updates(updates, with_sigma_max_weight=with_spectrum)
            done_requests += batch
            rec = StepRecord(step=i, edits=len(done_requests), case_ids=[r.case_id for r in batch],
                             editor_s=editor_s, apply_s=apply_s, restrain_s=restrain_s,
                             layers=self._layer_records(updates, results, with_spectrum), stage_s=stage_s)
            if cfg.score_immediate and self.evaluator is not None:
                t_score = time.perf_counter()
                rec.immediate = self.evaluator.edit_scores(batch)
                rec.score_s = time.perf_counter() - t_score
            rec.step_s = time.perf_counter() - t0
            steps.append(rec)
            point = None
            last = i + 1 == len(batches)
            if cfg.eval_every and not last and len(done_requests) // cfg.eval_every > \
                    (len(done_requests) - len(batch)) // cfg.eval_every:
                point = _evaluate_point(self.evaluator, done_requests, restrained=online)
                evals.append(point)
            if self.journal is not None:
                self.journal.commit_step(rec, point, self.spectral_trackers(), editor=self.editor)
            bar.update(1)
            if with_spectrum:
                ratio = max(v.get("ratio", 0.0) for v in rec.layers.values())
                bar.set_postfix(ratio=f"{ratio:.2f}")
        bar.close()

        end_restraint: dict[str, Any] = {}
        if cfg.protocol == "at_end":
            for name, res in self.trackers.restrain_().items():
                end_restraint[name] = res.to_dict()
        final_point = _evaluate_point(self.evaluator, done_requests, restrained=cfg.protocol != "none")
        evals.append(final_point)
        if self.journal is not None:
            self.journal.record_eval(final_point, final=True)
        return arm_result(name=cfg.name, config=cfg.to_dict() | {"editor": self.editor.name},
                          n_requests=len(requests), steps=steps, evals=evals,
                          trackers=self.spectral_trackers(), end_restraint=end_restraint,
                          immediate_scored=cfg.score_immediate and self.evaluator is not None,
                          wall_s=time.perf_counter() - wall)

    def branch_at_end(self, base: ArmResult, requests: Sequence[EditRequest], config: RunConfig,
                      model: torch.nn.Module, evaluator: Evaluator | None = None) -> ArmResult:
        """The ``at_end`` arm with ``config``'s F, from this finished ``none`` run, without editing again.

        Under ``at_end`` every edit is computed on the unrestrained model, exactly as under ``none``,
        so the two runs are the same until the last edit: this writes W0 + F(Δ) of each edited weight,
        from this run's trackers and ``config``'s F, into ``model`` — a copy of this runner's model,
        taken before or after the run (every edited weight is rewritten; the others are never
        edited) — and scores it with ``evaluator`` (built on ``model``) on ``requests`` (this run's).
        The steps and the intermediate evaluations are this run's (``base``); what differs is the
        restraint and the final point. A sweep over F then costs one sequence of edits, not one per F.

        Raises :class:`InvalidInputError` before anything is written when this run is not a finished
        ``none`` run, ``config`` is not ``at_end`` with otherwise the same settings, ``requests``
        are not the run's, or ``model`` is this runner's own model or lacks one of its edited weights.
        """
        mine = self.config
        if mine.protocol != "none" or config.protocol != "at_end":
            raise InvalidInputError(f"branch_at_end goes from a 'none' run to an 'at_end' arm, not from "
                                    f"{mine.protocol!r} to {config.protocol!r}")
        config.validate()
        same = ("eval_every", "batch_size", "spectrum_every", "score_immediate", "tracker_dtype")
        differ = [k for k in same if getattr(mine, k) != getattr(config, k)]
        if differ:
            raise InvalidInputError(f"branch_at_end needs the same run settings; {', '.join(differ)} differ")
        requests = list(requests)
        if base.name != mine.name or not base.evals or not base.steps or \
                [r.case_id for r in requests] != [c for s in base.steps for c in s.case_ids]:
            raise InvalidInputError("branch_at_end needs the ArmResult of this runner's finished run and its requests")
        if model is self.model:
            raise InvalidInputError("branch_at_end writes into a copy of the model, not into the run's own model")
        params = dict(model.named_parameters())
        trackers = self.spectral_trackers()
        for name, tr in trackers.items():
            if name not in params or params[name].shape != tr.weight.shape or params[name].dtype != tr.weight.dtype:
                raise InvalidInputError(f"model has no {tuple(tr.weight.shape)} {tr.weight.dtype} parameter {name!r}")
        wall = time.perf_counter()
        restored = {}
        for name, tr in trackers.items():
            state = tr.state_dict()
            state["meta"] = state["meta"] | {"fn": None if callable(config.fn) else config.fn, "alpha": config.alpha,
                                             "restrain_every": None}
            restored[name] = SpectralTracker.from_state_dict(params[name], state, fn=config.fn)
        end_restraint = {name: tr.restrain_().to_dict() for name, tr in restored.items()}
        evals = [*base.evals[:-1], _evaluate_point(evaluator, requests, restrained=True)]
        # "edits_from": the arm whose edits these are, and whose wall time includes them
        return arm_result(name=config.name, config=config.to_dict() | {"editor": self.editor.name, "edits_from": base.name},
                          n_requests=base.n_requests, steps=copy.deepcopy(base.steps), evals=evals, trackers=restored,
                          end_restraint=end_restraint, immediate_scored=bool(base.final["immediate"]),
                          wall_s=time.perf_counter() - wall)

    def run_journaled(self, requests: Sequence[EditRequest], folder: Any, header: dict[str, Any], *,
                      resume: bool = False, checkpoint_every: int = 50) -> ArmResult:
        """:meth:`run` with a crash-safe journal in ``folder`` (see :mod:`prune_fast.runs.journal`).

        ``header`` says what is run (model, editor, hyper-parameters, requests...); the arm's config
        is added to it.  With ``resume=True`` the journal must exist and match, the model must be
        the unedited one; the run continues after its last committed step.

        Example::

            runner.run_journaled(requests, "run1", {"model": path, "requests": digest})
            runner.run_journaled(requests, "run1", {"model": path, "requests": digest}, resume=True)
        """
        header = self.journal_header(header, len(requests))
        if not resume:
            self.journal = Journal.create(folder, header, checkpoint_every)
            return self.run(requests)
        self.journal, state = Journal.resume(folder, header, checkpoint_every)
        return self._resume(requests, state)

    def journal_header(self, header: dict[str, Any], n_requests: int) -> dict[str, Any]:
        """``header`` plus this runner's arm config and hyper-parameters: what a resume must match."""
        arm = self.config.to_dict() | {"editor": self.editor.name}
        if arm["tracker_dtype"] == "float32":  # journals from before the option lack it: keep them resumable
            del arm["tracker_dtype"]
        return dict(header) | {"arm": arm, "hparams": self.editor_settings(), "n_requests": n_requests}

    def editor_settings(self) -> dict[str, Any]:
        """The editor's settings (its hyper-parameters; MEND: with its checkpoint's digest)."""
        return self.editor.describe()

    def _resume(self, requests: Sequence[EditRequest], state: Any) -> ArmResult:
        self.editor.prepare()  # AlphaEdit: projectors from the unedited model's statistics, before any weight moves
        last = -1
        if state.checkpoint_step >= 0:
            last, states = self.journal.load_checkpoint()
            params = dict(self.model.named_parameters())
            self.adopt_trackers({name: SpectralTracker.from_state_dict(params[name], st, fn=self.config.fn)
                                 for name, st in states.items()})
            self.editor.load_state_dict(self.journal.load_editor_checkpoint())
        for i in range(last + 1, state.next_step):
            self.apply_updates(self.journal.load_updates(i))
            self.editor.replay(self.journal.load_editor_update(i))
        logger.info("resumed %s: checkpoint after step %d, %d staged steps re-applied, continuing at step %d",
                    self.journal.path, last, state.next_step - last - 1, state.next_step)
        return self.run(requests, start_step=state.next_step,
                        prior_steps=[StepRecord(**d) for d in state.steps],
                        prior_evals=[EvalPoint(**d) for d in state.evals])
