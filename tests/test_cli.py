"""The ``modelrules`` command line: generate, train, info, check, report, demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pytest_modelrules import RunWriter, cli

TINY_FLAGS = [
    "--image-size", "32", "--batch-size", "16", "--train-images", "100",
    "--test-per-class", "1", "--steps", "4", "--epochs", "2", "--save-interval", "2",
    "--device", "cpu", "--threads", "1", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", "--recipe", "fixed", "--out", str(out), *TINY_FLAGS]) == 0
    return out


def test_generate_writes_the_official_layout(tmp_path: Path, capsys):
    code = cli.main(["generate", "--out", str(tmp_path), "--train-images", "86",
                     "--test-per-class", "1", "--size", "16", "--quiet"])  # fmt: skip
    assert code == 0
    assert "wrote 129 images (16 px)" in capsys.readouterr().out
    assert len(list((tmp_path / "gtsrb/GTSRB/Training").glob("*/*.ppm"))) == 86
    assert len(list((tmp_path / "gtsrb/GTSRB/Final_Test/Images").glob("*.ppm"))) == 43


def test_generate_again_says_nothing_was_written(tmp_path: Path, capsys):
    """The same config a second time is a no-op (docs/reference_job.md); it said "wrote"."""
    argv = ["generate", "--out", str(tmp_path), "--train-images", "43", "--test-per-class", "1",
            "--size", "16", "--quiet"]  # fmt: skip
    assert cli.main(argv) == 0
    assert "wrote 86 images (16 px)" in capsys.readouterr().out
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "wrote" not in out
    assert "already holds these 86 images (16 px): nothing written" in out


def test_train_prints_accuracies_and_records(tiny_run: Path, capsys):
    from pytest_modelrules import open_run

    run = open_run(tiny_run)
    assert run.metadata["recipe"] == "fixed" and run.metadata["config"]["sampler"] == "weighted"
    assert run.metadata["config"]["steps"] == 4


def test_info_says_what_the_run_holds(tiny_run: Path, tmp_path: Path, capsys):
    import json

    from pytest_modelrules import open_run

    out_json = tmp_path / "info.json"
    assert cli.main(["info", str(tiny_run), "--regex", "^CrossEntropyLoss",
                     "--json", str(out_json)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    run = open_run(tiny_run)
    train, evals = run.steps(mode="TRAIN"), run.steps(mode="EVAL")
    assert f"run: {tiny_run} (native layout), 1 worker (worker_0), ended" in out
    assert f"TRAIN {len(train)} ({train[0]}-{train[-1]})" in out
    assert f"EVAL {len(evals)} ({evals[0]}-{evals[-1]})" in out
    assert "(43 class names)" in out and "tensors: 3" in out
    summary = json.loads(out_json.read_text())
    names = ["CrossEntropyLoss_input_0", "CrossEntropyLoss_input_1", "CrossEntropyLoss_output_0"]
    assert [t["name"] for t in summary["tensors"]] == names
    for entry in summary["tensors"]:
        tensor = run.tensor(entry["name"])
        last = tensor.value(tensor.steps()[-1])
        assert entry["steps"] == len(tensor.steps())
        assert (entry["dtype"], entry["shape"]) == (str(last.dtype), list(last.shape))
        assert f"{entry['name']}" in out and f"{last.dtype} {tuple(last.shape)}" in out
    # collections count their members, reductions with the tensor they reduce
    assert summary["collections"]["weights"] == len(run.tensor_names(collection="weights"))
    assert not any("gradient" in n for n in run.tensor_names(collection="weights"))


def test_info_errors_exit_2_with_one_line(tiny_run: Path, tmp_path: Path, capsys):
    assert cli.main(["info", str(tmp_path / "nothing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert cli.main(["info", str(tiny_run), "--regex", "("]) == 2
    assert "regex: '(' is not a regular expression" in capsys.readouterr().err


def test_check_exit_codes(tiny_run: Path, capsys):
    # 64 labels over 43 classes are never exactly balanced: the rule triggers -> exit 1
    assert cli.main(["check", str(tiny_run), "--rule",
                     "class_imbalance:threshold_imbalance=1;samples=1"]) == 1  # fmt: skip
    out = capsys.readouterr().out
    assert "class_imbalance" in out and "1 rule(s) triggered" in out
    assert cli.main(["check", str(tiny_run), "--rule", "dead_relu:threshold_layer=100"]) == 0
    assert "no rule triggered (1 judged, 0 not judged)" in capsys.readouterr().out


def test_check_default_rules_and_json(tiny_run: Path, tmp_path: Path, capsys):
    code = cli.main(["check", str(tiny_run), "--json", str(tmp_path / "r.json")])
    assert code in (0, 1)
    assert (tmp_path / "r.json").is_file()
    assert "rules on" in capsys.readouterr().out


def test_report_writes_html(tiny_run: Path, tmp_path: Path, capsys):
    assert cli.main(["report", str(tiny_run), "--out", str(tmp_path / "rep")]) == 0
    path = Path(capsys.readouterr().out.strip().split("report: ")[-1])
    assert path.is_file() and path.suffix == ".html"


def test_report_without_the_module_says_so(tiny_run: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pytest_modelrules.report.html", None)
    assert cli.main(["report", str(tiny_run), "--out", str(tmp_path)]) == 2
    assert "HTML report is not available" in capsys.readouterr().err


def test_missing_data_folder_is_a_clear_error(tmp_path: Path, capsys):
    code = cli.main(["train", "--out", str(tmp_path / "r"), "--data", str(tmp_path / "none"),
                     *TINY_FLAGS])  # fmt: skip
    assert code == 2
    assert "no GTSRB data under" in capsys.readouterr().err


def test_rule_spec_parsing():
    assert cli._parse_rule_spec("dead_relu") == ("dead_relu", {})
    assert cli._parse_rule_spec("class_imbalance:threshold_imbalance=5;samples=10") == (
        "class_imbalance", {"threshold_imbalance": "5", "samples": "10"},
    )  # fmt: skip
    with pytest.raises(ValueError, match="'oops' is not key=value"):
        cli._parse_rule_spec("dead_relu:oops")


def test_demo_reports_what_the_rules_catch(tmp_path: Path, monkeypatch, capsys):
    """The demo's bookkeeping, with training and the example run stubbed out."""

    def fake_train(recipe, out, overrides, data_dir=None):
        acc = {"seed": 0.71, "fixed": 0.86}[recipe]
        cfg = SimpleNamespace(recipe=recipe)
        return SimpleNamespace(config=cfg, accuracy=acc, balanced_accuracy=acc,
                               gtsrb_accuracy=acc + 0.1, mirror_confusions={"19-20": 9},
                               train_steps=600, train_seconds=40.0, images_per_second=900.0,
                               run_dir=out)  # fmt: skip

    def fake_examples(run_dir, extra=()):
        seed = Path(run_dir).name == "seed"
        state = "FAILED" if seed else "PASSED"
        return (1 if seed else 0), (
            f"{state} test_x.py::test_no_direction_confusion_19_20[run] - boom\n"
            "PASSED test_x.py::test_relus_alive\n"
        )

    monkeypatch.setattr(cli, "_train", fake_train)
    monkeypatch.setattr(cli, "run_examples", fake_examples)
    assert cli.main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "rules caught in the seed run: test_no_direction_confusion_19_20" in out
    assert "cleared by the fix: test_no_direction_confusion_19_20" in out
    assert "seed recipe : test accuracy 0.710" in out and "fixed recipe: test accuracy 0.860" in out


