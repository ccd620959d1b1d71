"""docs/migrating.md's code runs as written: its recording loops on a tiny model, its
pyproject rules under pytest, its analysis and custom rule on the Debugger fixture run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"
SMDEBUG_RUN = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "smdebug_sample_run"
if not SMDEBUG_RUN.exists():
    SMDEBUG_RUN = Path("/tmp/shared/fixtures/smdebug_sample_run")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOC.read_text(), flags=re.S)


def _name(code: str) -> str:
    """A file name for exec'd code that says where it came from (tracebacks show it)."""
    return f"<{DOC.name} block: {code.strip().splitlines()[0][:40]}>"


def _ours(block: str) -> bool:
    """Code of this project (not the SageMaker code the page starts from)."""
    return "Rule.sagemaker" not in block and "DebuggerHookConfig" not in block


def _python(containing: str) -> str:
    found = [b for b in _blocks("python") if _ours(b) and containing in b]
    assert len(found) == 1, f"{len(found)} python blocks of {DOC.name} hold {containing!r}"
    return found[0]


@pytest.fixture
def training(tmp_path: Path) -> dict:
    """What the seed's script defines before its loop, at toy size."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class ResNet(torch.nn.Module):  # the seed's model class name: ResNet_input_0 is recorded
        def __init__(self) -> None:
            super().__init__()
            self.layer1 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
            self.fc = torch.nn.Linear(4, 5)

        def forward(self, x):
            return self.fc(self.layer1(x).mean((2, 3)))

    model = ResNet()
    data = [(torch.randn(8, 3, 8, 8), torch.randint(0, 5, (8,))) for _ in range(3)]
    return {
        "torch": torch,
        "model": model,
        "loss_function": torch.nn.CrossEntropyLoss(),
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01),
        "train_dataloader": data,
        "val_dataloader": data[:1],
    }


def test_the_recording_loop_records_the_custom_collection(training: dict, tmp_path: Path):
    from pytest_modelrules import open_run

    code = _python("custom_collection").replace('"runs/job1"', repr(str(tmp_path / "job1")))
    exec(compile(code, _name(code), "exec"), training)
    run = open_run(tmp_path / "job1")
    names = set(run.tensor_names(collection="custom_collection"))
    assert {"ResNet_input_0", "CrossEntropyLoss_output_0", "CrossEntropyLoss_input_1"} <= names
    assert run.steps("TRAIN") == [0] and run.steps("EVAL") == [0]  # save_interval 500
    assert run.has_ended


def test_the_rule_monitor_loop_runs(training: dict, tmp_path: Path):
    from pytest_modelrules import open_run

    code = _python("RuleMonitor(").replace('"runs/job1"', repr(str(tmp_path / "job1")))
    step = (
        "optimizer.zero_grad()\n        loss_function(model(inputs), labels).backward()\n"
        "        optimizer.step()\n"
    )
    assert "        ...\n" in code  # the page's loop body, filled in
    code = code.replace("        ...\n", "        " + step)
    exec(compile(code, _name(code), "exec"), training)
    run = open_run(tmp_path / "job1")
    assert run.steps() == [0] and run.has_ended
    assert training["monitor"].rules[0].name == "loss_not_decreasing"
    assert training["rec"].should_stop is False


def test_the_pyproject_rules_become_test_items(pytester: pytest.Pytester, tmp_path: Path):
    (toml,) = _blocks("toml")
    pytester.makepyprojecttoml(toml)
    run = tmp_path / "job1"
    shutil.copytree(SMDEBUG_RUN, run)
    result = pytester.runpytest_inprocess("-p", "no:hypothesispytest", f"--model-run={run}", "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 3, result.stdout.str()
    for rule in ("class_imbalance", "loss_not_decreasing", "dead_relu"):
        result.stdout.fnmatch_lines([f"*modelrules::{rule}[[]job1[]]*"])


def test_evaluate_takes_a_copied_rule_parameters_dict(capsys):
    code = _python("rule_to_invoke").replace('"debug-output"', repr(str(SMDEBUG_RUN)))
    exec(compile(code, _name(code), "exec"), {})
    assert capsys.readouterr().out.startswith("loss_not_decreasing: ok")


def test_the_helpers_block_defines_tests_that_run():
    from pytest_modelrules import ModelRuleFailure, open_run

    namespace: dict = {}
    code = _python("assert_class_balance")
    exec(compile(code, _name(code), "exec"), namespace)
    run = open_run(SMDEBUG_RUN)
    namespace["test_loss"](run)
    with pytest.raises(ModelRuleFailure, match="model rule dead_relu triggered"):
        namespace["test_relus"](run)  # the fixture's layer2 dies during training
    with pytest.raises(ModelRuleFailure, match="model rule class_imbalance triggered"):
        namespace["test_classes"](run)


def test_the_seed_analysis_runs_on_a_debugger_run():
    from pytest_modelrules import open_run

    code = _python("Counter(labels)").replace('"debug-output"', repr(str(SMDEBUG_RUN)))
    namespace: dict = {}
    exec(compile(code, _name(code), "exec"), namespace)
    run = open_run(SMDEBUG_RUN)
    assert sorted(namespace["losses"]) == run.steps("TRAIN")
    assert sum(namespace["label_counts"].values()) == 64 * len(run.steps("TRAIN"))
    assert len(namespace["predictions"]) == len(namespace["eval_labels"]) == 64 * 16
    assert all(0 <= int(p) < 43 for p in namespace["predictions"][:64])
    assert np.asarray(namespace["eval_labels"]).dtype.kind == "i"


def test_the_custom_rule_runs_unchanged(capsys):
    code = _python("class LossAboveOne").replace('"debug-output"', repr(str(SMDEBUG_RUN)))
    exec(compile(code, _name(code), "exec"), {})
    assert re.match(
        r"Evaluation of the rule LossAboveOne at step \d+ resulted in the condition being met",
        capsys.readouterr().out,
    )
