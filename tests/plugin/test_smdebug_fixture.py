"""The helpers against the real SageMaker Debugger fixture run (shared/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("smdebug_fixture_checks.py")


def test_helpers_on_the_smdebug_fixture_run(
    pytester: pytest.Pytester, run_inner, smdebug_fixture_dir: Path
) -> None:
    pytester.makepyfile(test_smdebug_checks=CHECKS.read_text())
    result = run_inner(f"--model-run={smdebug_fixture_dir}", "-rA")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "FAILED *::test_no_direction_confusion[[]smdebug_sample_run[]]*",
            "FAILED *::test_loss_decreasing_default_mode[[]smdebug_sample_run[]]*",
            "PASSED *::test_loss_decreasing_train[[]smdebug_sample_run[]]",
            "PASSED *::test_loss_decreasing_train_by_name[[]smdebug_sample_run[]]",
            "PASSED *::test_dead_relu_marker_generous_limit[[]smdebug_sample_run[]]",
        ]
    )
    out = result.stdout.str()
    confusion = out.split("test_no_direction_confusion[smdebug_sample_run] _")[1].split("\n____")[0]
    assert "model rule direction_confusion triggered on run 'smdebug_sample_run'" in confusion
    assert "pairs=[(19, 20)]" in confusion and "limit=10" in confusion
    # both classes and the count, in the evidence line
    assert "class 19 <-> class 20: confused 65 times" in confusion
    assert "(limit 10)" in confusion
    assert "first triggered at global step 10 (TRAIN step 6)" in confusion

    loss = out.split("test_loss_decreasing_default_mode[smdebug_sample_run] _")[1].split("\n____")[
        0
    ]
    assert "model rule loss_not_decreasing triggered" in loss
    assert "first triggered at global step 28 (EVAL step 10)" in loss
    assert "CrossEntropyLoss_output_0 (EVAL, 16 steps" in loss
    assert any(c in loss for c in "▁▂▃▄▅▆▇█")  # the sparkline
    assert ">28: 3.282" in loss  # the loss values around the trigger
