"""The base of built-in rules: declared parameters (SageMaker Debugger's names and defaults,
strings accepted), evaluation over a whole run, and the registry behind ``evaluate()``."""

from __future__ import annotations

import json
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..exceptions import MissingTensorError, RuleParameterError
from ..modes import ModeKeys, parse_mode
from ..store.names import is_reduction
from .result import RuleResult, TriggerStep

_NONE_STRINGS = {"none", "null", ""}


@dataclass(frozen=True)
class Param:
    """One rule parameter: its default and its kind.

    kinds: "int", "float", "bool", "str", "regex" (a regex, validated), "regex_list" (a list of
    regexes, or a string of them separated by commas as SageMaker documents it: split at the
    commas outside brackets and braces, so ``a{1,3}`` and ``[,;]`` stay whole), "regex_union"
    (the same input joined into one regex string: a single regex is kept as it is),
    "str_list" (list, or a string separated by commas or semicolons), "mode" (ModeKeys or
    its name), "pairs" (list of 2-item int lists, or "19-20,33-34" / "19-20;33-34" / JSON),
    "int_list", "any".
    """

    default: Any
    kind: str
    doc: str = ""
    optional: bool = True  # None allowed


def coerce(rule: str, pname: str, spec: Param, value: Any) -> Any:
    """Convert a parameter given as a Python value or (as SageMaker passed them) a string."""
    if value is None or (
        isinstance(value, str)
        and value.strip().lower() in _NONE_STRINGS
        and spec.kind not in ("str", "regex", "regex_union")
    ):
        if spec.optional or spec.default is None:
            return None
        raise RuleParameterError(f"{rule}: parameter {pname!r} must not be None")
    kind = spec.kind
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError("a bool is not an int")
            if isinstance(value, str):
                value = (
                    float(value.strip()) if any(c in value for c in ".eE") else int(value.strip())
                )
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(f"{value} is not a whole number")
                value = int(value)
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("a bool is not a number")
            out = float(value.strip() if isinstance(value, str) else value)
            return out
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(f"{value!r} is not a boolean (use True/False)")
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not a string")
            return value
        if kind == "regex":
            if not isinstance(value, str):
                raise ValueError(f"{value!r} is not a regex string")
            re.compile(value)
            return value
        if kind in ("regex_list", "regex_union"):
            items = _regex_items(value)
            for item in items:
                re.compile(item)
            if kind == "regex_list":
                return items
            if not items:
                raise ValueError("no regex given")
            return items[0] if len(items) == 1 else "|".join(f"(?:{i})" for i in items)
        if kind == "str_list":
            return _as_list(value, split_commas=True)
        if kind == "int_list":
            return [
                int(coerce(rule, pname, Param(None, "int"), v))
                for v in _as_list(value, split_commas=True)
            ]
        if kind == "mode":
            return parse_mode(value)
        if kind == "pairs":
            return _as_pairs(value)
        if kind == "any":
            return value
    except (ValueError, TypeError, re.error) as exc:
        raise RuleParameterError(
            f"{rule}: parameter {pname!r} = {value!r} is invalid: {exc}"
        ) from None
    raise RuleParameterError(f"{rule}: parameter {pname!r} has unknown kind {kind!r}")


def _as_list(value: Any, *, split_commas: bool) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            loaded = json.loads(text)
            if not isinstance(loaded, list):
                raise ValueError("expected a JSON list")
            return [str(v) for v in loaded]
        if split_commas:
            return [p.strip() for p in re.split(r"[,;]", text) if p.strip()]
        return [text]
    if isinstance(value, (list, tuple, set)):
        return [str(v) for v in value]
    raise ValueError(f"{value!r} is not a string or a list")


def _as_pairs(value: Any) -> list[tuple[int, int]]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            value = json.loads(text)
        else:
            value = [p.strip() for p in re.split(r"[,;]", text) if p.strip()]
    pairs = []
    for item in value:
        parts = item.replace(":", "-").split("-") if isinstance(item, str) else item
        if isinstance(parts, bytes) or len(parts) != 2:
            raise ValueError(f"{item!r} is not a pair of classes (write 19-20)")
        a, b = parts
        pairs.append((int(a), int(b)))
    return pairs


