"""The model_rule marker and rules declared in pyproject.toml / the ini as test items."""

from __future__ import annotations

import pytest

MARKER_TESTS = """
    import pytest

    @pytest.mark.model_rule("dead_relu", threshold_layer=50)
    def test_dead_relu_marker_only():
        pass

    @pytest.mark.model_rule("class_imbalance", samples=10)
    def test_marker_with_body(model_run):
        assert model_run.has_tensor("CrossEntropyLoss_input_1")
"""


def test_marker_runs_the_rule_per_run_and_parametrizes_tests_that_do_not_ask(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    pytester.makepyfile(MARKER_TESTS)
    result = run_inner(f"--model-run={runs['good']}", f"--model-run={runs['bad']}", "-rA")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "PASSED *::test_dead_relu_marker_only[[]good[]]",
            "PASSED *::test_marker_with_body[[]good[]]",
            "FAILED *::test_dead_relu_marker_only[[]bad[]]*",
            "FAILED *::test_marker_with_body[[]bad[]]*",
        ]
    )
    out = result.stdout.str()
    # the failure shows the rule's message, not the plugin's frames
    assert "model rule dead_relu triggered on run 'bad'" in out
    assert "threshold_layer=50" in out
    assert "first triggered at global step 0 (TRAIN step 0)" in out
    assert "pytest_runtest_call" not in out and "plugin.py" not in out


def test_marker_without_a_run_skips(pytester: pytest.Pytester, run_inner) -> None:
    pytester.makepyfile(MARKER_TESTS)
    result = run_inner("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] *:3: no model run given*", "SKIPPED*:7: no model*"]
    )


def test_marker_is_registered(pytester: pytest.Pytester, run_inner) -> None:
    result = run_inner("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.model_rule(name, [*][*]params): run the built-in rule*"]
    )
    pytester.makepyfile(MARKER_TESTS)
    strict = run_inner("--strict-markers", "--collect-only", "-q")
    assert strict.ret == 0


PYPROJECT = """
[tool.pytest_modelrules]
rules = [
    {rule = "class_imbalance", samples = 10},
    {rule = "dead_relu", threshold_layer = 50, xfail = "layer1 dies in the bad run (issue 7)"},
    {rule = "loss_not_decreasing", id = "train_loss", mode = "TRAIN"},
]
"""


def test_pyproject_rules_become_items_with_ids_and_strict_xfail(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = run_inner(
        f"--model-run={runs['good']}", f"--model-run={runs['bad']}", "-rA", "-p", "no:randomly"
    )
    result.stdout.fnmatch_lines_random(
        [
            "PASSED modelrules::class_imbalance[[]good[]]",
            "FAILED modelrules::class_imbalance[[]bad[]]*",
            # declared xfail, strict by default: passing on the good run is a failure
            "FAILED modelrules::dead_relu[[]good[]]*XPASS(strict)*",
            "XFAIL modelrules::dead_relu[[]bad[]]*issue 7*",
            "PASSED modelrules::train_loss[[]good[]]",
            "FAILED modelrules::train_loss[[]bad[]]*",
            "PASSED test_pyproject_rules_become_items_with_ids_and_strict_xfail.py::test_plain",
        ]
    )
    result.assert_outcomes(passed=3, failed=3, xfailed=1)
    out = result.stdout.str()
    # repr_failure: the rule's message, no Python traceback
    assert "[XPASS(strict)] layer1 dies in the bad run (issue 7)" in out
    section = out.split("model rule class_imbalance on bad (pyproject.toml")[1].split("\n_")[0]
    assert "model rule class_imbalance triggered on run 'bad'" in section
    assert "most frequent:" in section and "0 (sign 0)" in section
    assert "Traceback" not in section and "def runtest" not in section and "items.py" not in section


def test_ini_rule_lines_with_non_strict_xfail_and_k_deselection(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    pytester.makeini(
        """
        [pytest]
        model_rules =
            class_imbalance samples=10 threshold_imbalance=10
            dead_relu threshold_layer=50 xfail="dying layer" strict=false
        """
    )
    result = run_inner(f"--model-run={runs['good']}", "-rA")
    result.assert_outcomes(passed=1, xpassed=1)
    result.stdout.fnmatch_lines_random(
        ["PASSED modelrules::class_imbalance[[]good[]]", "XPASS modelrules::dead_relu[[]good[]]*"]
    )
    deselected = run_inner(f"--model-run={runs['good']}", "-k", "not modelrules")
    deselected.assert_outcomes(deselected=2)


def test_declared_rules_without_a_run_skip_and_bad_declarations_name_the_file(
    pytester: pytest.Pytester, run_inner
) -> None:
    pytester.makepyprojecttoml(PYPROJECT)
    result = run_inner("-rs")
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["SKIPPED [[]3[]] pyproject.toml:1: no model run given*"])

    pytester.makepyprojecttoml("[tool.pytest_modelrules]\nrules = [{threshold = 3}]\n")
    broken = run_inner()
    assert broken.ret != 0
    broken.stderr.fnmatch_lines(
        ["*pyproject.toml [[]tool.pytest_modelrules[]] rules[[]0[]]: a rule entry needs*"]
    )


def test_skips_are_reported_at_the_file_that_declared_each_rule(
    pytester: pytest.Pytester, run_inner
) -> None:
    """With rules in pyproject.toml and in the ini file, each skip names its own file (the ini's
    were reported at pyproject.toml)."""
    pytester.makepyprojecttoml('[tool.pytest_modelrules]\nrules = [{ rule = "dead_relu" }]\n')
    pytester.makeini("[pytest]\nmodel_rules =\n    class_imbalance samples=10\n")
    result = run_inner("-rs")
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED [[]1[]] pyproject.toml:1: no model run given*",
            "SKIPPED [[]1[]] tox.ini:1: no model run given*",  # makeini writes tox.ini
        ]
    )


