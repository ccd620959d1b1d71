"""Activation rules: DeadRelu and SaturatedActivation (SageMaker Debugger's built-ins).

Both count, per layer and saved step, the units that were active in fewer than
``threshold_inactivity`` percent of the batch's samples, and trigger when that share of a
layer's units exceeds ``threshold_layer`` percent. A *unit* is every element of the
per-sample output: the value of shape (batch, ...) is read as (batch, units).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..exceptions import RuleError
from . import _select as sel
from .base import BuiltinRule, Param, register
from .result import RuleResult


def _per_sample_units(x: np.ndarray) -> np.ndarray:
    """(steps, batch, ...) -> (steps, batch, units); a 0-d value per step is one sample."""
    k = x.shape[0]
    if x.ndim == 1:
        return x.reshape(k, 1, 1)
    return x.reshape(k, x.shape[1], -1)


class _UnitActivityRule(BuiltinRule):
    """Common part of DeadRelu and SaturatedActivation: inactive units per layer and step."""

    figure_label: ClassVar[str] = "inactive"
    #: how a Recorder records what the rule reads, said when the run lacks it
    record_hint: ClassVar[str] = ""

    def _validate(self) -> None:
        for p in ("threshold_inactivity", "threshold_layer"):  # percents
            v = getattr(self, p)
            if v is None or not 0 <= v <= 100:
                raise self.param_error(p, f"is a percent and must lie in [0, 100], got {v}")

    def _active_fraction(self, run: Any, name: str) -> tuple[np.ndarray, np.ndarray, str]:
        """(global steps, (steps x units) fraction of samples in which each unit is active,
        the source used)."""
        raise NotImplementedError

    def _layers(self, run: Any) -> list[str]:
        names = sel.select(run, tensor_regex=self.tensor_regex)
        if not names:
            what = f"no tensor matches tensor_regex {self.tensor_regex!r}"
            raise sel.missing(type(self).__name__, what + self.record_hint, run)
        return names

    def _evaluate(self, run: Any) -> RuleResult:
        layers = self._layers(run)
        per_layer: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        units: dict[str, int] = {}
        sources: dict[str, str] = {}
        for name in layers:
            gsteps, frac, source = self._active_fraction(run, name)
            # the limit rounded as the stored fractions are (float32 k / N): a unit active in
            # exactly threshold_inactivity percent of the samples (1 of 100) is not below it
            limit = float(np.float32(self.threshold_inactivity / 100.0))
            dead_pct = (frac < limit).mean(axis=1) * 100.0 if frac.size else np.zeros(len(gsteps))
            per_layer[name] = (gsteps, dead_pct)
            units[name] = int(frac.shape[1]) if frac.ndim == 2 else 0
            sources[name] = source
        steps, mat = sel.align(per_layer)
        with np.errstate(invalid="ignore"):
            over = np.nan_to_num(mat, nan=-1.0) > self.threshold_layer
        trig_rows = np.nonzero(over.any(axis=1))[0]
        triggers = sel.trigger_steps(self, run, steps[trig_rows])
        evidence = {
            "layers": layers,
            "steps": steps,
            f"{self.figure_label}_percent": mat,
            "units": [units[n] for n in layers],
            "source": sources,
            "threshold_inactivity": self.threshold_inactivity,
            "threshold_layer": self.threshold_layer,
        }
        word = self.figure_label
        if mat.size and not np.all(np.isnan(mat)):
            flat = int(np.nanargmax(mat))
            r, c = divmod(flat, mat.shape[1])
            worst = float(mat[r, c])
        else:
            r = c = 0
            worst = 0.0
        if len(trig_rows):
            r0 = int(trig_rows[0])
            cols = np.nonzero(over[r0])[0]
            c0 = int(cols[np.argmax(mat[r0, cols])])
            name = layers[c0]
            text = (
                f"{name}: {sel.pct(mat[r0, c0])} of {units[name]} units {word} at "
                f"{sel.step_label(run, steps[r0])}; limit {sel.pct(self.threshold_layer)} "
                f"(a unit is {word} when active in fewer than "
                f"{sel.fmt(self.threshold_inactivity)}% of the batch's samples)."
            )
            bad = [layers[j] for j in np.nonzero(over.any(axis=0))[0]]
            counts = over.sum(axis=0)
            saved = (~np.isnan(mat)).sum(axis=0)
            text += " Layers over the limit: " + ", ".join(
                f"{n} at {int(counts[layers.index(n)])} of {int(saved[layers.index(n)])} steps"
                for n in bad
            )
            text += f". Largest: {sel.pct(worst)} ({layers[c]} at {sel.step_label(run, steps[r])})."
        else:
            where = f" ({layers[c]} at {sel.step_label(run, steps[r])})" if len(steps) else ""
            text = (
                f"No layer had more than {sel.pct(self.threshold_layer)} {word} units in "
                f"{len(steps)} steps of {len(layers)} layer(s); the largest share was "
                f"{sel.pct(worst)}{where}."
            )
        return self.make_result(
            bool(len(trig_rows)),
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=worst,
            figure_name=f"largest {word} unit percent",
            limit=self.threshold_layer,
            evidence=evidence,
            steps_evaluated=len(steps),
        )


@register
class DeadRelu(_UnitActivityRule):
    """Dying ReLUs: per layer and step, the percent of units that were > 0 in fewer than
    ``threshold_inactivity`` percent of the batch's samples; triggers when it exceeds
    ``threshold_layer`` percent.

    Reads the Recorder's ``modelrules/reductions/positive_fraction/<tensor>`` when stored
    (cheaper), else the full ``relu_output`` tensors. ``tensor_regex`` selects layers by their
    base names, so a layer stored both ways counts once.
    """

    name = "dead_relu"
    figure_label = "dead"
    params: ClassVar[dict[str, Param]] = {
        "tensor_regex": Param(
            ".*relu_output", "regex_union", "ReLU outputs to check", optional=False
        ),
        "threshold_inactivity": Param(
            1.0, "float", "percent of samples under which a unit is dead"
        ),
        "threshold_layer": Param(
            50.0, "float", "percent of dead units over which a layer triggers"
        ),
    }

    def _active_fraction(self, run: Any, name: str) -> tuple[np.ndarray, np.ndarray, str]:
        red = sel.stored_reduction(run, name, "positive_fraction")
        if red is not None:
            series = run.tensor(red).series()
            frac = sel.apply_per_step(
                series, lambda x: x.reshape(x.shape[0], -1).astype(np.float64)
            )
            return series.global_steps, frac, "positive_fraction reduction"
        if not run.has_tensor(name):
            raise sel.missing(
                "DeadRelu",
                f"{name!r} is selected but neither the full tensor nor its positive_fraction "
                "reduction is stored (the default relu_output collection stores it at every "
                "saved step; without the default collections add Recorder(..., collections=["
                'CollectionConfig("relu_output", include_regex=".*relu_output", '
                'reductions=["positive_fraction"])]))',
                run,
            )
        series = run.tensor(name).series()

        def positive(x: np.ndarray) -> np.ndarray:
            u = _per_sample_units(x)
            # rounded to float32 as the Recorder stores the reduction: both sources agree
            frac = (u > 0).sum(axis=1, dtype=np.int64) / u.shape[1]
            return frac.astype(np.float32).astype(np.float64)

        frac = sel.apply_per_step(series, positive)
        return series.global_steps, frac, "full tensor"


@register
class SaturatedActivation(_UnitActivityRule):
    """Saturated tanh/sigmoid units: a unit is saturated when its input lies inside
    (min, max) in fewer than ``threshold_inactivity`` percent of the batch's samples; triggers
    when the percent of saturated units of a layer exceeds ``threshold_layer``.

    Decision: a tensor whose name contains ``sigmoid`` uses the sigmoid thresholds, one that
    contains ``tanh`` the tanh thresholds; a selected name with neither is an error (the rule
    cannot know which limits apply). Needs the full input tensors (no reduction holds the
    per-unit share inside a range). Not in the default set: the PyTorch image models this
    project targets (ResNet) have no tanh/sigmoid layers.
    """

    name = "saturated_activation"
    default_enabled = False
    figure_label = "saturated"
    record_hint = (
        " (a Recorder records the Tanh and Sigmoid inputs when asked: Recorder(..., "
        "include_regex=['.*tanh_input', '.*sigmoid_input']))"
    )
    params: ClassVar[dict[str, Param]] = {
        "tensor_regex": Param(".*tanh_input|.*sigmoid_input", "regex_union", optional=False),
        "threshold_tanh_min": Param(-9.4999, "float"),
        "threshold_tanh_max": Param(9.4999, "float"),
        "threshold_sigmoid_min": Param(-23.0, "float"),
        "threshold_sigmoid_max": Param(16.99999, "float"),
        "threshold_inactivity": Param(1.0, "float"),
        "threshold_layer": Param(50.0, "float"),
    }

    def _validate(self) -> None:
        super()._validate()
        if self.threshold_tanh_min >= self.threshold_tanh_max:
            raise self.param_error("threshold_tanh_min", "must be below threshold_tanh_max")
        if self.threshold_sigmoid_min >= self.threshold_sigmoid_max:
            raise self.param_error("threshold_sigmoid_min", "must be below threshold_sigmoid_max")

    def _limits(self, name: str) -> tuple[float, float]:
        low = name.lower()
        if "sigmoid" in low:
            return self.threshold_sigmoid_min, self.threshold_sigmoid_max
        if "tanh" in low:
            return self.threshold_tanh_min, self.threshold_tanh_max
        raise RuleError(
            f"SaturatedActivation: cannot tell whether {name!r} feeds a tanh or a sigmoid "
            "(its name contains neither); narrow tensor_regex to tanh/sigmoid inputs"
        )

    def _active_fraction(self, run: Any, name: str) -> tuple[np.ndarray, np.ndarray, str]:
        lo, hi = self._limits(name)
        if not run.has_tensor(name):
            raise sel.missing(
                "SaturatedActivation",
                f"{name!r} is selected but only reductions of it are stored; the rule needs the "
                "full input tensor",
                run,
            )
        series = run.tensor(name).series()

        def inside(x: np.ndarray) -> np.ndarray:
            u = _per_sample_units(x)
            return ((u > lo) & (u < hi)).mean(axis=1)

        return series.global_steps, sel.apply_per_step(series, inside), "full tensor"
