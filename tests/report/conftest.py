"""Runs the report's tests draw: the smdebug fixture run (and a native copy of its truth, so
the checks hold whichever reader is used), and synthetic GTSRB-like runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from report_synthetic import write_demo_run

from pytest_modelrules.modes import ModeKeys
from pytest_modelrules.store.writer import RunWriter


def _native_copy_of_truth(truth: dict[str, np.ndarray], path: Path) -> Path:
    """The fixture run's every value, written with RunWriter under the same tensor names."""
    rows = truth["__steps__"]
    by_step: dict[int, list[str]] = {}
    for key in truth:
        if key != "__steps__":
            g, _, name = key.partition("/")
            by_step.setdefault(int(g), []).append(name)
    with RunWriter(path) as w:
        for g, mode, mode_step, saved in rows.tolist():
            if not saved:
                continue
            for name in sorted(by_step.get(g, [])):
                w.write(name, truth[f"{g}/{name}"], g, ModeKeys(mode).name, mode_step)
    return path


@pytest.fixture(scope="session")
def truth_copy_dir(smdebug_truth, tmp_path_factory) -> Path:
    return _native_copy_of_truth(smdebug_truth, tmp_path_factory.mktemp("truth") / "sample_run")


@pytest.fixture(scope="session", params=["smdebug", "native-copy"])
def fixture_run(request, smdebug_fixture_dir, truth_copy_dir):
    """The fixture run as SageMaker Debugger wrote it, and the same values in our format."""
    from pytest_modelrules import open_run

    if request.param == "native-copy":
        return open_run(truth_copy_dir)
    try:
        return open_run(smdebug_fixture_dir)
    except ModuleNotFoundError as exc:
        if exc.name != "pytest_modelrules.store.smdebug":
            raise
        pytest.skip("the smdebug-layout reader (store/smdebug.py) has not landed yet")


@pytest.fixture(scope="session")
def demo_run_dir(tmp_path_factory) -> Path:
    return write_demo_run(tmp_path_factory.mktemp("demo") / "demo_run")


@pytest.fixture(scope="session")
def baseline_run_dir(tmp_path_factory) -> Path:
    """The "fixed" run: balanced sampling, no flip confusion."""
    path = tmp_path_factory.mktemp("demo") / "fixed_run"
    return write_demo_run(path, seed=1, balanced=True, flip_confusion=0.0)


@pytest.fixture(scope="session")
def demo_report(demo_run_dir, baseline_run_dir, tmp_path_factory) -> Path:
    """The full report of the demo run against the fixed run, default rules evaluated."""
    from pytest_modelrules.report.html import write_report

    out = tmp_path_factory.mktemp("report")
    return write_report(demo_run_dir, out, baseline=baseline_run_dir)
