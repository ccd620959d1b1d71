"""SageMaker Debugger's custom-rule API: subclass :class:`Rule`, implement
``invoke_at_step(step) -> bool``, run it with :func:`invoke_rule`.

Notebook code written for smdebug runs unchanged once its imports point here::

    from pytest_modelrules import Rule, invoke_rule, RuleEvaluationConditionMet, create_trial

Built-in rules run step by step too: ``invoke_rule(LossNotDecreasing(), trial=run)`` (or
``as_custom_rule(rule, run)``; both also take a registered name, ``as_custom_rule("dead_relu",
run, threshold_layer=60)``). A built-in rule with its own incremental path (LossNotDecreasing,
every parameter honoured, ``compare="passes"`` included) uses it; the others are evaluated over
the run once and answer each step from their trigger steps. Either way walking every step of
a run gives the triggers of ``evaluate()`` on it; each :func:`invoke_rule` walk starts with
fresh per-step state, and a step the run does not hold yet (a run still being written) makes
the run refresh first.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from ..exceptions import RuleEvaluationConditionMet, StepUnavailable, TensorUnavailableForStep
from .base import BuiltinRule
from .registry import make_rule
from .result import RuleResult, TriggerStep

_LOG = logging.getLogger("pytest_modelrules.rules")


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class RequiredTensors:
    """smdebug's ``self.req_tensors``: what a rule's ``set_required_tensors(step)`` declares it
    reads. :func:`invoke_rule` clears it, calls ``set_required_tensors(step)``, then
    :meth:`fetch` reads every declared (tensor, step) before ``invoke_at_step(step)``, so a step
    where one was not saved is skipped (TensorUnavailableForStep), as in SageMaker Debugger."""

    def __init__(self, base_trial: Any, other_trials: list[Any] | None = None) -> None:
        self.base_trial = base_trial
        self._per_trial: dict[int, tuple[Any, dict[str, list[int]]]] = {
            id(t): (t, {}) for t in [base_trial, *(other_trials or [])]
        }

    def _steps_of(self, trial: Any) -> dict[str, list[int]]:
        trial = self.base_trial if trial is None else trial
        if id(trial) not in self._per_trial:
            self._per_trial[id(trial)] = (trial, {})
        return self._per_trial[id(trial)][1]

    def add(
        self, name: str, steps: list[int], trial: Any = None, should_match_regex: bool = False
    ) -> None:
        """Declare that the rule reads ``name`` (a regex with ``should_match_regex``) at
        ``steps`` (global steps); a name the run does not hold is TensorUnavailable."""
        run = self.base_trial if trial is None else trial
        names = run.tensor_names(regex=[name]) if should_match_regex else [name]
        if not should_match_regex:
            run.tensor(name)  # TensorUnavailable (with close names) when absent
        table = self._steps_of(run)
        for n in names:
            table.setdefault(n, []).extend(int(s) for s in steps)

    def get_tensor_steps(self, name: str, trial: Any = None) -> list[int]:
        return self._steps_of(trial)[name]

    def get_names(self, trial: Any = None) -> list[str]:
        return list(self._steps_of(trial))

    def get(self, trial: Any = None) -> list[Any]:
        """The declared tensors (Tensor objects) of a trial (default: the base trial)."""
        run = self.base_trial if trial is None else trial
        return [run.tensor(n) for n in self._steps_of(run)]

    def clear(self) -> None:
        for _trial, table in self._per_trial.values():
            table.clear()

    def fetch(self) -> None:
        """Read every declared tensor at its steps: TensorUnavailableForStep or
        StepUnavailable when one is not there (the step is then skipped)."""
        for trial, table in self._per_trial.values():
            for name, steps in table.items():
                tensor = trial.tensor(name)
                for step in steps:
                    tensor.value(step)


class Rule:
    """Base of a custom rule, as smdebug's ``smdebug.rules.Rule``.

    ``self.base_trial`` is the run (a path is opened), ``self.other_trials`` further runs to
    compare with (``self.trials`` all of them), ``self.logger`` a logger named after the rule,
    ``self.req_tensors`` smdebug's required tensors. Subclasses implement
    :meth:`invoke_at_step`, returning True where their condition holds, and may implement
    ``set_required_tensors(step)``.

    The constructor takes smdebug 1.0's ``(base_trial, action_str, other_trials=None)`` as
    well as ``(base_trial, other_trials)``: a second argument that is not a string is taken as
    the other trials. ``action_str`` (SageMaker's rule actions: stop the training job, send an
    e-mail) is kept as ``self.action_str`` and does nothing here; stop training with
    :class:`~pytest_modelrules.rules.monitor.RuleMonitor`.
    """

    def __init__(
        self, base_trial: Any, action_str: Any = "", other_trials: list[Any] | None = None
    ) -> None:
        from ..store.run import open_run

        if other_trials is None and action_str is not None and not isinstance(action_str, str):
            other_trials, action_str = action_str, ""
        self.base_trial = open_run(base_trial)
        self.other_trials = [open_run(t) for t in (other_trials or [])]
        self.trials = [self.base_trial, *self.other_trials]
        self.action_str = action_str or ""
        self.rule_name = type(self).__name__
        self.logger = logging.getLogger(f"pytest_modelrules.rules.{self.rule_name}")
        self.req_tensors = RequiredTensors(self.base_trial, self.other_trials)

    def set_required_tensors(self, step: int) -> None:
        """smdebug's hook: declare with ``self.req_tensors.add(name, steps=[step])`` what
        :meth:`invoke_at_step` reads at ``step``; a step missing one is skipped."""

    def invoke_at_step(self, step: int) -> bool:
        """True iff the rule's condition holds at global ``step``."""
        raise NotImplementedError(f"{type(self).__name__} must implement invoke_at_step(step)")

    def _invoke_at_step(self, step: int) -> bool:
        """The required tensors declared for ``step`` read, then :meth:`invoke_at_step`."""
        req = getattr(self, "req_tensors", None)
        if req is not None:
            req.clear()
            self.set_required_tensors(step)
            req.fetch()
        return bool(self.invoke_at_step(step))

    def invoke(self, step: int) -> None:
        """smdebug's entry point: raise RuleEvaluationConditionMet when the condition holds."""
        if self._invoke_at_step(step):
            raise RuleEvaluationConditionMet(self.rule_name, step)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_trial.name!r})"