def test_an_unknown_rule_or_parameter_errors_with_the_rule_message(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    pytester.makeini(
        """
        [pytest]
        model_rules =
            no_such_rule
            dead_relu threshold_layr=5
        """
    )
    result = run_inner(f"--model-run={runs['good']}", "-rA")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "unknown rule 'no_such_rule'" in out or "no_such_rule" in out.split("FAILURES")[1]
    assert "threshold_layr" in out and "threshold_layer" in out
    assert f"(declared in {pytester.path / 'tox.ini'} model_rules line 2)" in out


def test_a_marker_rule_that_cannot_run_shows_its_error_not_plugin_frames(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.model_rule('vanishing_gradient')\n"
        "def test_gradients():\n    pass\n"
        "@pytest.mark.model_rule('dead_relu', threshold_layr=5)\n"
        "def test_typo():\n    pass\n"
    )
    result = run_inner(f"--model-run={runs['good']}")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "MissingTensorError: VanishingGradient: no gradient tensors" in out
    assert "RuleParameterError: DeadRelu: unknown parameter(s) threshold_layr" in out
    assert "markers.py" not in out and "plugin.py" not in out


def test_the_plugin_can_be_disabled(pytester: pytest.Pytester, run_inner, runs) -> None:
    pytester.makepyfile("def test_run(model_run):\n    pass\n")
    result = run_inner("-p", "no:modelrules")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'model_run' not found*"])


def test_a_marker_without_a_rule_or_with_extra_positional_arguments_is_refused(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.model_rule('class_imbalance', 'extra')\n"
        "def test_extra():\n    pass\n"
        "@pytest.mark.model_rule()\n"
        "def test_none():\n    pass\n"
    )
    result = run_inner(f"--model-run={runs['good']}")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*model_rule('class_imbalance', ...) takes one rule name, then parameters by name;"
            " got ('extra',) too*",
            "*@pytest.mark.model_rule needs a rule name*",
        ],
        consecutive=False,
    )


def test_pyproject_rules_may_be_one_line_strings_as_in_the_ini(tmp_path) -> None:
    """``rules = ["NAME key=value ...", {table}]``: a line reads as the ini's model_rules
    line does; anything else is refused naming the entry."""
    from pytest_modelrules.pytest.config_rules import ConfigRuleError, from_pyproject

    path = tmp_path / "pyproject.toml"
    path.write_text(
        "[tool.pytest_modelrules]\nrules = [\n"
        '    "class_imbalance samples=10 threshold_imbalance=10",\n'
        "    'dead_relu threshold_layer=50 xfail=\"dying layer\" strict=false',\n"
        '    {rule = "loss_not_decreasing", id = "train_loss", mode = "TRAIN"},\n]\n'
    )
    first, second, third = from_pyproject(path)
    assert (first.rule, first.params) == (
        "class_imbalance",
        {"samples": "10", "threshold_imbalance": "10"},
    )
    assert (second.rule, second.params, second.xfail, second.strict) == (
        "dead_relu",
        {"threshold_layer": "50"},
        "dying layer",
        False,
    )
    assert (third.rule, third.id, third.params) == (
        "loss_not_decreasing",
        "train_loss",
        {"mode": "TRAIN"},
    )
    path.write_text('[tool.pytest_modelrules]\nrules = ["dead_relu threshold_layer", 3]\n')
    with pytest.raises(ConfigRuleError, match=r"rules\[0\]: 'threshold_layer' is not key=value"):
        from_pyproject(path)
    path.write_text("[tool.pytest_modelrules]\nrules = [3]\n")
    with pytest.raises(ConfigRuleError, match=r"rules\[0\] must be a table or a 'NAME"):
        from_pyproject(path)


def test_last_failed_reruns_the_declared_rules_that_failed(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    # `pytest --lf` in CI after a red build: the failed rule items are rerun, not deselected
    pytester.makepyprojecttoml(
        PYPROJECT.replace(', xfail = "layer1 dies in the bad run (issue 7)"', "")
    )
    pytester.makepyfile("def test_plain():\n    pass\n")
    args = (f"--model-run={runs['good']}", f"--model-run={runs['bad']}", "-p", "no:randomly")
    first = run_inner(*args)
    first.assert_outcomes(passed=4, failed=3)
    again = run_inner(*args, "--lf", "-rA")
    again.assert_outcomes(failed=3, deselected=4)
    again.stdout.fnmatch_lines_random(
        [
            "FAILED modelrules::class_imbalance[[]bad[]]*",
            "FAILED modelrules::dead_relu[[]bad[]]*",
            "FAILED modelrules::train_loss[[]bad[]]*",
        ]
    )


def test_the_collected_line_counts_the_declared_rules(
    pytester: pytest.Pytester, run_inner, runs
) -> None:
    # CI logs read "collected 7 items / 5 deselected / 2 selected", not "-3 selected"
    pytester.makepyprojecttoml(PYPROJECT)
    pytester.makepyfile("def test_plain():\n    pass\n")
    args = (f"--model-run={runs['good']}", f"--model-run={runs['bad']}", "--tb=no")
    result = run_inner(*args, "-k", "dead_relu or train_loss and bad")
    result.stdout.fnmatch_lines(["collected 7 items / 4 deselected / 3 selected"])
    result.assert_outcomes(failed=2, xfailed=1, deselected=4)
    only_rules = run_inner(*args, "-k", "modelrules")
    only_rules.stdout.fnmatch_lines(["collected 7 items / 1 deselected / 6 selected"])
    listed = run_inner(*args, "--collect-only", "-q")
    listed.stdout.fnmatch_lines(["7 tests collected*"])
