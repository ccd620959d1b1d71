"""A run that has not ended (training still writing it, or killed) is judged with a warning:
pytest's warnings summary and ``modelrules check`` say so, and ``-W error`` makes it fatal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pytest_modelrules import RunNotEndedWarning, open_run
from pytest_modelrules.cli import main
from pytest_modelrules.store.summary import not_ended_note

TEST_FILE = """
    from pytest_modelrules import assert_loss_decreasing

    def test_loss(model_run):
        assert_loss_decreasing(model_run)

    def test_again(model_run):
        assert model_run.steps()
"""


@pytest.fixture
def unended(runs: dict[str, Path], tmp_path: Path) -> Path:
    """The good run without its END file: what a killed training job leaves."""
    path = tmp_path / "unended"
    shutil.copytree(runs["good"], path)
    (path / "workers" / "worker_0" / "END").unlink()
    return path


def test_note_names_the_steps_judged_and_is_none_for_an_ended_run(
    runs: dict[str, Path], unended: Path
) -> None:
    assert not_ended_note(open_run(runs["good"])) is None
    note = not_ended_note(open_run(unended))
    assert note is not None
    assert "has not ended (no END file from every worker)" in note
    assert "rules judge the 24 complete steps (last global step 23) written so far" in note


def test_note_names_the_smdebug_end_marker(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "smdebug_sample_run"
    if not src.exists():
        src = Path("/tmp/shared/fixtures/smdebug_sample_run")
    run_dir = tmp_path / "sm"
    shutil.copytree(src, run_dir)
    (run_dir / "training_job_end.ts").unlink()
    note = not_ended_note(open_run(run_dir))
    assert note is not None and "no training_job_end.ts from every worker" in note


def test_plugin_warns_once_per_process_and_the_tests_still_run(
    pytester: pytest.Pytester, run_inner, unended: Path
) -> None:
    pytester.makepyfile(TEST_FILE)
    result = run_inner(f"--model-run={unended}")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*RunNotEndedWarning: --model-run * (*unended): the run has not ended*"
            "rules judge the 24 complete steps (last global step 23) written so far",
        ]
    )


def test_plugin_gives_no_warning_for_an_ended_run(
    pytester: pytest.Pytester, run_inner, runs: dict[str, Path]
) -> None:
    pytester.makepyfile(TEST_FILE)
    result = run_inner(f"--model-run={runs['good']}")
    result.assert_outcomes(passed=2)
    assert "RunNotEndedWarning" not in result.stdout.str()


def test_warning_as_error_fails_each_test_with_one_line(
    pytester: pytest.Pytester, run_inner, unended: Path
) -> None:
    pytester.makepyfile(TEST_FILE)
    result = run_inner(
        f"--model-run={unended}", "-W", "error::pytest_modelrules.RunNotEndedWarning"
    )
    result.assert_outcomes(errors=2)  # at the fixture's setup, as a run that cannot be opened
    out = result.stdout.str()
    assert out.count("\nRunNotEndedWarning: --model-run unended (") == 2
    assert "session.py" not in out  # the plugin's frames are hidden: one line, no traceback


def test_check_warns_on_stderr_for_a_run_that_has_not_ended(
    runs: dict[str, Path], unended: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["check", str(unended), "--rule", "loss_not_decreasing"])
    err = capsys.readouterr().err
    assert f"modelrules: warning: {unended}: the run has not ended" in err
    main(["check", str(runs["good"]), "--rule", "loss_not_decreasing"])
    assert "has not ended" not in capsys.readouterr().err


def test_warning_class_is_a_user_warning() -> None:
    assert issubclass(RunNotEndedWarning, UserWarning)
