"""The overhead benchmark runs (``--quick``) and prints its table; no timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torchvision")
BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_capture.py"


def _script(name: str = "bench_capture"):
    """A script of benchmarks/, imported as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCH.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WRITER = "save_interval=1, writer process"


def test_bench_capture_quick(capsys, tmp_path):
    args = ["--quick", "--writer-process", "--json", str(tmp_path / "figures.json")]
    ratios = _script().main(args)
    out = capsys.readouterr().out
    assert "ResNet-18" in out and "median step (ms)" in out and "Recorder threads CPU" in out
    for label in ("no recorder", "save_interval=500", "save_interval=1", WRITER):
        assert label in out and ratios[label] > 0
    assert ratios["no recorder"] == 1.0
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert set(figures["recorder_threads_cpu_s"]) == set(ratios)
    # a step saved at every step keeps the writer thread busy; the plain loop has none
    assert figures["recorder_threads_cpu_s"]["save_interval=1"] > 0
    if Path("/proc/self/stat").exists():  # the writer process's CPU counts too
        assert figures["recorder_threads_cpu_s"][WRITER] > 0
    assert figures["recorder_threads_cpu_s"]["no recorder"] == 0
    # the training thread's added CPU by phase, for each recording variant
    assert "thread CPU added by phase" in out
    by_phase = figures["thread_cpu_added_by_phase_s"]
    assert set(by_phase) == set(ratios) - {"no recorder"}
    assert all(list(v) == ["forward", "backward", "optimizer"] for v in by_phase.values())


def test_run_steps_splits_the_training_threads_cpu_by_phase():
    """run_steps' phases (forward, backward, optimizer) add up to its per-step CPU time, less
    what the loop itself takes between them."""
    import argparse

    module = _script()
    args = argparse.Namespace(
        width=8, device="cpu", channels_last=False, batch=2, size=16, precision="fp32",
        host_proxy=False,
    )  # fmt: skip
    model, loss_fn, opt, batches = module.build(args)
    _, cpu, phases = module.run_steps(args, model, loss_fn, opt, batches, 3)
    assert len(phases) == len(module.PHASES) == 3 and all(p > 0 for p in phases)
    assert sum(phases) <= cpu * 1.000001 and sum(phases) > 0.8 * cpu


def test_recorder_threads_cpu_counts_the_writer_threads_work(tmp_path):
    """The benchmark's per-thread clock: zero before the Recorder starts a thread, then growing
    with the steps its writer thread writes."""
    import torch

    from pytest_modelrules import Recorder

    module = _script()
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with Recorder(tmp_path / "run", model, save_interval=1) as rec:
        assert module.recorder_threads_cpu(rec) == 0.0  # no step yet: no thread
        model(torch.randn(2, 4))
        model(torch.randn(2, 4))
        first = module.recorder_threads_cpu(rec)
        for _ in range(200):
            model(torch.randn(2, 4))
        # at most 2 steps' writes wait in its queue: it has written the most of these
        assert module.recorder_threads_cpu(rec) > first >= 0


def test_host_proxy_is_resnet18_at_a_narrow_width(capsys, monkeypatch):
    """The proxy must call the same modules, under the same names, as ResNet-18 (what the
    Recorder hooks and names), with next to no arithmetic."""
    import torchvision

    from pytest_modelrules.capture import reductions

    module = _script()
    narrow = module.narrow_resnet18(8)
    full = torchvision.models.resnet18(weights=None, num_classes=43)
    assert type(narrow).__name__ == type(full).__name__ == "ResNet"
    assert [(n, type(m).__name__) for n, m in narrow.named_modules()] == [
        (n, type(m).__name__) for n, m in full.named_modules()
    ]
    assert [n for n, _ in narrow.named_parameters()] == [n for n, _ in full.named_parameters()]
    assert (
        sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 50
    )
    fused_while_built = []
    real_build = module.build

    def build(args):
        fused_while_built.append(set(reductions.FUSED_NORM_DEVICES))
        return real_build(args)

    monkeypatch.setattr(module, "build", build)
    before = set(reductions.FUSED_NORM_DEVICES)
    ratios = module.main(["--quick", "--host-proxy"])
    out = capsys.readouterr().out
    assert "at width 8" in out and "host-cost proxy" in out and "paired ratio" in out
    assert "cpu" in fused_while_built[0]  # the GPU's code path for the norms
    assert before == reductions.FUSED_NORM_DEVICES  # and as it was after
    assert set(ratios) == {"no recorder", "save_interval=500", "save_interval=1"}