def test_run_examples_accepts_a_run_path_relative_to_the_callers_folder(
    tmp_path: Path, monkeypatch, smdebug_fixture_dir: Path
):
    """The examples run in their own folder; a relative run path must still find the run."""
    import shutil

    shutil.copytree(smdebug_fixture_dir, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    code, text = cli.run_examples(Path("run"))
    outcomes = cli._outcomes(text)
    assert set(outcomes) == {
        "test_loss_keeps_decreasing",
        "test_classes_balanced_in_training",
        "test_no_direction_confusion_19_20",
        "test_relus_alive",
    }, text
    assert "ERROR" not in outcomes.values(), text
    # the fixture run confuses 19 and 20 far more than 10 times
    assert outcomes["test_no_direction_confusion_19_20"] == "FAILED"
    assert code == 1


def test_check_errors_are_exit_2_and_one_line(tmp_path, capsys, tiny_run):
    """Bad input exits 2 with one line: an output path that is a file, a malformed --rule;
    a run no rule can judge exits 2 too (an empty run must not pass a gate); a named rule
    whose tensors the run lacks is a "not judged" row, not the end of the check."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.main(["check", str(tiny_run), "--json", str(afile / "x.json")]) == 2
    assert "modelrules: " in capsys.readouterr().err
    assert cli.main(["check", str(tiny_run), "--rule", "dead_relu:threshold_layer"]) == 2
    assert "is not key=value (parameters are name:key=value;key=value)" in capsys.readouterr().err
    empty = tmp_path / "empty"
    RunWriter(empty).close()  # a run, with nothing in it
    assert cli.main(["check", str(empty)]) == 2
    assert "no rule could judge" in capsys.readouterr().err
    code = cli.main(
        ["check", str(tiny_run), "--rule", "dead_relu", "--rule", "saturated_activation"]
    )
    out = capsys.readouterr().out  # ResNet has no tanh or sigmoid: that rule is not judged
    assert code in (0, 1) and "1 judged, 1 not judged" in out


def test_check_of_a_run_without_loss_is_not_judged(tmp_path: Path, capsys):
    """The default profile on a run holding only an unrelated tensor exited 0 ("2 judged":
    exploding_tensor and stalled_training_rule judge any run with steps): a gate passed a run
    missing its loss. It is "not judged" (exit 2), one line saying what is missing; rules
    named with --rule still judge it, and a run with a loss passes."""
    foo = tmp_path / "foo"
    with RunWriter(foo) as w:
        for g in range(5):
            w.write("foo", np.ones(3) * g, g)
    assert cli.main(["check", str(foo)]) == 2
    captured = capsys.readouterr()
    assert "no rule triggered" not in captured.out
    assert captured.err == (
        "modelrules: not judged: the run 'foo' holds no loss tensor (no losses collection, no "
        "scalar named *loss*): the loss rules (loss_not_decreasing, overfit, overtraining) "
        "judged no loss; the run holds foo (2 judged, 13 not judged; name the rules to run "
        "with --rule)\n"
    )
    assert cli.main(["check", str(foo), "--rule", "exploding_tensor"]) == 0
    assert "no rule triggered (1 judged, 0 not judged)" in capsys.readouterr().out
    loss = tmp_path / "loss"
    with RunWriter(loss) as w:
        for g in range(5):
            w.write("CrossEntropyLoss_output_0", np.float32(1.0 / (g + 1)), g, "TRAIN")
    assert cli.main(["check", str(loss)]) == 0
    assert "no rule triggered" in capsys.readouterr().out


def test_check_of_a_regression_run_judges_it(tmp_path: Path, capsys):
    """An MSELoss run: the classification rules are "not judged" rows naming the loss, and
    the check judges the rest (it used to stop at exit 2 on "MSELoss_input_0 holds
    fractional values")."""
    rng = np.random.default_rng(0)
    with RunWriter(tmp_path / "reg") as w:
        for g in range(30):
            w.write("MSELoss_input_0", rng.normal(size=(16, 1)).astype(np.float32), g, "TRAIN")
            w.write("MSELoss_input_1", rng.normal(size=(16, 1)).astype(np.float32), g, "TRAIN")
            w.write("MSELoss_output_0", np.float32(1.0 / (g + 1)), g, "TRAIN")
    assert cli.main(["check", str(tmp_path / "reg"), "--json", str(tmp_path / "r.json")]) == 0
    assert capsys.readouterr().err == ""
    rows = {r["name"]: r for r in json.loads((tmp_path / "r.json").read_text())}
    assert rows["class_imbalance"]["skipped"] and rows["noisy_labels"]["skipped"]
    assert "MSELoss takes no class labels" in rows["class_imbalance"]["explanation"]
    assert not rows["loss_not_decreasing"]["skipped"]


def test_a_rule_that_cannot_read_the_run_is_an_error_row_and_the_rest_are_judged(
    tmp_path: Path, capsys
):
    """Channel-last logits (a custom loss's) are a ClassAxisError for the classification
    rules: each is an ERROR row saying why, the loss rules are still judged and shown, and
    the check exits 2 (it used to stop at the first such rule, with no table)."""
    rng = np.random.default_rng(0)
    with RunWriter(tmp_path / "nhwc") as w:
        for g in range(30):
            logits = rng.normal(size=(4, 2, 3, 5)).astype(np.float32)  # (N, H, W, C)
            w.write("CrossEntropyLoss_input_0", logits, g, "TRAIN")
            w.write("CrossEntropyLoss_input_1", rng.integers(0, 5, (4, 2, 3)), g, "TRAIN")
            w.write("CrossEntropyLoss_output_0", np.float32(1.0 / (g + 1)), g, "TRAIN")
    out_json = tmp_path / "r.json"
    assert cli.main(["check", str(tmp_path / "nhwc"), "--json", str(out_json)]) == 2
    captured = capsys.readouterr()
    rows = {r["name"]: r for r in json.loads(out_json.read_text())}
    assert rows["class_imbalance"]["error"].startswith("ClassAxisError: CrossEntropyLoss_input_0")
    assert rows["class_imbalance"]["skipped"] and not rows["class_imbalance"]["triggered"]
    assert rows["loss_not_decreasing"]["error"] == "" and not rows["loss_not_decreasing"]["skipped"]
    assert "ERROR" in captured.out and "loss_not_decreasing" in captured.out
    errored = sorted(name for name, r in rows.items() if r["error"])
    assert "class_imbalance" in errored
    assert f"rule(s) could not read {tmp_path / 'nhwc'}: {', '.join(errored)}" in (
        captured.err.replace("\n", " ")
    )


def test_wrong_rule_parameters_still_stop_the_check(tmp_path: Path, capsys):
    run = _empty_run(tmp_path / "run")
    assert cli.main(["check", str(run), "--rule", "dead_relu:threshold_layer=abc"]) == 2
    assert "threshold_layer" in capsys.readouterr().err


def _empty_run(path: Path) -> Path:
    with RunWriter(path) as w:
        w.write("CrossEntropyLoss_output_0", np.float32(1.0), 0, "TRAIN")
    return path


def test_report_with_an_empty_out_is_a_usage_error(tmp_path: Path, monkeypatch, capsys):
    """``--out ''`` (an unset CI variable) wrote the report into the current folder."""
    run = _empty_run(tmp_path / "run")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert cli.main(["report", str(run), "--out", ""]) == 2
    captured = capsys.readouterr()
    assert captured.err == "modelrules: --out is empty (an unset variable?): give a path\n"
    assert captured.out == ""
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["report", "{run}", "--out", "{out}", "--baseline", ""], "--baseline"),
        (["report", "", "--out", "{out}"], "RUN"),
        (["check", "{run}", "--json", ""], "--json"),
        (["check", "{run}", "--baseline", "  "], "--baseline"),
        (["check", ""], "RUN"),
        (["info", "{run}", "--json", ""], "--json"),
        (["generate", "--out", ""], "--out"),
        (["train", "--out", ""], "--out"),
        (["train", "--out", "{out}", "--data", ""], "--data"),
        (["train", "--out", "{out}", "--weights", ""], "--weights"),
        (["demo", "--out", ""], "--out"),
    ],
)
def test_an_empty_path_argument_is_a_usage_error(argv, flag, tmp_path: Path, monkeypatch, capsys):
    """Every path option: an empty value exits 2 with one line before the command runs (it
    meant the current folder, or was dropped: ``--baseline ''`` checked without a baseline)."""
    ran: list[str] = []
    for name in ("generate", "train", "info", "check", "report", "demo"):
        monkeypatch.setattr(cli, f"cmd_{name}", lambda args, name=name: ran.append(name) or 0)
    run = _empty_run(tmp_path / "run")
    args = [a.format(run=run, out=tmp_path / "out") for a in argv]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err == f"modelrules: {flag} is empty (an unset variable?): give a path\n"
    assert ran == []