class BuiltinAsCustomRule(Rule):
    """A built-in rule answering step by step (see the module's docstring)."""

    def __init__(self, rule: BuiltinRule, base_trial: Any) -> None:
        if not isinstance(rule, BuiltinRule):
            raise TypeError(
                f"BuiltinAsCustomRule needs a built-in rule instance, got {rule!r}; "
                "as_custom_rule(rule, trial) also takes a rule name"
            )
        super().__init__(base_trial)
        self.rule = rule
        self.rule_name = type(rule).__name__
        self._triggers: set[int] = set()
        self._covered = -1
        self.reset()

    def reset(self) -> None:
        """Start afresh: forget the built-in rule's per-step state (its ``reset()``, as
        LossNotDecreasing's last checked steps) and the trigger steps of the last evaluation.
        Called when the rule is bound to a run and at the start of each :func:`invoke_rule`."""
        reset = getattr(self.rule, "reset", None)
        if reset is not None:
            reset()
        self._triggers = set()
        self._covered = -1

    def invoke_at_step(self, step: int) -> bool:
        incremental = getattr(self.rule, "invoke_at_step", None)
        if incremental is not None:
            if not self.base_trial._has_step(int(step), None):
                self.base_trial.refresh()  # a step written since the run was last read
            return bool(incremental(self.base_trial, step))
        if step > self._covered:
            if self._covered >= 0:
                self.base_trial.refresh()
            result = self.rule.evaluate(self.base_trial)
            self._triggers = {t.step for t in result.triggers}
            steps = self.base_trial.steps()
            self._covered = steps[-1] if steps else -1
        if not self.base_trial._has_step(int(step), None):
            raise StepUnavailable(int(step))
        return int(step) in self._triggers


def _is_builtin_spec(rule: Any) -> bool:
    """``rule`` names a built-in rule as :func:`~.registry.make_rule` takes it: an instance, a
    name, a class or a (name, params) pair."""
    if isinstance(rule, (BuiltinRule, str)):
        return True
    if isinstance(rule, type):
        return issubclass(rule, BuiltinRule)
    return isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[1], dict)


