"""What needs a real subprocess: pytest-xdist workers, and a clean sys.modules."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from .conftest import FAST

XDIST_TESTS = """
    import pytest
    from pytest_modelrules import assert_class_balance, assert_dead_relu_below

    @pytest.mark.parametrize("i", range(6))
    def test_balance(model_run, i):
        assert_class_balance(model_run, samples=10)

    @pytest.mark.parametrize("i", range(4))
    def test_dead(model_run, i):
        assert_dead_relu_below(model_run, percent=50)
"""


@pytest.mark.slow
def test_xdist_evaluates_each_rule_once_per_worker_and_the_controller_reports(
    pytester: pytest.Pytester, runs
) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(XDIST_TESTS)
    pytester.makeini("[pytest]\nmodel_rules =\n    class_imbalance samples=10\n")
    report = pytester.path / "out"
    junit = pytester.path / "junit.xml"
    result = pytester.runpytest_subprocess(
        *FAST,
        "-n",
        "2",
        f"--model-run={runs['good']}",
        f"--model-rules-report={report}",
        f"--junitxml={junit}",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=11)
    # the summary is printed once, by the controller, with every worker's verdicts
    out = result.stdout.str()
    assert out.count("= model rules =") == 1
    result.stdout.fnmatch_lines(["11 verdict(s) on 1 run(s): 0 triggered, 11 not"])
    data = json.loads((report / "verdicts.json").read_text())
    results = data["results"]
    assert len(results) == 11
    workers = {r["worker"] for r in results}
    assert workers <= {"gw0", "gw1"} and workers
    # at most one real evaluation per (worker, run, rule, parameters); the rest from the cache
    evaluated = Counter(
        (r["worker"], r["run_name"], r["name"], json.dumps(r["parameters"], sort_keys=True))
        for r in results
        if not r["cached"]
    )
    assert evaluated and max(evaluated.values()) == 1
    assert sum(evaluated.values()) <= 2 * 2  # two distinct rule calls, two workers
    assert len({r["nodeid"] for r in results}) == 11
    assert "modelrules.dead_relu.triggered" in junit.read_text()


LAZY_CHECK = """
    import sys

    HEAVY = ("torch", "matplotlib", "numpy", "torchvision", "pytest_modelrules.store.run")

    def test_plain():
        assert 1 + 1 == 2

    def test_zz_nothing_heavy_was_imported():
        loaded = [m for m in HEAVY if m in sys.modules]
        assert "pytest_modelrules.plugin" in sys.modules  # the plugin is active ...
        assert loaded == []  # ... and cost nothing
"""


@pytest.mark.slow
def test_a_bad_rule_declaration_is_a_usage_error_under_xdist_too(pytester: pytest.Pytester) -> None:
    """Checked on the controller when pytest starts: one usage error, not the workers'
    internal errors at collection."""
    pytest.importorskip("xdist")
    pytester.makepyprojecttoml(
        "[tool.pytest.ini_options]\n\n[tool.pytest_modelrules]\n"
        "rules = [ { threshold_imbalance = 10 } ]\n"
    )
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest_subprocess(*FAST, "-n", "2", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*rules[[]0[]]: a rule entry needs `rule = *"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.slow
def test_the_plugin_imports_nothing_heavy_in_other_projects_tests(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(LAZY_CHECK)
    result = pytester.runpytest_subprocess(*FAST, "-p", "no:randomly")
    result.assert_outcomes(passed=2)
