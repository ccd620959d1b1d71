"""The bug zoo: its catalogue and profile hold together, and the quick zoo (a few planted
bugs and a healthy run, short runs) meets the goals: every fault caught by the rule meant for
it, no rule tripped on the healthy run."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[2] / "benchmarks" / "zoo.py"


def _zoo():
    spec = importlib.util.spec_from_file_location("zoo_bench", ZOO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_catalogue_names_rules_of_the_profile_and_hooks_that_exist():
    from pytest_modelrules.rules.profiles import DEFAULT_PROFILE, REASONS, profile_rules
    from pytest_modelrules.training import faults as F

    assert sum(f.healthy for f in F.FAULTS.values()) >= 1
    for f in F.FAULTS.values():
        assert f.healthy == (not f.meant), f.name
        assert set(f.meant) <= set(DEFAULT_PROFILE), f.name
        for hook, table in (
            (f.dataset, F.DATASET_HOOKS),
            (f.transforms, F.TRANSFORM_HOOKS),
            (f.model, F.MODEL_HOOKS),
            (f.optimizer_params, F.PARAM_HOOKS),
        ):
            assert hook is None or hook in table, (f.name, hook)
        rules = profile_rules(intent=dict(f.intent))  # intent parameters are valid ones
        assert set(rules) == set(DEFAULT_PROFILE)
    assert set(REASONS) == set(DEFAULT_PROFILE)  # every threshold has its reason
    with pytest.raises(ValueError, match="unknown fault"):
        F.fault("no_such_bug")


def test_zoo_config_is_the_fixed_recipe_changed_by_the_fault():
    from pytest_modelrules.training.faults import ZOO_SCALE, fault, zoo_config

    healthy = zoo_config(fault("healthy"), seed=3)
    assert (healthy.flip, healthy.sampler, healthy.seed) == (False, "weighted", 3)
    assert healthy.steps == ZOO_SCALE["steps"]
    flip = zoo_config(fault("flip"), seed=3)
    assert flip.flip and flip.key() != healthy.key()
    assert zoo_config(fault("lr_high")).lr > 50 * healthy.lr
    assert zoo_config(fault("overtraining")).steps > healthy.steps


def test_dataset_hooks_do_what_they_say():
    import numpy as np

    from pytest_modelrules.datasets.synthetic import class_counts
    from pytest_modelrules.training.faults import DATASET_HOOKS

    targets = np.repeat(np.arange(43), class_counts(3000))
    rng = np.random.default_rng(0)
    keep, used = DATASET_HOOKS["heavy_imbalance"](targets, rng)
    counts = np.bincount(used, minlength=43)
    assert counts.min() >= 1 and counts.max() / counts.min() > 20
    keep, used = DATASET_HOOKS["label_noise"](targets, rng)
    assert len(keep) == len(targets)
    assert 0.3 < (used != targets).mean() < 0.45  # 40 % relabelled, 1/43 of those unchanged


def test_default_profile_is_a_copy_and_covers_the_default_rules_but_opt_ins():
    from pytest_modelrules.rules.profiles import DEFAULT_PROFILE, OPT_IN, WHEN_RECORDED
    from pytest_modelrules.rules.registry import default_profile, default_rules

    prof = default_profile()
    assert prof == DEFAULT_PROFILE and prof is not DEFAULT_PROFILE
    prof["dead_relu"]["threshold_layer"] = 1.0  # a copy: the profile is unchanged
    assert "threshold_layer" not in DEFAULT_PROFILE["dead_relu"]
    assert set(default_rules()) - set(OPT_IN) <= set(DEFAULT_PROFILE)
    assert set(DEFAULT_PROFILE) >= WHEN_RECORDED and not set(OPT_IN) & set(DEFAULT_PROFILE)


@pytest.mark.slow
def test_quick_zoo_catches_its_faults_without_false_alarms(tmp_path: Path, capsys):
    zoo = _zoo()
    assert zoo.main(["--quick", "--out", str(tmp_path), "--workers", "2"]) == 0
    report = json.loads((tmp_path / "zoo.json").read_text())
    rows = report["rows"]
    assert set(rows) == set(zoo.QUICK_FAULTS)
    for name, row in rows.items():
        if row["healthy"]:
            tripped = [r for r, rate in row["profile"].items() if rate]
            assert not tripped, f"healthy run {name} tripped {tripped}"
        else:
            assert row["profile_caught"] == 1.0, f"{name}: meant {row['meant']}, {row['profile']}"
    assert report["goals"]["met"]
    md = (tmp_path / "zoo.md").read_text()
    assert "| healthy |" in md and "SageMaker" in md
    assert "| healthy |" in capsys.readouterr().out  # the matrix is printed
