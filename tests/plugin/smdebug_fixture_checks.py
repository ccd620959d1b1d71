"""Model tests against the shared SageMaker Debugger fixture run, as a project would write them.

Not collected by this suite directly: tests/plugin/test_smdebug_fixture.py runs it through
pytester with ``--model-run=<shared/fixtures/smdebug_sample_run>`` and checks the outcomes.
"""

import pytest

from pytest_modelrules import (
    assert_loss_decreasing,
    assert_no_direction_confusion,
    modes,
)


def test_no_direction_confusion(model_run):
    # the seed's custom rule: 19 and 20 mistaken for each other more than 10 times
    assert_no_direction_confusion(model_run, pairs=[(19, 20)])


def test_loss_decreasing_default_mode(model_run):
    # mode None: the first of EVAL, TRAIN, GLOBAL with data, i.e. EVAL here
    assert_loss_decreasing(model_run)


def test_loss_decreasing_train(model_run):
    result = assert_loss_decreasing(model_run, mode=modes.TRAIN)
    assert result.passed and result.parameters["mode"] == "TRAIN"


def test_loss_decreasing_train_by_name(model_run):
    assert_loss_decreasing(model_run, mode="TRAIN")


@pytest.mark.model_rule("dead_relu", threshold_layer=90)
def test_dead_relu_marker_generous_limit():
    pass