def as_custom_rule(rule: BuiltinRule | str | type | tuple, trial: Any, **params: Any) -> Rule:
    """A built-in rule bound to a run, usable with :func:`invoke_rule`: an instance, or a
    registered name, class or (name, params) pair with ``params`` as :func:`evaluate` takes."""
    if not _is_builtin_spec(rule):
        raise TypeError(
            "as_custom_rule(rule, trial, **params) takes a built-in rule: an instance "
            "(LossNotDecreasing()), a registered name ('dead_relu'), a rule class or a "
            f"(name, params) pair; got {rule!r} (a Rule subclass goes to invoke_rule as it is)"
        )
    return BuiltinAsCustomRule(make_rule(rule, **params), trial)


def invoke_rule(
    rule: Rule | BuiltinRule | str | tuple,
    start_step: int = 0,
    end_step: int | None = None,
    raise_eval_cond: bool = False,
    *,
    trial: Any = None,
) -> RuleResult:
    """Walk the run's saved global steps from ``start_step`` up to (not including)
    ``end_step`` and call ``rule.invoke_at_step`` at each.

    Steps where a tensor the rule reads is missing (TensorUnavailableForStep, StepUnavailable)
    are skipped. With ``raise_eval_cond`` the first step where the rule returns True raises
    RuleEvaluationConditionMet(rule_name, step) (its ``result`` holds what was found so far);
    otherwise a RuleResult listing every trigger step comes back. A run still being written is
    refreshed once at the start; steps written later are not waited for. A built-in rule (an
    instance, a registered name or a (name, params) pair) needs ``trial``; its per-step state
    is reset at the start (:meth:`BuiltinAsCustomRule.reset`), so one rule object walked again,
    on the same run or another, gives what a fresh one gives. A :class:`Rule` subclass keeps
    its own state, as in SageMaker Debugger.
    """
    if not isinstance(rule, Rule) and _is_builtin_spec(rule):
        if trial is None:
            raise TypeError("invoke_rule(builtin_rule, trial=run): a built-in rule needs the run")
        rule = as_custom_rule(rule, trial)
    if not isinstance(rule, Rule):
        raise TypeError(f"invoke_rule needs a Rule (subclass with invoke_at_step), got {rule!r}")
    if isinstance(rule, BuiltinAsCustomRule):
        rule.reset()  # each walk starts afresh, whatever earlier walks left on the rule
    run = rule.base_trial
    if not run.has_ended:
        run.refresh()
    name = rule.rule_name
    started = time.perf_counter()
    _LOG.info("Started execution of rule %s at step %d", name, start_step)
    steps = [s for s in run.steps() if s >= start_step and (end_step is None or s < end_step)]
    triggers: list[TriggerStep] = []
    skipped: list[int] = []
    evaluated = 0

    def result() -> RuleResult:
        if triggers:
            first = triggers[0]
            text = (
                f"The condition of {name} held at {len(triggers)} of {evaluated} steps evaluated, "
                f"first at global step {first.step}"
            )
        else:
            text = f"The condition of {name} held at none of {evaluated} steps evaluated"
        if skipped:
            text += f"; {len(skipped)} steps skipped (a tensor the rule reads was not saved there)"
        return RuleResult(
            rule=name,
            name=_snake(name),
            triggered=bool(triggers),
            parameters=dict(getattr(getattr(rule, "rule", None), "parameters", {}) or {}),
            explanation=text + ".",
            first_trigger=triggers[0] if triggers else None,
            triggers=list(triggers),
            evidence={"skipped_steps": skipped},
            steps_evaluated=evaluated,
            run_name=run.name,
            run_path=run.path,
            duration_s=time.perf_counter() - started,
            skipped=evaluated == 0,
        )

    for step in steps:
        try:
            met = rule._invoke_at_step(step)
        except (TensorUnavailableForStep, StepUnavailable) as exc:
            skipped.append(int(step))
            _LOG.debug("%s: step %d skipped: %s", name, step, exc)
            continue
        evaluated += 1
        if met:
            triggers.append(BuiltinRule.trigger_step(run, step))
            if raise_eval_cond:
                _LOG.info("Ended execution of rule %s at step %d", name, step)
                raise RuleEvaluationConditionMet(name, step, result=result())
    _LOG.info("Ended execution of rule %s at end_step %s", name, end_step)
    return result()


__all__ = ["BuiltinAsCustomRule", "RequiredTensors", "Rule", "as_custom_rule", "invoke_rule"]
