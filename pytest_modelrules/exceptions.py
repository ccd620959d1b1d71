"""Every error the package raises on purpose; each message says what went wrong and where.

The names that SageMaker Debugger users catch (`TensorUnavailableForStep`,
`StepUnavailable`, `RuleEvaluationConditionMet`, ...) exist here under the same names.
"""

from __future__ import annotations


class ModelRulesError(Exception):
    """Base class of every error raised on purpose by pytest-modelrules."""


# -- reading runs -----------------------------------------------------------------------------


class RunError(ModelRulesError):
    """A run could not be opened or read."""


class RunNotFoundError(RunError, FileNotFoundError):
    """The path holds no run in any known layout."""


class CorruptRunError(RunError, ValueError):
    """A file of the run is damaged or hostile; the message names the file and the offset."""

    def __init__(self, path: str, problem: str, offset: int | None = None) -> None:
        where = f"{path}" if offset is None else f"{path} at byte {offset}"
        super().__init__(f"corrupt run file {where}: {problem}")
        self.path = path
        self.problem = problem
        self.offset = offset


class RunNotEndedWarning(UserWarning):
    """A run under test has not ended (its training still writes it, or was killed): the
    plugin and ``modelrules check`` judge the steps written so far and say so. Make it an
    error with ``-W error::pytest_modelrules.RunNotEndedWarning``."""


class _LookupError(RunError, KeyError):
    """A name or step the run does not have: a KeyError (as SageMaker Debugger's are caught)
    whose message is ``what`` and, after "; ", a ``hint``, shown unquoted."""

    def __init__(self, what: str, hint: str = "") -> None:
        super().__init__(f"{what}; {hint}" if hint else what)
        self.hint = hint

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _at(step: int, mode: object) -> str:
    return f"step {step}" if mode is None else f"{mode} step {step}"


class TensorUnavailable(_LookupError):
    """The run holds no tensor of that name."""

    def __init__(self, name: str, hint: str = "") -> None:
        super().__init__(f"the run holds no tensor named {name!r}", hint)
        self.tensor_name = name


class StepUnavailable(_LookupError):
    """The run has no such (completed) step."""

    def __init__(self, step: int, mode: object = None, hint: str = "") -> None:
        super().__init__(f"the run has no {_at(step, mode)}", hint)
        self.step = step
        self.mode = mode


class TensorUnavailableForStep(_LookupError):
    """The tensor exists but was not saved at that step."""

    def __init__(self, name: str, step: int, mode: object = None, hint: str = "") -> None:
        super().__init__(f"tensor {name!r} was not saved at {_at(step, mode)}", hint)
        self.tensor_name = name
        self.step = step
        self.mode = mode


class ShapeUnavailableForStep(TensorUnavailableForStep):
    """``tensor.shape(step)`` where the tensor was not saved at that step (SageMaker
    Debugger's name; a TensorUnavailableForStep, so code catching either works)."""


class StepNotYetAvailable(StepUnavailable):
    """The step lies past the last one saved and the run has not ended: it may still come
    (SageMaker Debugger's name; a StepUnavailable, so code catching either works)."""


class NoMoreData(StepUnavailable):
    """The step lies past the last one saved and the run has ended: no more steps will come
    (SageMaker Debugger's name, raised where it raises it; a StepUnavailable too)."""


class InvalidWorker(_LookupError):
    """The run has no worker of that name; the message lists its workers."""

    def __init__(self, worker: str, hint: str = "") -> None:
        super().__init__(f"the run has no worker {worker!r}", hint)
        self.worker = worker


# -- rules ------------------------------------------------------------------------------------


class RuleError(ModelRulesError):
    """A rule was misconfigured or cannot run on this run."""


class RuleParameterError(RuleError, ValueError):
    """A rule parameter has the wrong type or value; the message names rule and parameter."""


class MissingTensorError(RuleError):
    """A rule needs a tensor (or a reduction of it) that the run does not hold."""


class ClassAxisError(RuleError, ValueError):
    """Logits and labels whose shapes do not fit PyTorch's class axis (axis 1 of (N, C, ...)
    against labels (N, ...)), or logits with no class axis (one score per sample); the message
    names the tensors, the step and the shapes."""


class RuleEvaluationConditionMet(ModelRulesError):
    """Raised by `invoke_rule(..., raise_eval_cond=True)` at the first step where a rule triggers.

    Same name and message as SageMaker Debugger's exception, so notebooks that catch it work.
    """

    def __init__(self, rule_name: str, step: int, end_of_rule: bool = False, result=None) -> None:
        super().__init__(
            f"Evaluation of the rule {rule_name} at step {step} resulted in the condition being met"
        )
        self.rule_name = rule_name
        self.step = step
        self.end_of_rule = end_of_rule
        self.result = result


class InsufficientInformationForRuleInvocation(RuleError):
    """A custom rule's own way to say it lacks what it needs (SageMaker Debugger's class and
    message; not caught by ``invoke_rule``, as there)."""

    def __init__(self, rule_name: str, message: str) -> None:
        super().__init__(f"Insufficient information to invoke rule {rule_name}: {message}")
        self.rule_name = rule_name
        self.message = message


# -- SageMaker Debugger's other names, so that its imports and except clauses keep working. Our
# readers and rules never raise these: no collection files to miss (collections are optional),
# no index reader of that name, no profiler data, collections checked as they are made.


class MissingCollectionFiles(RunError):
    """SageMaker Debugger's: the collection files of an ended job could not be loaded."""

    def __init__(self) -> None:
        super().__init__("Training job has ended. All the collection files could not be loaded")


class IndexReaderException(RunError):
    """SageMaker Debugger's: its index reader failed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NoMoreProfilerData(ModelRulesError):
    """SageMaker Debugger's: a profiler rule reached the end of training."""

    def __init__(self, timestamp: float) -> None:
        super().__init__(f"Looking for timestamp {timestamp} and reached end of training.")
        self.timestamp = timestamp


class InvalidCollectionConfiguration(ModelRulesError, ValueError):
    """SageMaker Debugger's: a collection with neither tensor names nor regexes."""

    def __init__(self, c_name: str) -> None:
        super().__init__(
            f"Collection {c_name} has not been configured. Please fill in tensor_name or "
            "include_regex"
        )
        self.c_name = c_name


# -- capture ----------------------------------------------------------------------------------


class RecorderError(ModelRulesError):
    """The Recorder was configured wrongly (raised at construction, never during a step)."""


__all__ = [
    "ClassAxisError",
    "CorruptRunError",
    "IndexReaderException",
    "InsufficientInformationForRuleInvocation",
    "InvalidCollectionConfiguration",
    "InvalidWorker",
    "MissingCollectionFiles",
    "MissingTensorError",
    "ModelRulesError",
    "NoMoreData",
    "NoMoreProfilerData",
    "RecorderError",
    "RuleError",
    "RuleEvaluationConditionMet",
    "RuleParameterError",
    "RunError",
    "RunNotEndedWarning",
    "RunNotFoundError",
    "ShapeUnavailableForStep",
    "StepNotYetAvailable",
    "StepUnavailable",
    "TensorUnavailable",
    "TensorUnavailableForStep",
]
