"""Rules by name: ``evaluate(run, "loss_not_decreasing", num_steps=20)``, the list of rules,
and the default set (the rules that need no parameter, run by "check everything")."""

from __future__ import annotations

import difflib
from typing import Any

from ..exceptions import RuleParameterError
from .base import BuiltinRule, registry
from .result import RuleResult


def available_rules() -> list[str]:
    """snake_case names of every built-in rule, sorted."""
    return sorted(registry())


def default_rules() -> list[str]:
    """The rules enabled by default that need no required parameter (sorted snake_case
    names), with the classes' (SageMaker Debugger's) defaults. For "check everything" prefer
    :func:`default_profile`: the same kind of set with thresholds chosen on the bug zoo."""
    return sorted(
        name
        for name, cls in registry().items()
        if cls.default_enabled and not cls.required_params()
    )


def default_profile() -> dict[str, dict[str, Any]]:
    """The default rule set with its parameters, {rule name: parameters} (a copy; see
    ``rules/profiles.py`` and docs/zoo.md): what "check everything" should evaluate, each as
    ``make_rule((name, params))``. Rules in ``profiles.WHEN_RECORDED`` judge tensors few runs
    record: a MissingTensorError from them means "not judged"."""
    from .profiles import default_profile as _profile

    return _profile()


#: other spellings users bring from SageMaker Debugger's configs
_ALIASES = {"stalled_training": "stalled_training_rule"}


def rule_class(name: str | type[BuiltinRule]) -> type[BuiltinRule]:
    """The rule class for a snake_case name or a class name (any case); RuleParameterError
    listing the known names otherwise."""
    if isinstance(name, type) and issubclass(name, BuiltinRule):
        return name
    if not isinstance(name, str):
        raise RuleParameterError(f"a rule name must be a string, got {name!r}")
    rules = registry()
    key = name.strip()
    key = _ALIASES.get(key, key)
    if key in rules:
        return rules[key]
    folded = key.lower().replace("_", "").replace("-", "")
    for snake, cls in rules.items():
        if folded in (snake.replace("_", ""), cls.__name__.lower()):
            return cls
    close = difflib.get_close_matches(key.lower(), list(rules), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise RuleParameterError(
        f"unknown rule {name!r}{hint}; the rules are: {', '.join(sorted(rules))}"
    )


def make_rule(spec: Any, **params: Any) -> BuiltinRule:
    """A rule instance from a name, a class, a (name, params) pair or an instance."""
    if isinstance(spec, BuiltinRule):
        if params:
            raise RuleParameterError(
                f"{type(spec).__name__} is already configured; pass parameters to its constructor"
            )
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], dict):
        return rule_class(spec[0])(**{**spec[1], **params})
    return rule_class(spec)(**params)


def evaluate_defaults(run: Any, *, baseline: Any = None) -> list[RuleResult]:
    """Evaluate the default profile on a run (what ``modelrules check`` and the HTML report
    run when no rule is named). A rule whose tensors the run does not hold comes back as a
    "not judged" result (``skipped=True``) that names what is missing, not as a failure; a
    rule that cannot read what the run holds (a ClassAxisError, a damaged tensor file) comes
    back so too, with ``error`` saying why (:func:`evaluate_or_not_judged`)."""
    from ..store.run import open_run

    run = open_run(run)
    results = []
    for name, params in default_profile().items():
        cls = rule_class(name)
        if baseline is not None and "other_trials" in cls.params:
            params.setdefault("other_trials", [baseline])
        results.append(evaluate_or_not_judged(run, cls, params))
    return results


def default_profile_gap(run: Any, results: list[RuleResult]) -> str | None:
    """Why a check of ``run`` by the default profile (``results``, from
    :func:`evaluate_defaults`) judged nothing its training is about, in one line; None when it
    did. A gate must not pass such a run: ``modelrules check`` exits 2 ("not judged").

    - the run holds no loss tensor (no ``losses`` collection, no scalar named "loss":
      ``loss.named_losses``), so the loss rules judged nothing or an unrelated scalar;
    - or only the rules that judge any run with steps (``profiles.ANY_RUN``: exploding_tensor,
      stalled_training_rule) could judge it.
    """
    from ..store.run import open_run
    from ._select import describe_holdings
    from .loss import named_losses
    from .profiles import ANY_RUN, LOSS_RULES

    run = open_run(run)
    judged = sorted(r.name for r in results if not r.skipped)
    holds = describe_holdings(run)
    if not named_losses(run):
        return (
            f"the run {run.name!r} holds no loss tensor (no losses collection, no scalar named "
            f"*loss*): the loss rules ({', '.join(LOSS_RULES)}) judged no loss; {holds}"
        )
    if not set(judged) - ANY_RUN:
        only = ", ".join(judged) or "none"
        return (
            f"no rule that reads what a training records could judge the run {run.name!r}, "
            f"only ones that judge any run with steps ({only}); {holds}"
        )
    return None


def evaluate_or_not_judged(run: Any, cls: Any, params: dict[str, Any]) -> RuleResult:
    """``cls(**params).evaluate(run)``, or, where the run lacks the rule's tensors, a "not
    judged" result (``skipped=True``) naming what is missing: one rule's missing tensors do
    not stop a check of many. A rule that cannot read what the run holds (logits without a
    class axis, a damaged tensor file: a RuleError or RunError) comes back the same way with
    ``error`` set, so the other rules are still judged; wrong parameters still raise."""
    from ..exceptions import MissingTensorError, RuleError, RuleParameterError, RunError

    def not_judged(explanation: str, error: str = "") -> RuleResult:
        return RuleResult(
            rule=cls.__name__,
            name=cls.name,
            triggered=False,
            skipped=True,
            parameters=params,
            explanation=explanation,
            run_name=run.name,
            run_path=run.path,
            error=error,
        )

    try:
        return cls(**params).evaluate(run)
    except MissingTensorError as exc:
        return not_judged(f"not judged: {exc}")
    except RuleParameterError:
        raise
    except (RuleError, RunError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        return not_judged(f"error: {error}", error)


def evaluate(run: Any, name: Any, **params: Any) -> RuleResult:
    """Evaluate one rule (snake_case name, class name, class or instance) on a run (a Run or a
    path/URL) with parameters as values or strings."""
    return make_rule(name, **params).evaluate(run)


__all__ = [
    "available_rules",
    "default_profile",
    "default_profile_gap",
    "default_rules",
    "evaluate",
    "make_rule",
    "rule_class",
]
