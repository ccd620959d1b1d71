"""Terminal summary, JUnit properties, verdicts.json, the HTML report and the plugin's hooks."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

TESTS = """
    from pytest_modelrules import assert_class_balance, assert_dead_relu_below

    def test_balance(model_run):
        assert_class_balance(model_run, samples=10)

    def test_balance_again(model_run):
        assert_class_balance(model_run, samples=10)  # same rule, same parameters: cached

    def test_dead(model_run):
        assert_dead_relu_below(model_run, percent=50)
"""

CONFTEST = """
    SEEN = []

    def pytest_modelrules_result(result, item):
        SEEN.append((result.name, result.triggered, item.nodeid))
        print("HOOK", result.name, result.run_name, item.name)

    def pytest_modelrules_update_json(config, output_json):
        output_json["ci"] = {"job": "unit-test", "hook_calls": len(SEEN)}
"""


def test_summary_junit_and_verdicts(pytester: pytest.Pytester, run_inner, runs) -> None:
    pytester.makepyfile(TESTS)
    pytester.makeconftest(CONFTEST)
    report = pytester.path / "out"
    junit = pytester.path / "junit.xml"
    result = run_inner(
        f"--model-run={runs['good']}",
        f"--model-run={runs['bad']}",
        f"--model-rules-report={report}",
        f"--junitxml={junit}",
        "-s",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=3, failed=3)
    out = result.stdout.str()

    # the terminal table: every rule evaluated, with run, verdict, first step and figure
    result.stdout.fnmatch_lines(
        [
            "*= model rules =*",
            "rule*run*verdict*first step*figure*test",
            "class_imbalance*good*ok*-*largest / smallest class count = 1.1 (limit 10)*"
            "test_balance[[]good[]]",
            "class_imbalance*bad*TRIGGERED*0 (TRAIN 0)*largest / smallest class count = 248.3"
            " (limit 10)*test_balance[[]bad[]]",
        ]
    )
    result.stdout.fnmatch_lines(["6 verdict(s) on 2 run(s): 3 triggered, 3 not"])
    assert f"model rules: verdicts written to {report / 'verdicts.json'}" in out

    # the failure message points at the report's section for this rule and run
    assert f"report: {report / 'report.html'}#rule-dead_relu--bad" in out

    # hooks: once per verdict, in the test's process
    assert out.count("HOOK ") == 6
    assert "HOOK dead_relu bad test_dead[bad]" in out

    # verdicts.json
    data = json.loads((report / "verdicts.json").read_text())
    assert data["version"] == 1
    assert data["runs"] == {"good": str(runs["good"]), "bad": str(runs["bad"])}
    assert data["baselines"] == {}
    assert data["ci"] == {"job": "unit-test", "hook_calls": 6}
    by_node = {r["nodeid"]: r for r in data["results"]}
    assert len(data["results"]) == 6
    bad = by_node["test_summary_junit_and_verdicts.py::test_dead[bad]"]
    assert bad["name"] == "dead_relu" and bad["triggered"] is True
    assert bad["first_trigger"] == {"step": 0, "mode": "TRAIN", "mode_step": 0}
    assert bad["parameters"]["threshold_layer"] == 50
    assert bad["figure"] == pytest.approx(90.0)
    assert "evidence" not in bad
    # the cache: the second test of the same rule and parameters did not evaluate it again
    again = by_node["test_summary_junit_and_verdicts.py::test_balance_again[good]"]
    first = by_node["test_summary_junit_and_verdicts.py::test_balance[good]"]
    assert (first["cached"], again["cached"]) == (False, True)

    # JUnit XML: the verdicts as properties of each test case
    tree = ET.parse(junit)
    cases = {c.get("name"): c for c in tree.iter("testcase")}
    props = {p.get("name"): p.get("value") for p in cases["test_dead[bad]"].iter("property")}
    assert props["modelrules.dead_relu.triggered"] == "true"
    assert props["modelrules.dead_relu.first_step"] == "0"
    assert float(props["modelrules.dead_relu.figure"]) == pytest.approx(90.0)
    assert props["modelrules.dead_relu.run"] == "bad"
    good = {p.get("name"): p.get("value") for p in cases["test_dead[good]"].iter("property")}
    assert good["modelrules.dead_relu.triggered"] == "false"
    assert good["modelrules.dead_relu.first_step"] == ""


def test_html_report_is_written_when_its_module_and_matplotlib_import(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    pytest.importorskip("matplotlib")
    pytester.makepyfile(
        "from pytest_modelrules import assert_dead_relu_below\n"
        "def test_dead(model_run):\n    assert_dead_relu_below(model_run, percent=50)\n"
    )
    report = pytester.path / "out"
    result = run_inner(f"--model-run={runs['bad']}", f"--model-rules-report={report}")
    result.assert_outcomes(failed=1)
    page = report / "report.html"
    assert page.is_file(), result.stdout.str()
    assert "rule-dead_relu" in page.read_text()
    result.stdout.fnmatch_lines([f"model rules: report written to {page}"])


def test_a_broken_report_writer_warns_but_keeps_the_verdicts(
    pytester: pytest.Pytester, run_inner, runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    from pytest_modelrules.report import html

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(html, "write_report_from_verdicts", broken)
    pytester.makepyfile("def test_run(model_run):\n    pass\n")
    report = pytester.path / "out"
    result = run_inner(f"--model-run={runs['good']}", f"--model-rules-report={report}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["model rules: report.html not written: RuntimeError: disk full"])
    assert (report / "verdicts.json").is_file()
    assert result.ret == 0


def test_no_summary_when_no_rule_ran(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run_inner()
    result.assert_outcomes(passed=1)
    assert "model rules" not in result.stdout.str()


def test_string_and_typed_parameters_share_one_evaluation(runs) -> None:
    """``samples="10"`` (ini) and ``samples=10`` (Python) are the same rule call."""
    from pytest_modelrules.pytest.session import cache_key, normalized_params

    a = cache_key(
        runs["good"], "class_imbalance", normalized_params("class_imbalance", {"samples": "10"})
    )
    b = cache_key(
        runs["good"], "class_imbalance", normalized_params("class_imbalance", {"samples": 10})
    )
    c = cache_key(
        runs["good"], "class_imbalance", normalized_params("class_imbalance", {"samples": 11})
    )
    assert a == b != c


HYPOTHESIS_TEST = """
    from hypothesis import given, settings, strategies as st
    from pytest_modelrules import assert_dead_relu_below

    @settings(max_examples=5, deadline=None)
    @given(percent=st.floats(min_value=95, max_value=100))
    def test_generous_limits_pass(model_run, percent):
        assert_dead_relu_below(model_run, percent=percent)
