"""TransferLearning: frozen parameters get no update, the new head does (this project's rule,
from the seed's story of fine-tuning ResNet-18 on GTSRB)."""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np

from . import _select as sel
from .base import BuiltinRule, Param, register
from .result import RuleResult

_PARAM_RE = re.compile(r"(^|\.)(weight|bias)$")


def parameter_names(run: Any) -> list[str]:
    """Base names of the model's parameters the run holds something of: the ``weights`` and
    ``biases`` collections, names ending in ``weight``/``bias``, and the parameters of the
    ``gradient/<param>`` tensors."""
    names = set(sel.base_names(run))
    params = set(sel.select(run, collection_names=["weights", "biases"]))
    params.update(n for n in names if _PARAM_RE.search(n))
    params.update(n[len(sel.GRADIENT_PREFIX) :] for n in names if n.startswith(sel.GRADIENT_PREFIX))
    return sorted(p for p in params if p in names and not p.startswith(sel.GRADIENT_PREFIX))


def _changes(run: Any, name: str, chunk_elems: int = 1 << 24):
    """(global steps, max |w_s - w_first| per step, relative change norm(w_last - w_first) /
    norm(w_first), source); from the full tensor, else from the stored l2 norm."""
    if run.has_tensor(name):
        s = run.tensor(name).series()
        if not s.arrays:
            return None
        if not s.uniform:
            shapes = sorted({a.shape for a in s.arrays})
            raise sel.missing(
                "TransferLearning", f"{name!r} changes shape across steps {shapes}", run
            )
        flat = s.stack().reshape(len(s), -1)
        first = flat[0].astype(np.float64)
        per_chunk = max(1, chunk_elems // max(flat.shape[1], 1))
        max_abs = np.empty(len(s))
        for a in range(0, len(s), per_chunk):
            block = flat[a : a + per_chunk].astype(np.float64) - first
            max_abs[a : a + per_chunk] = np.abs(block).max(axis=1) if block.shape[1] else 0.0
        last = np.linalg.norm(flat[-1].astype(np.float64) - first)
        rel = float(last / (np.linalg.norm(first) + 1e-12))
        return s.global_steps, max_abs, rel, "full tensor"
    red = sel.stored_reduction(run, name, "l2")
    if red is None:
        return None
    s = run.tensor(red).series()
    if not s.arrays:
        return None
    norms = sel.apply_per_step(s, lambda x: x.reshape(x.shape[0]).astype(np.float64))
    change = np.abs(norms - norms[0])
    rel = float(change[-1] / (abs(norms[0]) + 1e-12))
    return s.global_steps, change, rel, "l2 reduction (approximate)"


@register
class TransferLearning(BuiltinRule):
    """Fine-tuning does what it should: frozen parameters get no update, the new head does.

    Frozen parameters are those matching ``frozen_regex``; without it, the parameters whose
    weights are recorded but whose gradient (``gradient/<param>``) is not, when the run records
    gradients of some parameters (a run without any gradient tensor has no frozen set then).
    The head is ``head_regex`` (``fc\\.``: ResNet's classifier). Triggers at the first step at
    which a frozen parameter differs from its first saved value by more than ``frozen_atol``,
    and at the head's last step when a head parameter's relative change first -> last,
    norm(w_last - w_first) / norm(w_first), is not above ``min_head_update``.

    Decisions: full weights are compared exactly; a parameter stored only as its l2 norm
    (``smdebug/reductions/l2/<param>``) is judged from the norm (a changed norm proves an
    update, an unchanged one is taken as none). A head parameter saved at one step cannot be
    judged and is listed. Not in the default set: it only makes sense for fine-tuning runs.
    """

    name = "transfer_learning"
    default_enabled = False
    params: ClassVar[dict[str, Param]] = {
        "frozen_regex": Param(None, "regex_list", "parameters that must not change"),
        "head_regex": Param(r"fc\.", "regex_list", "the new head's parameters", optional=False),
        "frozen_atol": Param(0.0, "float", "largest change allowed to a frozen parameter"),
        "min_head_update": Param(0.0, "float", "relative change the head must exceed"),
    }

    def _validate(self) -> None:
        if self.frozen_atol < 0:
            raise self.param_error("frozen_atol", "must not be negative")

    def _evaluate(self, run: Any) -> RuleResult:
        params = parameter_names(run)
        head = sel.select(run, tensor_regex=self.head_regex, names=params)
        if not head:
            raise sel.missing(
                "TransferLearning", f"no parameter matches head_regex {self.head_regex!r}", run
            )
        grads = {
            n[len(sel.GRADIENT_PREFIX) :]
            for n in sel.base_names(run)
            if n.startswith(sel.GRADIENT_PREFIX)
        }
        if self.frozen_regex:
            frozen = [
                p
                for p in sel.select(run, tensor_regex=self.frozen_regex, names=params)
                if p not in head
            ]
            if not frozen:
                raise sel.missing(
                    "TransferLearning",
                    "no parameter (other than the head) matches frozen_regex "
                    f"{self.frozen_regex!r}",
                    run,
                )
            how = f"matching frozen_regex {self.frozen_regex!r}"
        elif grads:
            frozen = [p for p in params if p not in grads and p not in head]
            how = "recorded without a gradient"
        else:
            frozen = []
            how = ""
        changed: list[tuple[str, int, float]] = []
        frozen_max: dict[str, float] = {}
        frozen_src: dict[str, str] = {}
        unjudged: list[str] = []
        for p in frozen:
            got = _changes(run, p)
            if got is None:
                unjudged.append(p)
                continue
            gsteps, max_abs, _rel, src = got
            frozen_max[p] = float(max_abs.max())
            frozen_src[p] = src
            over = max_abs > self.frozen_atol
            if over.any():
                i = int(np.argmax(over))
                changed.append((p, int(gsteps[i]), float(max_abs[i])))
        still: list[tuple[str, int, float]] = []
        head_update: dict[str, float] = {}
        for p in head:
            got = _changes(run, p)
            if got is None or len(got[0]) < 2:
                unjudged.append(p)
                continue
            gsteps, _max_abs, rel, _src = got
            head_update[p] = rel
            if not rel > self.min_head_update:
                still.append((p, int(gsteps[-1]), rel))
        if not frozen_max and not head_update:
            raise sel.missing(
                "TransferLearning",
                f"no parameter has two saved values to compare ({', '.join((frozen + head)[:5])})",
                run,
            )
        trig = [g for _p, g, _v in changed] + [g for _p, g, _v in still]
        triggers = sel.trigger_steps(self, run, trig)
        parts = []
        if changed:
            changed.sort(key=lambda t: t[1])
            p, g, v = changed[0]
            parts.append(
                f"frozen parameter {p} changed by up to {sel.fmt(v)} at {sel.step_label(run, g)} "
                f"(allowed {sel.fmt(self.frozen_atol)}); {len(changed)} of {len(frozen_max)} "
                f"frozen parameter(s) changed: {', '.join(c[0] for c in changed[:8])}"
            )
        if still:
            listed = ", ".join(f"{p} (relative change {sel.fmt(v)})" for p, _g, v in still[:8])
            parts.append(
                f"head parameter(s) {listed} "
                f"did not change (must exceed {sel.fmt(self.min_head_update)})"
            )
        if parts:
            text = "Transfer learning check failed: " + "; ".join(parts) + "."
        else:
            fz = (
                f"{len(frozen_max)} frozen parameter(s) ({how}) kept their values"
                if frozen_max
                else "no frozen parameters identified (give frozen_regex, or record gradients)"
            )
            text = (
                f"{fz}; the head ({', '.join(head_update)}) changed (relative change "
                f"{', '.join(sel.fmt(v) for v in head_update.values())})."
            )
        if unjudged:
            text += f" Not judged (fewer than two saved values): {', '.join(unjudged[:5])}."
        return self.make_result(
            bool(trig),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=float(len(changed) + len(still)),
            figure_name="parameters that broke the transfer-learning contract",
            limit=0.0,
            evidence={
                "frozen": list(frozen_max),
                "frozen_max_change": frozen_max,
                "frozen_source": frozen_src,
                "frozen_changed": [c[0] for c in changed],
                "head": list(head_update),
                "head_relative_update": head_update,
                "head_unchanged": [s[0] for s in still],
                "unjudged": unjudged,
                "frozen_rule": how or "none",
            },
            steps_evaluated=len(run.steps()),
        )