def test_output_cut_short_by_the_reader_is_no_error(tmp_path: Path):
    """`modelrules info RUN | head -1`: the reader going away is no bad input. It used to
    print "modelrules: [Errno 32] Broken pipe" and exit 2; now nothing on stderr, exit 141
    (a shell's status for a writer stopped by SIGPIPE)."""
    import subprocess

    run = _empty_run(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest_modelrules.cli", "info", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before the command writes: its first write finds no reader
    _, err = proc.communicate(timeout=120)
    assert err.decode() == "" and proc.returncode == 141


def test_check_json_of_a_nan_loss_is_strict_json(tmp_path: Path, capsys):
    """A run whose loss went NaN - the run a gate must catch - wrote `NaN` into --json (the
    rules' evidence holds the loss values), which jq and JavaScript refuse: null now."""
    with RunWriter(tmp_path / "nan") as w:
        for g in range(20):
            loss = np.float32("nan") if g >= 12 else np.float32(2.0 - 0.1 * g)
            w.write("CrossEntropyLoss_output_0", loss, g, "TRAIN")
    out = tmp_path / "r.json"
    assert cli.main(["check", str(tmp_path / "nan"), "--json", str(out)]) == 1

    def refuse(constant: str):
        raise ValueError(f"not strict JSON: {constant}")

    rows = {r["name"]: r for r in json.loads(out.read_text(), parse_constant=refuse)}
    assert rows["exploding_tensor"]["triggered"]
    assert None in rows["loss_not_decreasing"]["evidence"]["CrossEntropyLoss_output_0/values"]


def _relu_run(path: Path, dead_units: int) -> Path:
    """24 TRAIN steps of a falling loss, balanced labels and a 20-unit ReLU layer of which
    ``dead_units`` never fire."""
    rng = np.random.default_rng(7)
    with RunWriter(path, metadata={"class_names": [f"c{i}" for i in range(6)]}) as w:
        for g in range(24):
            labels = np.arange(64) % 6
            w.write("CrossEntropyLoss_output_0", np.float32(2.0 - 0.05 * g), g, "TRAIN")
            w.write("CrossEntropyLoss_input_1", labels.astype(np.int64), g, "TRAIN")
            w.write("CrossEntropyLoss_input_0", np.eye(6, dtype=np.float32)[labels], g, "TRAIN")
            act = rng.random((32, 20)).astype(np.float32)
            act[:, :dead_units] = 0.0
            w.write("layer1.relu_output_0", act, g, "TRAIN")
    return path


def test_check_with_a_baseline_compares_with_it(tmp_path: Path, capsys):
    """`modelrules check RUN --baseline MAIN` with the default profile opened the baseline
    and compared nothing (no rule of the profile takes one): a run with 40% dead ReLUs against
    a baseline with none - under dead_relu's 50% limit, but a regression - exited 0."""
    main = _relu_run(tmp_path / "main", dead_units=0)
    worse = _relu_run(tmp_path / "worse", dead_units=8)
    assert cli.main(["check", str(worse)]) == 0  # on its own it passes every rule
    capsys.readouterr()
    out_json = tmp_path / "r.json"
    assert cli.main(["check", str(worse), "--baseline", str(main), "--json", str(out_json)]) == 1
    assert "1 rule(s) triggered: baseline_comparison" in capsys.readouterr().out
    rows = {r["name"]: r for r in json.loads(out_json.read_text())}
    assert rows["baseline_comparison"]["triggered"] and not rows["dead_relu"]["triggered"]
    assert cli.main(["check", str(main), "--baseline", str(main)]) == 0


def test_json_dash_writes_the_json_alone_to_stdout(tiny_run: Path, tmp_path: Path, capsys):
    """`modelrules check RUN --json - | jq ...`: stdout holds the JSON and nothing else (the
    table and the verdict line go to stderr), for info too; before, a file named "-"."""
    code = cli.main(["check", str(tiny_run), "--json", "-"])
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert {r["name"] for r in rows} >= {"loss_not_decreasing", "class_imbalance"}
    assert "judged" in err and code in (0, 1)
    assert cli.main(["info", str(tiny_run), "--json", "-"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["workers"] and "tensors:" in err
    assert not (Path.cwd() / "-").exists()


def test_crop_scale_help_names_each_scales_default(capsys):
    """`modelrules train --help` said (0.08 1.0), the GPU default only: the CPU runs crop at
    (0.5, 1.0) (training/recipes.py, docs/reference_job.md)."""
    from pytest_modelrules.training.recipes import CPU_DEFAULTS, GPU_DEFAULTS

    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    help_ = text.split("--crop-scale MIN MAX", 2)[2].split(" --", 1)[0]
    for scale, defaults in (("GPU", GPU_DEFAULTS), ("CPU", CPU_DEFAULTS)):
        low, high = defaults["crop_scale"]
        assert f"{scale} {low} {high}" in help_, help_
