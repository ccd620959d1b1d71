"""Options, ids and skip reasons of the plugin (in-process pytester runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_modelrules.pytest.options import parse_run_spec

TEST_FILE = """
    from pytest_modelrules import assert_loss_decreasing

    def test_uses_run(model_run):
        print("RUN", model_run.name, model_run.path)
        assert_loss_decreasing(model_run)

    def test_baseline(baseline_run):
        print("BASELINE", baseline_run.name)

    def test_trained(trained_run):
        print("TRAINED", trained_run.name)

    def test_plain():
        pass
"""


def test_without_a_run_model_tests_skip_with_how_to_give_one(
    pytester: pytest.Pytester, run_inner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_modelrules.pytest import fixtures

    monkeypatch.setattr(fixtures, "_training_module", lambda: None)  # no trainer
    pytester.makepyfile(TEST_FILE)
    result = run_inner("-rs")
    result.assert_outcomes(passed=1, skipped=3)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED [[]1[]] *: no model run given: pass --model-run=PATH_OR_URL (or set "
            "`model_run` in the [[]pytest[]] ini section / [[]tool.pytest.ini_options[]]) to run "
            "this model test",
            "SKIPPED [[]1[]] *: no baseline run given: pass --model-run-baseline=PATH_OR_URL*",
            "SKIPPED [[]1[]] *: no model run given and none can be trained here: pass "
            "--model-run=PATH_OR_URL, or install the training extra*reference_run",
        ]
    )


def test_trained_run_trains_the_reference_job_when_no_run_is_given(
    pytester: pytest.Pytester, run_inner, runs, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    import types

    from pytest_modelrules.pytest import fixtures

    calls = []

    def fake_reference_run(recipe: str, cache_dir: Path) -> Path:
        calls.append((recipe, Path(cache_dir)))
        return runs["good"]

    trainer = types.SimpleNamespace(
        reference_run=fake_reference_run, default_cache_dir=lambda: tmp_path / "user-cache"
    )
    monkeypatch.setattr(fixtures, "_training_module", lambda: trainer)
    pytester.makepyfile(
        "def test_a(trained_run):\n    assert trained_run.name == 'reference-seed'\n"
        "def test_b(trained_run):\n    assert trained_run.path.endswith('good')\n"
    )
    result = run_inner()
    result.assert_outcomes(passed=2)
    # session-scoped: trained (or fetched from the cache) once; the training's own cache
    assert calls == [("seed", tmp_path / "user-cache")]

    pytester.makeini("[pytest]\nmodel_run_cache = runs-cache\n")
    result = run_inner()
    result.assert_outcomes(passed=2)
    assert calls[-1] == ("seed", pytester.path / "runs-cache")  # the ini's, from its folder


def test_two_runs_give_one_test_per_run_with_readable_ids(
    pytester: pytest.Pytester, run_inner, runs: dict[str, Path]
) -> None:
    pytester.makepyfile(TEST_FILE)
    result = run_inner(f"--model-run={runs['good']}", f"--model-run={runs['bad']}", "-rA", "-s")
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "PASSED *::test_uses_run[[]good[]]",
            "PASSED *::test_trained[[]good[]]",
            "PASSED *::test_trained[[]bad[]]",
            "PASSED *::test_plain",
            "SKIPPED * no baseline run given*",
            "FAILED *::test_uses_run[[]bad[]]*",
        ]
    )
    assert "RUN good " in out and "RUN bad " in out
    assert "TRAINED bad" in out  # trained_run returns the given run
    assert "modelrules: runs: good=" in out  # the report header names both
    result.assert_outcomes(passed=4, failed=1, skipped=1)


def test_named_runs_and_duplicate_folder_names(pytester: pytest.Pytester, run_inner, runs) -> None:
    pytester.makepyfile("def test_run(model_run):\n    print('NAME', model_run.name)\n")
    result = run_inner(
        f"--model-run=main={runs['good']}",
        f"--model-run={runs['bad']}",
        f"--model-run={runs['bad']}",
        "-rA",
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["PASSED *test_run[[]main[]]", "PASSED *test_run[[]bad[]]", "PASSED *test_run[[]bad-2[]]"]
    )


def test_ini_options_apply_and_the_command_line_wins(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        model_run = {runs["good"]}
        model_run_baseline = {runs["good"]}
        """
    )
    pytester.makepyfile(
        "def test_run(model_run, baseline_run):\n"
        "    print('RUN', model_run.name, 'BASE', baseline_run.name)\n"
    )
    from_ini = run_inner("-s", "-rA")
    from_ini.assert_outcomes(passed=1)
    assert "RUN good BASE good" in from_ini.stdout.str()
    from_ini.stdout.fnmatch_lines(["PASSED *::test_run[[]good[]]"])

    from_cli = run_inner(
        f"--model-run={runs['bad']}", f"--model-run-baseline={runs['bad']}", "-s", "-rA"
    )
    from_cli.assert_outcomes(passed=1)
    assert "RUN bad BASE bad" in from_cli.stdout.str()
    from_cli.stdout.fnmatch_lines(["PASSED *::test_run[[]bad[]]"])
    assert "RUN good" not in from_cli.stdout.str()