def test_a_failing_run_puts_the_module_switches_back(monkeypatch):
    """main() changes the kernels' builders (--stub-kernels) and the fused-norm devices
    (--host-proxy): put back even when the run fails, for the rest of a test session."""
    pytest.importorskip("triton")
    from pytest_modelrules.capture import kernels, reductions

    module = _script()
    builders = kernels._kernel, kernels._norm_kernels
    before = set(reductions.FUSED_NORM_DEVICES)
    seen = []

    def failing_build(args):
        seen.append(((kernels._kernel, kernels._norm_kernels), set(reductions.FUSED_NORM_DEVICES)))
        raise RuntimeError("out of memory")

    monkeypatch.setattr(module, "build", failing_build)
    with pytest.raises(RuntimeError, match="out of memory"):
        module.main(["--quick", "--host-proxy", "--triton", "--stub-kernels"])
    ((stubbed, fused),) = seen
    assert stubbed != builders and "cpu" in fused and "cpu" not in before  # they were changed
    assert (kernels._kernel, kernels._norm_kernels) == builders
    assert before == reductions.FUSED_NORM_DEVICES


def test_profile_writes_op_tables_and_traces_of_both_variants(tmp_path, capsys):
    """``--profile DIR``: the profiler's tables and a trace of the plain loop and of
    save_interval=1; the Recorder's own operations (the ReLU counts' sums) appear only in the
    second (on a CPU the device's busy time is not measured)."""
    _script().main(["--quick", "--profile", str(tmp_path)])
    out = capsys.readouterr().out
    assert "no recorder: wall" in out and "save_interval=1: wall" in out
    plain = (tmp_path / "profile_no_recorder.txt").read_text()
    recorded = (tmp_path / "profile_save_interval_1.txt").read_text()
    assert "aten::convolution_backward" in plain and "aten::convolution_backward" in recorded
    assert "aten::gt" not in plain and "aten::gt" in recorded
    for name in ("trace_no_recorder.json", "trace_save_interval_1.json"):
        assert (tmp_path / name).stat().st_size > 0
    # the training thread's Python by function: the Recorder's hooks only where it records
    python = (tmp_path / "python_save_interval_1.txt").read_text()
    assert "recorder.py" in python and "_opt_pre_hook" in python
    assert "recorder.py" not in (tmp_path / "python_no_recorder.txt").read_text()


def test_triton_adds_a_variant_and_restores_the_switches(capsys, monkeypatch):
    """``--triton``: a fourth variant, save_interval=1 with both Triton kernels (here run by
    Triton's interpreter, tests/conftest.py, on the GPU's code path for the norms), and with
    ``--ablate`` one without the norms kernel; the modules' switches are as they were after."""
    pytest.importorskip("triton")
    from pytest_modelrules.capture import kernels, reductions

    monkeypatch.setattr(kernels, "COUNT_KERNEL_DEVICES", {"cuda"})
    monkeypatch.setattr(kernels, "NORM_KERNEL_DEVICES", {"cuda"})
    monkeypatch.setattr(reductions, "FUSED_NORM_DEVICES", set(reductions.FUSED_NORM_DEVICES))
    calls = {"counts": 0, "norms": 0}
    for what, name in (("counts", "positive_counts_c_order"), ("norms", "multi_norms")):
        real = getattr(kernels, name)

        def spy(*args, _real=real, _what=what, **kwargs):
            calls[_what] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, spy)
    module = _script()
    ratios = module.main(["--quick", "--host-proxy", "--triton", "--ablate"])
    out = capsys.readouterr().out
    assert module.TRITON_LABEL in out and module.NORMS_ABLATION in out
    assert set(ratios) == {
        "no recorder", "save_interval=500", "save_interval=1", module.TRITON_LABEL,
        module.NORMS_ABLATION, *module.ABLATIONS,
    }  # fmt: skip
    assert calls["counts"] > 0 and calls["norms"] > 0  # the kernels' variant ran them
    assert kernels.COUNT_KERNEL_DEVICES == kernels.NORM_KERNEL_DEVICES == {"cuda"}


