"""Small synthetic runs for the plugin's tests (written once per session, a few ms each)."""

from __future__ import annotations

from pathlib import Path

import pytest

CLASS_NAMES = [f"sign {i}" for i in range(6)]


def write_run(path: Path, *, plateau: bool, imbalanced: bool, dead: bool = False) -> Path:
    """A native run of 24 TRAIN steps: loss, labels, logits and one ReLU layer.

    ``plateau``: the loss stops decreasing after step 8 (LossNotDecreasing triggers);
    ``imbalanced``: class 0 gets most labels (ClassImbalance triggers, threshold 10);
    ``dead``: 90% of the ReLU units never fire (DeadRelu triggers).
    """
    import numpy as np

    from pytest_modelrules.store.writer import RunWriter

    rng = np.random.default_rng(7)
    writer = RunWriter(path, metadata={"class_names": CLASS_NAMES})
    for g in range(24):
        loss = 2.0 - 0.05 * min(g, 8) if plateau else 2.0 - 0.05 * g
        if plateau and g > 8:
            loss = 1.6 + 0.01 * (g % 3)
        writer.write("CrossEntropyLoss_output_0", np.float32(loss), g, mode="TRAIN")
        if imbalanced:
            labels = np.where(rng.random(64) < 0.97, 0, rng.integers(1, 6, 64))
        else:
            labels = np.arange(64) % 6
        logits = np.eye(6, dtype=np.float32)[labels] * 3.0
        writer.write("CrossEntropyLoss_input_1", labels.astype(np.int64), g, mode="TRAIN")
        writer.write("CrossEntropyLoss_input_0", logits, g, mode="TRAIN")
        act = rng.random((32, 20)).astype(np.float32)
        if dead:
            act[:, :18] = 0.0
        writer.write("layer1.relu_output_0", act, g, mode="TRAIN")
    writer.close()
    return path


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"good": path, "bad": path}: good passes the loss, imbalance and dead-ReLU rules."""
    base = tmp_path_factory.mktemp("runs")
    return {
        "good": write_run(base / "good", plateau=False, imbalanced=False),
        "bad": write_run(base / "bad", plateau=True, imbalanced=True, dead=True),
    }


#: Hypothesis's pytest plugin costs ~2.5 s per in-process run; tests that need it opt back in
FAST = ("-p", "no:hypothesispytest")


@pytest.fixture
def run_inner(pytester: pytest.Pytester):
    """``pytester.runpytest_inprocess`` without Hypothesis's plugin (kept fast)."""

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess(*FAST, *args)

    return run