def test_ini_paths_are_relative_to_the_ini_file(pytester: pytest.Pytester, run_inner, runs) -> None:
    import shutil

    shutil.copytree(runs["good"], pytester.path / "runs" / "latest")
    pytester.makepyprojecttoml(
        """
        [tool.pytest.ini_options]
        model_run = ["runs/latest"]
        """
    )
    pytester.makepyfile("def test_run(model_run):\n    print('PATH', model_run.path)\n")
    sub = pytester.mkdir("elsewhere")
    result = run_inner("-s", "--rootdir", str(pytester.path), str(pytester.path))
    result.assert_outcomes(passed=1)
    assert f"PATH {pytester.path / 'runs' / 'latest'}" in result.stdout.str()
    assert sub.is_dir()


def test_a_missing_run_is_an_error_that_names_the_path(
    pytester: pytest.Pytester, run_inner, tmp_path
) -> None:
    pytester.makepyfile("def test_run(model_run):\n    pass\n")
    missing = tmp_path / "no-such-run"
    result = run_inner(f"--model-run={missing}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"--model-run no-such-run ({missing}): RunNotFoundError: *"])
    out = result.stdout.str()
    assert "session.py" not in out and "During handling" not in out  # one line, no frames


def test_a_missing_baseline_says_it_is_the_baseline(
    pytester: pytest.Pytester, run_inner, runs, tmp_path
) -> None:
    pytester.makepyfile("def test_b(baseline_run):\n    pass\n")
    missing = tmp_path / "gone"
    result = run_inner(f"--model-run={runs['good']}", f"--model-run-baseline={missing}")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"--model-run-baseline gone ({missing}): RunNotFoundError: *"])


def test_run_spec_parsing() -> None:
    base = Path("/base")
    assert parse_run_spec("runs/a", base).name == "a"
    assert parse_run_spec("runs/a", base).location == "/base/runs/a"
    named = parse_run_spec("main=runs/a/", base)
    assert (named.name, named.location) == ("main", "/base/runs/a")
    up = parse_run_spec("proj/../runs/./b", base)  # as the header and the reports show it
    assert (up.name, up.location) == ("b", "/base/runs/b")
    url = parse_run_spec("s3://bucket/job/debug-output?x=1", base)
    assert url.location == "s3://bucket/job/debug-output?x=1"
    assert url.name == "debug-output?x=1"
    named_url = parse_run_spec("prod=s3://bucket/job", base)
    assert (named_url.name, named_url.location) == ("prod", "s3://bucket/job")


