"""examples/ci: the workflow parses, and its gate command runs as written against two runs."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

WORKFLOW = Path(__file__).resolve().parents[2] / "examples" / "ci" / "modelrules.yml"

MODEL_TESTS = """
    from pytest_modelrules import assert_dead_relu_below, assert_loss_decreasing

    def test_loss(trained_run):
        assert_loss_decreasing(trained_run, mode="TRAIN")

    def test_relus(trained_run):
        assert_dead_relu_below(trained_run, percent=50)
"""


def _gate_command() -> list[str]:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(WORKFLOW.read_text())
    steps = workflow["jobs"]["gate"]["steps"]
    script = next(s["run"] for s in steps if s.get("name") == "Model tests")
    joined = script.replace("\\\n", " ")
    line = next(ln for ln in joined.splitlines() if "python -m pytest" in ln)
    # the baseline branch of the script: both runs given
    line = line.replace(
        '"${args[@]}"', "--model-run=candidate=run --model-run-baseline=main=baseline"
    )
    argv = shlex.split(line)
    return argv[argv.index("pytest") + 1 :]


def test_workflow_trains_uploads_and_downloads_mains_run() -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load(WORKFLOW.read_text())
    train = " ".join(s.get("run", "") for s in workflow["jobs"]["train"]["steps"])
    assert "modelrules train --recipe" in train
    gate = workflow["jobs"]["gate"]
    assert gate["needs"] == "train"
    baseline = next(s for s in gate["steps"] if s.get("name") == "Main's run (the baseline)")
    assert baseline["with"]["branch"] == "main" and baseline["with"]["name"] == "model-run"


def test_the_gate_command_runs_as_written(pytester: pytest.Pytester, run_inner, runs) -> None:
    args = _gate_command()
    assert args[0] == "examples/gtsrb"
    assert "--model-run=candidate=run" in args and "--model-run-baseline=main=baseline" in args
    assert "--model-run-required" in args  # a job that lost its run fails, not skips
    # a run its training did not finish is an error, not judged on its first part
    assert args[args.index("-W") + 1] == "error::pytest_modelrules.RunNotEndedWarning"
    shutil.copytree(runs["bad"], pytester.path / "run")
    shutil.copytree(runs["good"], pytester.path / "baseline")
    pytester.mkpydir("examples")
    (pytester.path / "examples" / "gtsrb").mkdir()
    (pytester.path / "examples" / "gtsrb" / "test_model.py").write_text(
        __import__("textwrap").dedent(MODEL_TESTS)
    )
    result = run_inner(*args)
    # the candidate is worse than main: its own tests and the baseline gate fail
    result.stdout.fnmatch_lines_random(
        [
            "FAILED examples/gtsrb/test_model.py::test_loss[[]candidate[]]*",
            "FAILED examples/gtsrb/test_model.py::test_relus[[]candidate[]]*",
            "FAILED modelrules::baseline_comparison[[]candidate[]]*",
        ]
    )
    assert result.ret == 1
    report = pytester.path / "modelrules-report"
    assert (report / "verdicts.json").is_file() and (report / "junit.xml").is_file()
    assert "Compared with baseline 'main'" in result.stdout.str()


def test_the_gate_refuses_a_run_whose_training_did_not_end(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    shutil.copytree(runs["good"], pytester.path / "run")
    (pytester.path / "run" / "workers" / "worker_0" / "END").unlink()  # a killed job's run
    shutil.copytree(runs["good"], pytester.path / "baseline")
    (pytester.path / "examples" / "gtsrb").mkdir(parents=True)
    (pytester.path / "examples" / "gtsrb" / "test_model.py").write_text(
        __import__("textwrap").dedent(MODEL_TESTS)
    )
    result = run_inner(*_gate_command())
    assert result.ret == 1
    result.stdout.fnmatch_lines_random(
        [
            "ERROR examples/gtsrb/test_model.py::test_loss[[]candidate[]]*",
            "FAILED modelrules::baseline_comparison[[]candidate[]]*",
        ]
    )
    result.stdout.fnmatch_lines(
        ["RunNotEndedWarning: --model-run candidate (*/run): the run has not ended*"]
    )