def split_regexes(text: str) -> list[str]:
    """A comma-separated string of regexes (SageMaker's "list of strings or a comma-separated
    string") as a list: split at the commas outside ``[...]``, ``{...}`` and ``(...)``, each
    part stripped (``".*tanh_input, .*sigmoid_input"``: two); ``a{1,3}`` stays one."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    in_class = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]" or not current or current[-1] == "["
        elif ch == "[":
            in_class = True
        elif ch in "({":
            depth += 1
        elif ch in ")}":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _regex_items(value: Any) -> list[str]:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                loaded = json.loads(text)
            except ValueError:
                loaded = None  # a character class, not a JSON list
            if isinstance(loaded, list):
                return [str(v) for v in loaded]
        return split_regexes(text)
    if isinstance(value, (list, tuple, set)):
        items = []
        for v in value:
            if not isinstance(v, str):
                raise ValueError(f"{v!r} is not a regex string")
            items.append(v)
        return items
    raise ValueError(f"{value!r} is not a regex string or a list of them")


def _folded(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "")


class BuiltinRule(ABC):
    """A rule that looks at a whole run at once (vectorised over steps).

    Subclasses declare ``name`` (snake_case), ``params`` ({name: Param}) and implement
    :meth:`_evaluate`. Parameters arrive as keyword arguments, as values or strings.
    """

    name: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    #: in the default set that `modelrules check` and the bug benchmark run
    default_enabled: ClassVar[bool] = True
    #: a larger ``RuleResult.figure`` means a worse run (BaselineComparison reads this)
    higher_is_worse: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        rule = type(self).__name__
        invoked = params.pop("rule_to_invoke", None)
        if invoked is not None and _folded(str(invoked)) not in (
            _folded(rule),
            _folded(self.name),
        ):
            # SageMaker's RuleParameters carry the rule's own name: kept when it is this rule
            raise RuleParameterError(
                f"{rule}: parameter 'rule_to_invoke' = {invoked!r} names another rule"
            )
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise RuleParameterError(
                f"{rule}: unknown parameter(s) {', '.join(unknown)}; "
                f"it takes {', '.join(sorted(self.params)) or 'no parameters'}"
            )
        self.parameters: dict[str, Any] = {}
        for pname, spec in self.params.items():
            raw = params.get(pname, spec.default)
            self.parameters[pname] = coerce(rule, pname, spec, raw) if raw is not None else None
            setattr(self, pname, self.parameters[pname])
        missing = [p for p in self.required_params() if self.parameters.get(p) is None]
        if missing:
            raise RuleParameterError(
                f"{rule}: required parameter(s) {', '.join(missing)} not given"
            )
        self._validate()

    @classmethod
    def required_params(cls) -> list[str]:
        """Parameters that must be given: ``Param(None, kind, optional=False)``."""
        return [p for p, spec in cls.params.items() if spec.default is None and not spec.optional]

    def _validate(self) -> None:  # noqa: B027 - optional hook
        """Check parameter values together; raise RuleParameterError naming the parameter."""

    def param_error(self, pname: str, problem: str) -> RuleParameterError:
        return RuleParameterError(f"{type(self).__name__}: parameter {pname!r} {problem}")

    def missing_tensor(self, run: Any, what: str) -> MissingTensorError:
        """A MissingTensorError naming what this rule needed and what the run holds."""
        names = [n for n in run.tensor_names() if not is_reduction(n)]
        shown = ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
        return MissingTensorError(
            f"{type(self).__name__}: the run {run.name!r} has no {what}; "
            f"it holds {shown or 'no tensors'}"
        )

    def evaluate(self, run: Any) -> RuleResult:
        """Run the rule over the whole run and return its result."""
        from ..store.run import open_run

        run = open_run(run)
        started = time.perf_counter()
        result = self._evaluate(run)
        result.duration_s = time.perf_counter() - started
        result.run_name = run.name
        result.run_path = run.path
        return result

    @abstractmethod
    def _evaluate(self, run: Any) -> RuleResult:
        """The rule's logic."""

    def make_result(self, triggered: bool, explanation: str, **fields: Any) -> RuleResult:
        """A RuleResult filled with this rule's names and parameters."""
        return RuleResult(
            rule=type(self).__name__,
            name=self.name,
            triggered=triggered,
            parameters={
                k: (v.name if isinstance(v, ModeKeys) else v) for k, v in self.parameters.items()
            },
            explanation=explanation,
            **fields,
        )

    @staticmethod
    def trigger_step(run: Any, global_step: int) -> TriggerStep:
        """A TriggerStep for a global step, with its mode and mode step."""
        try:
            return TriggerStep(
                int(global_step), run.mode(int(global_step)).name, run.mode_step(int(global_step))
            )
        except Exception:
            return TriggerStep(int(global_step))

    @staticmethod
    def trigger_steps(run: Any, global_steps: Any) -> list[TriggerStep]:
        """TriggerSteps for many global steps at once (one lookup in the step table, not one
        per step): what rules that trigger at thousands of steps use."""
        g = np.asarray(global_steps, dtype=np.int64).reshape(-1)
        if len(g) == 0:
            return []
        table = run.step_table()
        steps = table["step"]
        if len(steps) == 0:
            return [TriggerStep(int(s)) for s in g.tolist()]
        pos = np.minimum(np.searchsorted(steps, g), len(steps) - 1)
        found = (steps[pos] == g).tolist()
        names = {int(m): ModeKeys(int(m)).name for m in np.unique(table["mode"])}
        modes = table["mode"][pos].tolist()
        mode_steps = table["mode_step"][pos].tolist()
        return [
            TriggerStep(s, names[m], k) if f else TriggerStep(s)
            for s, m, k, f in zip(g.tolist(), modes, mode_steps, found)
        ]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[BuiltinRule]] = {}


def register(cls: type[BuiltinRule]) -> type[BuiltinRule]:
    """Class decorator: make a rule available to ``evaluate(run, cls.name)``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no snake_case name")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[BuiltinRule]]:
    """snake_case name -> rule class, for every built-in rule (imports the rule modules)."""
    from . import _load_all

    _load_all()
    return dict(_REGISTRY)
