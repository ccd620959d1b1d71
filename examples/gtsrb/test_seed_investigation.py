"""The seed's investigation as tests: ResNet-18 fine-tuned on GTSRB with SageMaker Debugger.

The blog post ("Detecting hidden but non-trivial problems in transfer learning models using
Amazon SageMaker Debugger") enabled loss_not_decreasing, class_imbalance and dead_relu, then
wrote a custom rule for "Dangerous curve to the left" (19) predicted as "... to the right"
(20) and back. Each check is one test here, run against a recorded run:

    pytest examples/gtsrb --model-run RUN          # a run recorded by `modelrules train`
    pytest examples/gtsrb                          # trains the `seed` recipe once, cached

The `seed` recipe (RandomHorizontalFlip, plain shuffling, 10 epochs) fails the class balance
and direction tests although its test accuracy looks fine; the `fixed` recipe (no flip,
WeightedRandomSampler, 3 epochs) passes all four. See README.md beside this file.
"""

from __future__ import annotations

from pytest_modelrules import (
    assert_class_balance,
    assert_dead_relu_below,
    assert_loss_decreasing,
    assert_no_direction_confusion,
)


def test_loss_keeps_decreasing(trained_run):
    """loss_not_decreasing on the test loss: each evaluation pass sees the same test batches,
    so comparing a step with the one a pass earlier asks "did this epoch still help?".

    The seed ran 10 epochs where ~3 were enough; the rule fires once the loss stops falling.
    """
    per_pass = int(trained_run.metadata.get("eval_steps_per_pass") or 10)
    assert_loss_decreasing(
        trained_run, tensor_regex="CrossEntropyLoss_output_0", mode="EVAL", num_steps=per_pass
    )


def test_classes_balanced_in_training(trained_run):
    """class_imbalance on the labels the model was trained on (the loss's second input).

    GTSRB's largest class has 10.7 times the images of its smallest: plain shuffling shows the
    model that imbalance; a WeightedRandomSampler evens it out. Judged after 5,000 labels
    (~116 a class) rather than the default 500 (~12 a class, where sampling noise alone passes
    a ratio of 10 now and then); the misprediction check is off (``threshold_misprediction=1``):
    counted from step 0 it only says that an untrained model errs.
    """
    assert_class_balance(
        trained_run,
        labels_regex="CrossEntropyLoss_input_1",
        mode="TRAIN",
        samples=5000,
        threshold_misprediction=1.0,
    )


def test_no_direction_confusion_19_20(trained_run):
    """The seed's custom rule: 'Dangerous curve to the left' (19) predicted as '... to the
    right' (20) or back more than 10 times, over the test-set predictions (EVAL).

    A horizontal flip turns one sign into the other, so RandomHorizontalFlip teaches the
    model that they are the same class.
    """
    assert_no_direction_confusion(trained_run, pairs=[(19, 20)], max_confusions=10, mode="EVAL")


def test_relus_alive(trained_run):
    """dead_relu with the seed's parameters: no layer with more than half its units dead."""
    assert_dead_relu_below(trained_run, percent=50.0, tensor_regex="relu_output")
