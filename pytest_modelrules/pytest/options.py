"""Options of the plugin (command line and ini) and the run specs they name.

The command line wins over the ini file: when ``--model-run`` is given at all, the ini's
``model_run`` lines are ignored (not merged), so that a CI job can point a project's tests
at its own run whatever the project's configuration says.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

GROUP = "modelrules"

#: what pytest 9 warns of a value that is not a string given to a string option
_NOT_A_STRING_WARNING = getattr(pytest, "PytestRemovedIn10Warning", None)

#: "NAME=LOCATION" gives a run a name of its own; NAME may hold no "/", ":" or "="
_NAMED = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)=(?P<loc>.+)$")

NO_RUN_REASON = (
    "no model run given: pass --model-run=PATH_OR_URL (or set `model_run` in the [pytest] ini "
    "section / [tool.pytest.ini_options]) to run this model test"
)
NO_BASELINE_REASON = (
    "no baseline run given: pass --model-run-baseline=PATH_OR_URL (or set `model_run_baseline` "
    "in the ini) to compare with a baseline"
)


@dataclass(frozen=True)
class RunSpec:
    """A run named on the command line or in the ini: where it is and the id tests show."""

    name: str
    location: str

    def __str__(self) -> str:
        return self.name


def add_options(parser: pytest.Parser) -> None:
    """Register the command-line options (in their own group) and the ini keys."""
    group = parser.getgroup(GROUP, "model rules (pytest-modelrules)")
    group.addoption(
        "--model-run",
        action="append",
        dest="model_run",
        default=None,
        metavar="PATH_OR_URL",
        help="a recorded training run (folder or fsspec URL, native or SageMaker Debugger "
        "layout); repeat it to run every model test once per run. NAME=PATH sets the test id.",
    )
    group.addoption(
        "--model-run-required",
        action="store_true",
        dest="model_run_required",
        default=None,
        help="a usage error when no run is given (by --model-run or the ini), instead of "
        "skipping every model test: for CI jobs, where an unset run variable must not pass",
    )
    group.addoption(
        "--model-run-baseline",
        action="store",
        dest="model_run_baseline",
        default=None,
        metavar="PATH_OR_URL",
        help="the run to compare with (baseline_run fixture, assert_no_regression, "
        "baseline_comparison rules): e.g. the main branch's run",
    )
    group.addoption(
        "--model-rules-report",
        action="store",
        dest="model_rules_report",
        default=None,
        metavar="DIR",
        help="write DIR/verdicts.json (every rule verdict) and, with matplotlib, DIR/report.html",
    )
    parser.addini(
        "model_run",
        "model runs (one per line), as --model-run; the command line wins",
        type="linelist",
        default=[],
    )
    parser.addini(
        "model_run_required",
        "as --model-run-required: no run given is a usage error, not skipped model tests",
        type="bool",
        default=False,
    )
    parser.addini(
        "model_run_baseline",
        "baseline run, as --model-run-baseline; the command line wins",
        type="string",
        default="",
    )
    parser.addini(
        "model_rules",
        "rules to collect as tests, one per line: `NAME key=value ... [xfail=REASON]`",
        type="linelist",
        default=[],
    )
    parser.addini(
        "model_run_cache",
        "folder of trained reference runs for the trained_run fixture (default: "
        "$MODELRULES_CACHE_DIR or ~/.cache/pytest-modelrules)",
        type="string",
        default="",
    )
    parser.addini(
        "model_rules_report",
        "report folder, as --model-rules-report; the command line wins",
        type="string",
        default="",
    )


def is_url(location: str) -> bool:
    return "://" in location


def _resolve(location: str, base: Path) -> str:
    """Relative local paths are taken from ``base`` and normalised (``proj/../runs/a`` is
    ``runs/a`` in the session's header and reports; symlinks are kept); URLs are left alone."""
    location = location.strip()
    if is_url(location):
        return location
    path = Path(location).expanduser()
    return os.path.normpath(path if path.is_absolute() else (base / path))


def _ini_base(config: pytest.Config) -> Path:
    return Path(config.inipath).parent if config.inipath else Path(config.rootpath)


def _ini_file(config: pytest.Config) -> str:
    return str(config.inipath) if config.inipath else "the ini file"


def ini_text(config: pytest.Config, name: str) -> str:
    """The ini option ``name`` as text; a UsageError naming the file and the key when the
    file gives it another type (a TOML list or table, say)."""
    # pytest 9 warns of a TOML list given to a string option (PytestRemovedIn10Warning) and
    # still returns it; pytest 10 raises a TypeError: either way the usage error below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pytest.PytestDeprecationWarning)
        try:
            value = config.getini(name)
        except TypeError as exc:
            raise pytest.UsageError(
                f"{_ini_file(config)}: {name} = ...: expected one string (a path or URL): {exc}"
            ) from None
    for warning in caught:  # any other warning goes on as it came
        if isinstance(value, str | None) or warning.category is not _NOT_A_STRING_WARNING:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    if value is None:
        return ""
    if not isinstance(value, str):
        raise pytest.UsageError(
            f"{_ini_file(config)}: {name} = {value!r}: expected one string (a path or URL)"
        )
    return value


def ini_lines(config: pytest.Config, name: str) -> list[str]:
    """The ini option ``name`` as lines of text (a TOML list of strings, or a string of
    lines); a UsageError naming the file and the key for anything else."""
    value = config.getini(name) or []
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise pytest.UsageError(
            f"{_ini_file(config)}: {name} = {value!r}: expected lines of text (a list of strings)"
        )
    return value


def _cli_value(
    config: pytest.Config, dest: str, flag: str, wanted: str = "a run's path or URL"
) -> None:
    """Refuse an empty command-line value (``--model-run=`` from an unset CI variable), which
    would otherwise skip every model test or override the ini with nothing."""
    value = config.getoption(dest)
    values = value if isinstance(value, list) else [] if value is None else [value]
    if any(not str(v).strip() for v in values):
        raise pytest.UsageError(
            f"{flag} was given an empty value (an unset variable?): give {wanted}"
        )


def parse_run_spec(text: str, base: Path) -> RunSpec:
    """``PATH``, ``URL`` or ``NAME=PATH``; the name defaults to the folder's last part."""
    text = text.strip()
    match = _NAMED.match(text)
    if match and not is_url(text.split("=", 1)[0]):
        name, loc = match.group("name"), match.group("loc")
    else:
        name, loc = "", text
    loc = _resolve(loc, base)
    if not name:
        name = re.split(r"[/\\]", loc.rstrip("/\\"))[-1] or loc
    return RunSpec(name=name, location=loc)


def _unique(specs: list[RunSpec]) -> list[RunSpec]:
    """Two runs with the same folder name get ``-2``, ``-3``... so that test ids differ."""
    seen: dict[str, int] = {}
    out = []
    for spec in specs:
        n = seen.get(spec.name, 0) + 1
        seen[spec.name] = n
        out.append(spec if n == 1 else RunSpec(f"{spec.name}-{n}", spec.location))
    return out


def run_specs(config: pytest.Config) -> list[RunSpec]:
    """The runs to test: ``--model-run`` values, else the ini's ``model_run`` lines."""
    _cli_value(config, "model_run", "--model-run")
    cli = config.getoption("model_run") or []
    if cli:
        base = Path(config.invocation_params.dir)
        return _unique([parse_run_spec(t, base) for t in cli])
    lines = ini_lines(config, "model_run")
    specs = _unique([parse_run_spec(t, _ini_base(config)) for t in lines if t.strip()])
    if not specs and _run_required(config):
        raise pytest.UsageError(
            "no model run given, and one is required (--model-run-required or "
            "model_run_required in the ini): pass --model-run=PATH_OR_URL or set model_run "
            "in the ini; without the requirement every model test would be skipped"
        )
    return specs


def _run_required(config: pytest.Config) -> bool:
    """``--model-run-required``, else the ini's ``model_run_required``."""
    if config.getoption("model_run_required"):
        return True
    try:
        return bool(config.getini("model_run_required"))
    except (ValueError, pytest.UsageError) as exc:  # not a boolean: say where
        raise pytest.UsageError(f"{_ini_file(config)}: model_run_required: {exc}") from None


def baseline_spec(config: pytest.Config) -> RunSpec | None:
    """The baseline run: ``--model-run-baseline``, else the ini's ``model_run_baseline``."""
    _cli_value(config, "model_run_baseline", "--model-run-baseline")
    cli = config.getoption("model_run_baseline")
    if cli:
        return parse_run_spec(cli, Path(config.invocation_params.dir))
    ini = ini_text(config, "model_run_baseline").strip()
    if ini:
        return parse_run_spec(ini, _ini_base(config))
    return None


def report_dir(config: pytest.Config) -> Path | None:
    """The ``--model-rules-report`` folder (or the ini's), or None."""
    _cli_value(config, "model_rules_report", "--model-rules-report", "a folder for the report")
    cli = config.getoption("model_rules_report")
    ini = ini_text(config, "model_rules_report").strip()
    if cli:
        path, where = (
            Path(_resolve(cli, Path(config.invocation_params.dir))),
            "--model-rules-report",
        )
    elif ini:
        path, where = (
            Path(_resolve(ini, _ini_base(config))),
            f"{_ini_file(config)}: model_rules_report",
        )
    else:
        return None
    if path.exists() and not path.is_dir():  # found now, not when the session ends
        raise pytest.UsageError(f"{where}: {path} is a file; the report needs a folder")
    return path


def cache_dir(config: pytest.Config) -> Path | None:
    """The ini's ``model_run_cache`` folder (relative to the ini file), or None."""
    ini = ini_text(config, "model_run_cache").strip()
    return Path(_resolve(ini, _ini_base(config))) if ini else None
