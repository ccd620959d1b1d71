"""Tensors stored only as reductions open as SageMaker Debugger opens them: steps from their
reductions, ``reduction_value`` reads the stored one, ``value`` explains what is stored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_modelrules.exceptions import (
    StepUnavailable,
    TensorUnavailable,
    TensorUnavailableForStep,
)
from pytest_modelrules.rules import _select as sel
from pytest_modelrules.store import open_run
from pytest_modelrules.store.names import reduction_tensor_name as red
from pytest_modelrules.store.run import ReducedTensor
from pytest_modelrules.store.smdebug_writer import SMDebugWriter
from pytest_modelrules.store.writer import RunWriter

GRAD = "gradient/fc.weight"


def _write(writer, steps: range) -> None:
    for g in steps:
        writer.write("fc.weight", np.full((2, 2), g, np.float32), g)
        writer.write(red(GRAD, "l2"), np.float64(10 + g), g)
        writer.write(red(GRAD, "mean"), np.float64(20 + g), g)
        writer.write(red(GRAD, "std"), np.float64(30 + g), g)
        if g == 3:  # a reduction saved at one more step than the others have
            writer.write(red(GRAD, "max", abs=True), np.float64(99), g)
    writer.write("fc.weight", np.zeros((2, 2), np.float32), 4)  # step 4: no gradient at all


@pytest.fixture(params=["native", "smdebug"])
def run(request, tmp_path: Path):
    path = tmp_path / request.param
    writer_cls = RunWriter if request.param == "native" else SMDebugWriter
    with writer_cls(path) as w:
        _write(w, range(4))
    return open_run(path)


def test_a_reduction_only_tensor_opens_with_the_steps_of_its_reductions(run) -> None:
    assert not run.has_tensor(GRAD)  # "stored under this name": what the rules rely on
    assert run.has_tensor(GRAD, reductions_only=True)
    assert not run.has_tensor("gradient/other", reductions_only=True)
    assert run.has_tensor("fc.weight", reductions_only=True)
    assert run.reduced_tensor_names() == [GRAD]
    t = run.tensor(GRAD)
    assert isinstance(t, ReducedTensor)
    assert t.reductions == ["abs_max", "l2", "mean", "std"]
    assert t.steps() == [0, 1, 2, 3]
    assert t.steps(mode="TRAIN") == [0, 1, 2, 3]
    assert t.workers(2) == ["worker_0"]
    assert run.tensor(GRAD) is t  # cached until the run refreshes


def test_reduction_value_reads_the_stored_reduction(run) -> None:
    t = run.tensor(GRAD)
    assert float(t.reduction_value(2, "l2")) == 12.0
    assert float(t.reduction_value(1, "std", mode="TRAIN")) == 31.0
    assert float(t.reduction_value(3, "max", abs=True)) == 99.0
    # the stored name's spelling, which the messages list, is accepted too
    assert float(t.reduction_value(3, "abs_max")) == 99.0
    assert t.has_reduction("abs_max") and not t.has_reduction("abs_min")
    assert t.has_reduction("abs_max") and not t.has_reduction("abs_min")
    with pytest.raises(ValueError, match="unknown reduction 'abs_nonsense'"):
        t.reduction_value(3, "abs_nonsense")
    assert t.has_reduction("mean") and not t.has_reduction("min")
    with pytest.raises(TensorUnavailableForStep, match="its min reduction is not stored"):
        t.reduction_value(1, "min")
    with pytest.raises(TensorUnavailableForStep):
        t.reduction_value(1, "max", abs=True)  # stored at step 3 only


def test_value_names_the_stored_reductions(run) -> None:
    t = run.tensor(GRAD)
    hint = "only reductions are stored for it: abs_max, l2, mean, std; use reduction_value"
    with pytest.raises(TensorUnavailableForStep, match=hint) as info:
        t.value(1)
    assert "reduction_value(step, 'l2')" in str(info.value)
    for read in (t.values, t.series):
        with pytest.raises(TensorUnavailableForStep, match="only reductions are stored"):
            read()
    with pytest.raises(StepUnavailable):
        t.value(50)
    with pytest.raises(TensorUnavailable):
        run.tensor("gradient/nothing")


def test_selection_and_names_are_unchanged(run) -> None:
    names = run.tensor_names()
    assert GRAD not in names and red(GRAD, "l2") in names
    assert sel.select(run, tensor_regex="gradient") == [GRAD]
    assert sel.full_names(run) == ["fc.weight"]


def test_a_full_value_arriving_later_replaces_the_reduced_view(tmp_path: Path) -> None:
    path = tmp_path / "run"
    w = RunWriter(path)
    w.write(red(GRAD, "l2"), np.float64(1), 0)
    w.end_step()
    run = open_run(path)
    assert isinstance(run.tensor(GRAD), ReducedTensor)
    w.write(GRAD, np.ones(3, np.float32), 1)
    w.close()
    run.refresh()
    t = run.tensor(GRAD)
    assert not isinstance(t, ReducedTensor) and run.has_tensor(GRAD)
    assert t.steps() == [1] and t.value(1).tolist() == [1, 1, 1]


def test_an_smdebug_style_custom_rule_reads_a_gradient_norm(run) -> None:
    """Notebook code written for smdebug: ``tensor(base).reduction_value(step, "l2")``."""
    from pytest_modelrules.rules.custom import Rule, invoke_rule

    class GradientNormAbove(Rule):
        def invoke_at_step(self, step: int) -> bool:
            return float(self.base_trial.tensor(GRAD).reduction_value(step, "l2")) > 11.5

    result = invoke_rule(GradientNormAbove(run))
    assert [t.step for t in result.triggers] == [2, 3]
    assert result.evidence["skipped_steps"] == [4]  # step 4 saved no reduction of GRAD


def test_a_collection_regex_places_a_reduction_with_the_tensor_it_reduces(tmp_path: Path) -> None:
    """``tensor_names(collection=...)`` matches a collection's include_regex against the
    tensor a stored reduction was computed from: the gradient norms
    (``smdebug/reductions/l2/gradient/fc.weight``) are not in ``weights``, whose regex
    ``^(?!gradient).*weight`` their stored names would otherwise match."""
    path = tmp_path / "run"
    with RunWriter(path) as w:
        _write(w, range(2))
        w.write(red("fc.weight", "l2"), np.float64(1), 5)
        w.set_collections({
            "weights": {"include_regex": [r"^(?!gradient).*weight"]},
            "gradients": {"include_regex": [r"^gradient/"]},
        })  # fmt: skip
    run = open_run(path)
    assert run.tensor_names(collection="weights") == ["fc.weight", red("fc.weight", "l2")]
    gradients = [red(GRAD, r) for r in ("l2", "mean", "std")]
    assert run.tensor_names(collection="gradients") == sorted(gradients)