"""


def test_session_fixtures_work_with_hypothesis(pytester: pytest.Pytester, runs) -> None:
    pytest.importorskip("hypothesis")
    pytester.makepyfile(HYPOTHESIS_TEST)
    result = pytester.runpytest_inprocess(f"--model-run={runs['bad']}", "-W", "error")
    result.assert_outcomes(passed=1)
    assert "function_scoped_fixture" not in result.stdout.str()


def test_open_run_hook_can_provide_the_run(pytester: pytest.Pytester, run_inner, runs) -> None:
    pytester.makeconftest(
        f"""
        from pytest_modelrules import open_run

        CALLS = []

        def pytest_modelrules_open_run(config, location, name):
            CALLS.append(location)
            if location == "registry://prod/latest":  # e.g. download from a model registry
                return open_run({str(runs["good"])!r}, name=name)
            return None
        """
    )
    pytester.makepyfile(
        "def test_a(model_run):\n    assert model_run.path.endswith('good')\n"
        "def test_b(model_run):\n    assert model_run.name == 'prod'\n"
    )
    result = run_inner("--model-run=prod=registry://prod/latest", "-rA")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["PASSED *::test_a[[]prod[]]", "PASSED *::test_b[[]prod[]]"])


def _strict(text: str):
    """json.loads refusing NaN / Infinity, as jq and JavaScript's JSON.parse do."""

    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_verdicts_json_is_strict_json_with_non_finite_numbers(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    # a limit of infinity (report the figure, never fail) was written as `Infinity`
    pytester.makepyfile(
        "from pytest_modelrules import assert_rule\n"
        "def test_balance(model_run):\n"
        "    assert_rule(model_run, 'class_imbalance', threshold_imbalance=float('inf'))\n"
    )
    report = pytester.path / "out"
    result = run_inner(f"--model-run={runs['bad']}", f"--model-rules-report={report}")
    result.assert_outcomes(passed=1)
    (entry,) = _strict((report / "verdicts.json").read_text())["results"]
    assert entry["limit"] is None and entry["parameters"]["threshold_imbalance"] is None
    assert entry["figure"] > 100 and entry["triggered"] is False


def test_summary_row_of_a_skipped_verdict_gives_its_reason(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    """docs/assertions.md: a skipped result's row in the summary says why (it showed "-")."""
    pytester.makepyfile(
        "from pytest_modelrules import assert_recall_above\n"
        "def test_recall(model_run):\n"
        "    assert_recall_above(model_run)\n"  # the run has no EVAL steps: skipped
    )
    result = run_inner(f"--model-run={runs['good']}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "recall_floor*good*skipped*-*The run has no EVAL steps with "
            "CrossEntropyLoss_input_1; nothing judged.*test_recall[[]good[]]",
        ]
    )


def test_a_long_skip_reason_is_cut_in_the_summary() -> None:
    from pytest_modelrules.pytest.report import REASON_WIDTH, _figure

    entry = {"skipped": True, "figure": None, "explanation": "word " * 60}
    cell = _figure(entry)
    assert len(cell) <= REASON_WIDTH and cell.endswith("...")
    assert _figure({"skipped": True, "figure": None, "explanation": ""}) == "-"
    assert _figure({"skipped": False, "figure": None, "explanation": "x"}) == "-"