@pytest.mark.parametrize(
    "line, key",
    [
        ('model_run_baseline = ["a", "b"]', "model_run_baseline"),
        ('model_rules_report = ["a", "b"]', "model_rules_report"),
        ('model_run_cache = ["a"]', "model_run_cache"),  # at start, not when trained_run runs
        ('model_rules = [{ rule = "class_imbalance" }]', "model_rules"),
        ("model_run = [1, 2]", "model_run"),
    ],
)
def test_an_ini_option_of_the_wrong_type_is_a_usage_error_naming_it(
    pytester: pytest.Pytester, run_inner, recwarn: pytest.WarningsRecorder, line: str, key: str
) -> None:
    """A TOML list where a path belongs (or a table where lines belong) is one usage error
    naming the file and the key, not an internal error, and not also pytest 9's deprecation
    warning of a list given to a string option (pytest 10 makes that a TypeError)."""
    pytester.makepyprojecttoml(f"[tool.pytest.ini_options]\n{line}\n")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run_inner()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pyproject.toml: {key} = *: expected *"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert not [w for w in recwarn if issubclass(w.category, pytest.PytestDeprecationWarning)]


@pytest.mark.parametrize(
    "flag", ["--model-run=", "--model-run-baseline= ", "--model-rules-report="]
)
def test_an_empty_command_line_value_is_a_usage_error(
    pytester: pytest.Pytester, run_inner, flag: str
) -> None:
    """An unset CI variable (--model-run=$RUN) must not skip every model test and pass."""
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run_inner(flag)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    wanted = "a folder for the report" if "report" in flag else "a run's path or URL"
    result.stderr.fnmatch_lines([f"*{flag.split('=')[0]} was given an empty value*: give {wanted}"])


def test_a_report_folder_that_is_a_file_is_refused_at_once(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    """Found when the session starts, not as a crash when it ends."""
    target = pytester.path / "afile"
    target.write_text("not a folder")
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run_inner(f"--model-run={runs['good']}", f"--model-rules-report={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--model-rules-report: {target} is a file*"])


def test_pytest_10s_type_error_for_a_list_in_a_string_option_is_the_same_usage_error() -> None:
    """pytest 10 raises where pytest 9 warns: the user still gets the file and the key."""
    from types import SimpleNamespace

    from pytest_modelrules.pytest.options import ini_text

    def getini(name: str) -> str:
        raise TypeError(f"ini option {name!r} expects a string")

    config = SimpleNamespace(getini=getini, inipath=Path("/project/pyproject.toml"))
    with pytest.raises(pytest.UsageError, match=r"pyproject.toml: model_run_baseline = .*string"):
        ini_text(config, "model_run_baseline")  # type: ignore[arg-type]


@pytest.mark.parametrize("how", ["flag", "ini"])
def test_a_required_run_that_is_not_given_is_a_usage_error(
    pytester: pytest.Pytester, run_inner, runs, how: str
) -> None:
    """A CI job whose run variable is unset (the option left out altogether) skipped every
    model test and passed; with the requirement it stops at once, and a given run is tested."""
    pytester.makepyfile(
        "def test_model(model_run):\n    assert model_run.steps()\ndef test_plain():\n    pass\n"
    )
    assert run_inner().ret == pytest.ExitCode.OK  # by default: model tests skipped, exit 0
    if how == "ini":
        pytester.makeini("[pytest]\nmodel_run_required = true\n")
        args: tuple[str, ...] = ()
    else:
        args = ("--model-run-required",)
    result = run_inner(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no model run given, and one is required*--model-run=*"])
    given = run_inner(*args, f"--model-run={runs['good']}")
    assert given.ret == pytest.ExitCode.OK
    given.assert_outcomes(passed=2)


def test_a_required_run_given_in_the_ini_is_enough(pytester: pytest.Pytester, run_inner, runs):
    pytester.makeini(f"[pytest]\nmodel_run_required = true\nmodel_run = {runs['good']}\n")
    pytester.makepyfile("def test_model(model_run):\n    assert model_run.steps()\n")
    run_inner().assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nmodel_run_required = perhaps\n")
    bad = run_inner()
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*model_run_required*perhaps*"])
