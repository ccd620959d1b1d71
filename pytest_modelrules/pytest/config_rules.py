"""Rules declared in configuration, which the plugin collects as test items of their own.

Two places, both read at collection time:

- ``[tool.pytest_modelrules]`` in pyproject.toml (read with tomllib)::

      [[tool.pytest_modelrules.rules]]
      rule = "class_imbalance"
      threshold_imbalance = 10

      [[tool.pytest_modelrules.rules]]
      rule = "direction_confusion"
      pairs = [[19, 20]]
      xfail = "RandomHorizontalFlip mirrors 19/20; fixed by issue 12"

  (or a table per rule: ``[tool.pytest_modelrules.rules.dead_relu]``);
- the ini key ``model_rules``, one rule a line: ``class_imbalance threshold_imbalance=10``,
  ``direction_confusion pairs=19-20 xfail="flip augmentation"`` (shell quoting; values are
  strings, which rules accept as SageMaker passed them).

Reserved keys: ``rule``, ``id`` (the test id instead of the rule name), ``xfail`` (a reason:
the rule is expected to trigger) and ``strict`` (default true: an unexpected pass fails).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from . import options

RESERVED = ("rule", "id", "xfail", "strict")
TOOL_KEY = "pytest_modelrules"


class ConfigRuleError(pytest.UsageError):
    """A rule declaration that cannot be read: says which file and which entry."""


@dataclass(frozen=True)
class RuleSpec:
    """One declared rule: name, parameters, where it was declared, expected failure."""

    rule: str
    params: dict[str, Any] = field(default_factory=dict)
    id: str = ""
    xfail: str | None = None
    strict: bool = True
    source: str = ""  # "pyproject.toml" or "ini model_rules line 2", for messages

    @property
    def test_id(self) -> str:
        return self.id or self.rule


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ConfigRuleError(f"{where}: strict={value!r} is not a boolean")


def _spec(entry: dict[str, Any], where: str) -> RuleSpec:
    name = entry.get("rule")
    if not isinstance(name, str) or not name.strip():
        raise ConfigRuleError(f'{where}: a rule entry needs `rule = "<name>"`, got {entry!r}')
    xfail = entry.get("xfail")
    if xfail is True:
        xfail = "declared as an expected failure"
    elif xfail is False or xfail is None:
        xfail = None
    else:
        xfail = str(xfail)
    return RuleSpec(
        rule=name.strip(),
        params={k: v for k, v in entry.items() if k not in RESERVED},
        id=str(entry.get("id") or ""),
        xfail=xfail,
        strict=_as_bool(entry.get("strict", True), where),
        source=where,
    )


def _load_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigRuleError(
                f"{path}: reading [tool.{TOOL_KEY}] on Python 3.10 needs `tomli`"
            ) from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigRuleError(f"{path}: not valid TOML: {exc}") from None


def pyproject_path(config: pytest.Config) -> Path | None:
    """The project's pyproject.toml: the ini file if it is one, else the rootdir's."""
    if config.inipath is not None and Path(config.inipath).name == "pyproject.toml":
        return Path(config.inipath)
    candidate = Path(config.rootpath) / "pyproject.toml"
    return candidate if candidate.is_file() else None


def from_pyproject(path: Path) -> list[RuleSpec]:
    """The rules of ``[tool.pytest_modelrules]``: a list of tables or one-line strings (the
    ini's ``NAME key=value ...``), or a table per rule."""
    tool = _load_toml(path).get("tool", {}).get(TOOL_KEY, {})
    rules = tool.get("rules", [])
    where = f"{path.name} [tool.{TOOL_KEY}]"
    specs = []
    if isinstance(rules, dict):
        for name, params in rules.items():
            if not isinstance(params, dict):
                raise ConfigRuleError(f"{where}: rules.{name} must be a table of parameters")
            specs.append(_spec({"rule": name, **params}, f"{where} rules.{name}"))
    elif isinstance(rules, list):
        for i, entry in enumerate(rules):
            if isinstance(entry, str):  # the ini's one-line form: "NAME key=value ..."
                specs.append(parse_line(entry, f"{where} rules[{i}]"))
                continue
            if not isinstance(entry, dict):
                raise ConfigRuleError(
                    f"{where}: rules[{i}] must be a table or a 'NAME key=value ...' line, "
                    f"got {entry!r}"
                )
            specs.append(_spec(entry, f"{where} rules[{i}]"))
    else:
        raise ConfigRuleError(f"{where}: `rules` must be a list (of tables or lines) or a table")
    return specs


def parse_line(line: str, where: str) -> RuleSpec:
    """``NAME key=value ...`` (shell quoting) -> RuleSpec."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        raise ConfigRuleError(f"{where}: {exc}: {line!r}") from None
    if not tokens:
        raise ConfigRuleError(f"{where}: empty rule line")
    entry: dict[str, Any] = {"rule": tokens[0]}
    for tok in tokens[1:]:
        if "=" not in tok:
            raise ConfigRuleError(f"{where}: {tok!r} is not key=value (in {line!r})")
        key, value = tok.split("=", 1)
        entry[key.strip()] = value
    return _spec(entry, where)


def from_ini(lines: list[str], where: str = "ini") -> list[RuleSpec]:
    out = []
    for i, line in enumerate(lines, 1):
        if line.strip() and not line.strip().startswith("#"):
            out.append(parse_line(line, f"{where} model_rules line {i}"))
    return out


def declared_rules(config: pytest.Config) -> list[RuleSpec]:
    """Every rule declared for this project: pyproject's first, then the ini's lines."""
    specs: list[RuleSpec] = []
    path = pyproject_path(config)
    if path is not None:
        specs.extend(from_pyproject(path))
    where = str(config.inipath) if config.inipath else "ini"
    specs.extend(from_ini(options.ini_lines(config, "model_rules"), where))
    return specs
