"""End to end: the seed recipe fails examples/gtsrb for the seed's reasons, the fix passes.

Both recipes train at the CPU defaults (32 px, 6,000 generated images and 50 test images a
class, 600 steps, seed 0), in
two processes at once with one thread each (two cores), then examples/gtsrb runs against
each run in a pytest subprocess (``--model-run``). Sizes and the verdicts over seeds:
docs/reference_job.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_modelrules.cli import _outcomes, run_examples
from pytest_modelrules.datasets import SignsConfig, write_gtsrb
from pytest_modelrules.training.job import METRICS_FILE

STEPS = "600"
EXAMPLES = (
    "test_loss_keeps_decreasing",
    "test_classes_balanced_in_training",
    "test_no_direction_confusion_19_20",
    "test_relus_alive",
)


@pytest.mark.slow
def test_seed_fails_for_the_right_reasons_and_fixed_passes(tmp_path: Path, capsys):
    t0 = time.perf_counter()
    data = write_gtsrb(tmp_path / "data", SignsConfig(train_images=6000, test_per_class=50))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {
        recipe: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest_modelrules.cli",
                "train",
                "--recipe",
                recipe,
                "--out",
                str(tmp_path / recipe),
                "--data",
                str(data),
                "--steps",
                STEPS,
                "--seed",
                "0",
                "--device",
                "cpu",
                "--threads",
                "1",
                "--no-progress",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for recipe in ("seed", "fixed")
    }
    for recipe, proc in procs.items():
        out, _ = proc.communicate(timeout=1800)
        assert proc.returncode == 0, f"{recipe}: {out}"
    t_train = time.perf_counter() - t0
    metrics = {r: json.loads((tmp_path / r / METRICS_FILE).read_text()) for r in procs}
    texts, outcomes = {}, {}
    for recipe in procs:
        _, texts[recipe] = run_examples(tmp_path / recipe)
        outcomes[recipe] = _outcomes(texts[recipe])
        assert set(outcomes[recipe]) == set(EXAMPLES), texts[recipe]

    with capsys.disabled():
        for r in procs:
            m = metrics[r]
            print(f"\n[e2e] {r:5}: accuracy {m['accuracy']:.3f} (balanced test set), "
                  f"GTSRB-weighted {m['gtsrb_accuracy']:.3f}; mirror confusions "
                  f"{m['mirror_confusions']}; verdicts {outcomes[r]}")  # fmt: skip
        print(f"[e2e] training {t_train:.0f} s, total {time.perf_counter() - t0:.0f} s")

    # the fix passes every example test
    assert all(v == "PASSED" for v in outcomes["fixed"].values()), texts["fixed"]
    # the seed run fails the direction test because 19 and 20 are confused ...
    assert outcomes["seed"]["test_no_direction_confusion_19_20"] == "FAILED", texts["seed"]
    assert "model rule direction_confusion triggered" in texts["seed"]
    why = texts["seed"].split("model rule direction_confusion triggered", 1)[1]
    assert "19 (Dangerous curve to the left)" in why
    assert "20 (Dangerous curve to the right)" in why
    # ... which the flip did: the same pair is (nearly) never confused without it
    assert metrics["seed"]["mirror_confusions"]["19-20"] > 10
    assert metrics["fixed"]["mirror_confusions"]["19-20"] <= 10
    # and the class balance test, because plain shuffling shows GTSRB's imbalance
    assert outcomes["seed"]["test_classes_balanced_in_training"] == "FAILED", texts["seed"]
    # accuracy alone would not tell: the seed run still scores well on GTSRB's proportions
    assert metrics["seed"]["gtsrb_accuracy"] > 0.5