def test_gpu_kernel_check_quick_compares_the_kernels_with_the_torch_operations(capsys):
    """The GPU script's ``--quick`` form (Triton's interpreter on CPU tensors): ResNet-18's 17
    ReLU shapes at 32 px, each layout, equal counts; five parameters' norms in float32 and
    bfloat16, within 1e-5 of float64's; exit 0."""
    import os

    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET=1 was overridden: the quick form runs on the CPU")
    module = _script("gpu_kernel_check")
    assert [s[1:] for s in module.shapes(64, 224)] == (
        [(64, 112, 112)] + [(64, 56, 56)] * 4 + [(128, 28, 28)] * 4 + [(256, 14, 14)] * 4
        + [(512, 7, 7)] * 4
    )  # fmt: skip
    assert module.main(["--quick"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if "equal=" in line]
    assert len(lines) == 4
    assert all("equal=True" in line and "(17 batches)" in line for line in lines)
    norms = [line for line in out if line.startswith("norms ")]
    assert len(norms) == 2
    assert all("within=True" in line and "(5 tensors)" in line for line in norms)


def test_deferred_adds_variants_and_leaves_the_thread_off(capsys):
    """``--deferred`` (with ``--triton``): save_interval=1 with the device work on the
    Recorder's thread, alone and with the kernel; both switches are off again after."""
    pytest.importorskip("triton")
    from pytest_modelrules.capture import kernels, offload

    before = set(kernels.COUNT_KERNEL_DEVICES)
    module = _script()
    ratios = module.main(["--quick", "--deferred", "--triton"])
    out = capsys.readouterr().out
    assert module.DEFERRED_LABEL in out and module.BOTH_LABEL in out
    assert {module.DEFERRED_LABEL, module.BOTH_LABEL} <= set(ratios)
    assert not offload.DEFER_DEVICES and set(kernels.COUNT_KERNEL_DEVICES) == before


def test_ablate_adds_a_variant_without_each_group_of_collections(capsys, tmp_path, monkeypatch):
    """``--ablate``: save_interval=1 without the ReLU outputs, without the parameters,
    without the inputs and losses; each of those Recorders saves nothing of its group."""
    from pytest_modelrules.capture import recorder

    module = _script()
    made = []
    real_init = recorder.Recorder.__init__

    def spy(self, out_dir, *args, **kwargs):
        made.append((out_dir, kwargs.get("collections")))
        real_init(self, out_dir, *args, **kwargs)

    monkeypatch.setattr(recorder.Recorder, "__init__", spy)
    ratios = module.main(["--quick", "--ablate"])
    out = capsys.readouterr().out
    assert set(module.ABLATIONS) <= set(ratios)
    assert all(label in out for label in module.ABLATIONS)
    off = [sorted(c.name for c in cols) for _, cols in made if cols]
    assert off == [["relu_output"], ["biases", "gradients", "weights"],
                   ["inputs", "loss_inputs", "losses"]]  # fmt: skip
    assert all(c.end_step == 0 for _, cols in made for c in cols or ())  # saves no step


def test_spin_wait_adds_a_variant_and_restores_the_blocking_wait(capsys):
    """``--spin-wait``: save_interval=1 with the writer spinning while it waits (CUDA's
    default), to compare with the blocking wait in one process; the default is back after."""
    from pytest_modelrules.capture import recorder

    module = _script()
    ratios = module.main(["--quick", "--spin-wait"])
    assert module.SPIN_LABEL in capsys.readouterr().out and module.SPIN_LABEL in ratios
    assert recorder.BLOCKING_WAIT is True


def test_gpu_offload_check_quick_finds_the_two_recordings_equal(capsys, tmp_path, monkeypatch):
    """The GPU script's ``--quick`` form: two Recorders on one ResNet-18 loop, one handing its
    work to its thread, every stored value equal; the switches are off again after, and the
    two runs are removed (each run of the suite left a folder in /tmp)."""
    import tempfile

    from pytest_modelrules.capture import kernels, offload

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = set(kernels.COUNT_KERNEL_DEVICES)
    assert _script("gpu_offload_check").main(["--quick", "--no-triton"]) == 0
    out = capsys.readouterr().out
    assert "equal: every value bit for bit" in out and "207 tensors" in out
    assert not offload.DEFER_DEVICES and set(kernels.COUNT_KERNEL_DEVICES) == before
    assert not list(tmp_path.glob("modelrules-offload-check-*"))


def test_gpu_offload_check_names_what_counted(capsys, monkeypatch):
    """With the kernels (Triton's interpreter here) the script says the kernels counted and
    reduced the norms; when one fails it says torch took its place, and the values are still
    equal."""
    from pytest_modelrules.capture import kernels

    check = _script("gpu_offload_check")
    assert check.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "counts by Triton kernel, norms by Triton kernel" in out
    assert "equal: every value bit for bit" in out

    def broken(*args, **kwargs):
        raise RuntimeError("no launch")

    for name, message, failed in (
        ("positive_counts_c_order", "positive-count kernel failed", "counts"),
        ("multi_norms", "norms kernel failed", "norms"),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(kernels, name, broken)
            with pytest.warns(RuntimeWarning, match=message):
                assert check.main(["--quick"]) == 0
        out = capsys.readouterr().out
        assert f"{failed} by torch operations (the Triton kernel failed)" in out
        assert "equal: every value bit for bit" in out


def test_gpu_offload_check_reports_a_difference(capsys, monkeypatch, tmp_path):
    """A thread that stored other values is caught: the script names them and exits 1, and
    keeps the two runs where it says."""
    import tempfile

    from pytest_modelrules.capture import recorder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # kept there, not in /tmp

    real = recorder._unit_counts

    def off_by_one(x, name):
        flat, layout = real(x, name)
        return flat + (threading.current_thread() is not threading.main_thread()), layout

    monkeypatch.setattr(recorder, "_unit_counts", off_by_one)
    assert _script("gpu_offload_check").main(["--quick", "--no-triton"]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and "relu_output" in out
    (kept,) = tmp_path.glob("modelrules-offload-check-*")
    assert f"the two runs are kept in {kept}" in out and (kept / "inline").is_dir()


def _figures(device: str, ratios: dict[str, float], paired=None, **args) -> dict:
    base = {"device": device, "precision": "bf16", "size": 224, "batch": 64}
    if device == "cpu":
        base.update(size=32, precision="fp32")
    return {
        "args": {**base, **args},
        "device": device,
        "ratios": {"no recorder": 1.0, **ratios},
        "paired_ratios": {"no recorder": 1.0, **(paired or ratios)},
    }


def test_capture_goals_judges_each_run_against_the_goal_of_its_device(tmp_path, capsys):
    """GPU runs at the seed's scale against 1.02 / 1.10, CPU runs at 32 px against 1.05 /
    1.25; a save_interval 1 goal is met by its best variant, where both ratios are within
    it; diagnostics (the proxy, full inputs, writer idle) are listed, not judged."""
    goals = _script("capture_goals")
    gpu = _figures(
        "cuda",
        {"save_interval=500": 1.015, "save_interval=1": 1.40, "save_interval=1, deferred": 1.09},
        paired={"save_interval=500": 1.01, "save_interval=1": 1.38,
                "save_interval=1, deferred": 1.095},
    )  # fmt: skip
    lines, ok = goals.judge(gpu)
    text = "\n".join(lines)
    assert ok is True and "best variant 'save_interval=1, deferred' at 1.095" in text
    assert "goal 1.10 met" in text and "goal 1.02 met" in text
    # the paired ratio over the goal is enough to miss it
    over = _figures(
        "cuda",
        {"save_interval=500": 1.0, "save_interval=1": 1.09},
        paired={"save_interval=500": 1.0, "save_interval=1": 1.11},
    )
    lines, ok = goals.judge(over)
    assert ok is False and "goal 1.10 not met" in "\n".join(lines)
    # the same ratios on a CPU run are within the CPU's goals
    cpu = _figures("cpu", {"save_interval=500": 1.04, "save_interval=1": 1.24})
    assert goals.judge(cpu)[1] is True
    assert (
        goals.judge(_figures("cpu", {"save_interval=500": 1.06, "save_interval=1": 1.0}))[1]
        is False
    )
    # a diagnostic variant is listed, never the best one
    spin = _figures(
        "cuda",
        {"save_interval=500": 1.0, "save_interval=1": 1.3, "save_interval=1, spinning wait": 1.0},
    )
    spin["ratios"]["save_interval=1 without ReLU outputs"] = 1.01
    spin["paired_ratios"]["save_interval=1 without ReLU outputs"] = 1.01
    lines, ok = goals.judge(spin)
    text = "\n".join(lines)
    assert ok is False and "best variant 'save_interval=1' at 1.300" in text
    assert any("spinning wait" in line and "diagnostic" in line for line in lines)
    assert any("without ReLU outputs" in line and "diagnostic" in line for line in lines)
    for diagnostic in ({"host_proxy": True}, {"full_inputs": True}, {"no_write": True},
                       {"size": 64}):  # fmt: skip
        lines, ok = goals.judge(_figures("cuda", {"save_interval=1": 3.0}, **diagnostic))
        assert ok is None and "no goal" in lines[0]
    paths = []
    for name, figures in (
        ("gpu", gpu),
        ("cpu", cpu),
        ("proxy", _figures("cpu", {}, host_proxy=True)),
    ):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(figures))
    assert goals.main([str(p) for p in paths]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert goals.main([str(paths[0]), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "bad.json: not a bench_capture.py --json file" in out
    assert goals.main([str(paths[2])]) == 1  # nothing judged


def test_bench_writer_gil_writes_the_recorders_step(tmp_path):
    """The writer benchmark's step holds exactly the tensors a Recorder writes for ResNet-18
    with the default collections (so it times the writer's real work), with their dtypes and
    shapes."""
    import torch
    import torchvision

    from pytest_modelrules import Recorder, open_run
    from pytest_modelrules.store.format import Fraction

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=43)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with Recorder(tmp_path / "run", model, loss=loss_fn, optimizer=opt, save_interval=1):
        opt.zero_grad()
        loss_fn(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
        opt.step()
    run = open_run(tmp_path / "run")
    arrays, scalars = _script("bench_writer_gil").seed_step(32, batch=2)
    names = [n for n, _ in arrays] + [n for row, _ in scalars for n in row]
    assert len(names) == len(set(names))
    assert set(names) == set(run.tensor_names())
    for name, value in arrays:
        recorded = run.tensor(name).value(0)
        expected = value.counts if isinstance(value, Fraction) else np.asarray(value)
        assert recorded.shape == expected.shape, name
        if not isinstance(value, Fraction):
            assert recorded.dtype == expected.dtype, name
    for row, values in scalars:
        assert run.tensor(row[0]).value(0).dtype == values.dtype, row[0]
    assert sum(isinstance(v, Fraction) for _, v in arrays) == 17  # ResNet-18's ReLU calls


def test_bench_writer_gil_quick(capsys, tmp_path):
    added = _script("bench_writer_gil").main(["--quick", "--json", str(tmp_path / "gil.json")])
    out = capsys.readouterr().out
    assert "21 records" in out and "probe step (ms)" in out
    expected = {"writer thread", "control: one GIL-free call (CRC32)", "control: pure Python"}
    assert expected <= set(added)
    figures = json.loads((tmp_path / "gil.json").read_text())
    assert figures["added_s"] == added and figures["step_bytes"] > 0
    # every worker ran once a round, the writers wrote a step each time
    assert all(cpu > 0 for name, cpu in figures["worker_cpu_s"].items() if "writer" in name)
    if "writer process" in added:
        assert "the GIL's share (thread - process)" in out


def test_bench_compile_quick(capsys, tmp_path):
    """The compiled-model benchmark runs its five variants, and no graph is compiled while
    they are timed: recording a compiled model does not recompile it as steps go by."""
    torch_dynamo = pytest.importorskip("torch._dynamo")
    torch_dynamo.reset()
    figures = _script("bench_compile").main(["--quick", "--json", str(tmp_path / "f.json")])
    out = capsys.readouterr().out
    for label in ("eager, no recorder", "compiled, no recorder", "compiled, save_interval=1"):
        assert label in out and figures[label] > 0
    assert figures["compiled, no recorder"] == 1.0
    assert figures["graphs_compiled_while_timed"] == 0
    assert "graphs compiled while timed: 0" in out
    saved = json.loads((tmp_path / "f.json").read_text())
    assert saved["added_s"]["compiled, no recorder"] == 0


def test_stub_kernels_runs_the_gpu_path_without_launches_and_puts_the_kernels_back(capsys):
    """``--stub-kernels`` (with ``--host-proxy --triton``): the Triton variant runs on the CPU
    with no-op launches (no interpreter: the host work alone), and the module's kernel
    builders are the real ones after."""
    pytest.importorskip("triton")
    from pytest_modelrules.capture import kernels

    builders = kernels._kernel, kernels._norm_kernels
    module = _script()
    launched = []
    real_getitem = module._NoLaunch.__getitem__

    def counting(self, grid):
        launched.append(grid)
        return real_getitem(self, grid)

    module._NoLaunch.__getitem__ = counting
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = warnings.filters[:]
        ratios = module.main(["--quick", "--host-proxy", "--triton", "--stub-kernels"])
        assert warnings.filters == filters  # the benchmark's own filter is gone after
    assert not [w for w in caught if "invalid value" in str(w.message)]  # unfilled outputs
    assert module.TRITON_LABEL in ratios and module.TRITON_LABEL in capsys.readouterr().out
    assert launched  # the variant went through the kernels' launches, stubbed
    assert (kernels._kernel, kernels._norm_kernels) == builders
    with pytest.raises(SystemExit):
        module.main(["--quick", "--stub-kernels"])  # needs --host-proxy --triton
