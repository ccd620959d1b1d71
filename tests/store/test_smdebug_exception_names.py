"""Every exception class of SageMaker Debugger (``smdebug.exceptions``) has its name in
``pytest_modelrules.exceptions``, so that migrated code's imports and except clauses work; and
``tensor.shape(step)`` raises ``ShapeUnavailableForStep`` where Debugger does."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_modelrules import exceptions, open_run
from pytest_modelrules.store import RunWriter

#: the classes of awslabs/sagemaker-debugger's smdebug/exceptions.py
SMDEBUG_EXCEPTIONS = [
    "InvalidCollectionConfiguration",
    "StepNotYetAvailable",
    "MissingCollectionFiles",
    "IndexReaderException",
    "StepUnavailable",
    "TensorUnavailableForStep",
    "ShapeUnavailableForStep",
    "TensorUnavailable",
    "InvalidWorker",
    "NoMoreProfilerData",
    "NoMoreData",
    "RuleEvaluationConditionMet",
    "InsufficientInformationForRuleInvocation",
]


@pytest.mark.parametrize("name", SMDEBUG_EXCEPTIONS)
def test_each_smdebug_exception_name_is_importable_and_an_exception(name: str) -> None:
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.ModelRulesError) and name in exceptions.__all__


def test_the_ones_taking_arguments_take_smdebugs_and_give_its_messages() -> None:
    err = exceptions.InsufficientInformationForRuleInvocation("MyRule", "no labels")
    assert str(err) == "Insufficient information to invoke rule MyRule: no labels"
    assert isinstance(err, exceptions.RuleError) and err.rule_name == "MyRule"
    assert "Collection c has not been configured" in str(
        exceptions.InvalidCollectionConfiguration("c")
    )
    assert str(exceptions.IndexReaderException("bad index")) == "bad index"
    assert exceptions.NoMoreProfilerData(12.5).timestamp == 12.5
    assert "collection files could not be loaded" in str(exceptions.MissingCollectionFiles())


def test_shape_of_a_step_the_tensor_was_not_saved_at(tmp_path) -> None:
    with RunWriter(tmp_path / "run") as w:
        for step in range(3):
            arrays = [("b", np.zeros(2, np.float32))]
            if step != 1:
                arrays.append(("a", np.zeros((2, 3), np.float32)))
            w.write_step(step, arrays)
    a = open_run(tmp_path / "run").tensor("a")
    assert a.shape(2) == (2, 3)
    with pytest.raises(exceptions.ShapeUnavailableForStep) as err:
        a.shape(1)
    assert isinstance(err.value, exceptions.TensorUnavailableForStep)  # caught either way
    assert "tensor 'a' was not saved at step 1" in str(err.value)
    assert err.value.hint and err.value.hint in str(err.value)  # the saved steps
    with pytest.raises(exceptions.StepUnavailable) as missing:
        a.shape(7)  # a step the run does not have: as value() says
    assert not isinstance(missing.value, exceptions.ShapeUnavailableForStep)
