"""Recorder overhead: ResNet-18 training steps without and with the Recorder, side by side.

Runs the same loop (torchvision resnet18, weights=None, 43 classes, SGD, batch 64, synthetic
data) in three variants - no Recorder, Recorder at save_interval 500, Recorder at save_interval
1 (default collections) - interleaved in rounds (each round times a block of steps, the device
synchronised only at its ends, as in training), and prints the median over rounds of each
variant's step time, images per second and ratio to the baseline, and the median over rounds
of the ratio (and difference) to the same round's baseline ("paired": robust to a machine
whose speed drifts), each variant's best block ("best": for the host-cost proxy, whose
steps are deterministic CPU work, the least disturbed measurement) and the median CPU time
the training thread itself added a step ("thread CPU added": what remains on the thread that
launches a GPU's kernels once the Recorder's threads take their share) and the CPU time of
the Recorder's own threads a step ("Recorder threads CPU": the launcher's and the writer's, what
they can take from the training thread through the interpreter lock), then the training
thread's added CPU by phase of the step (forward pass and loss, backward call, zero_grad and
optimizer step): which of the Recorder's hooks the host time goes to. ``--full-inputs`` also
records the full input images (what the reference job adds for the report's gallery);
``--triton`` adds a variant, save_interval 1 with the Triton kernels for the ReLU counts and
the parameter norms (capture/kernels.py; the default on CUDA, where "save_interval=1" then
uses torch operations for both); ``--deferred`` a variant whose device work the Recorder's
thread launches (capture/offload.py; with ``--triton`` also both together). Diagnostic
variants: ``--ablate`` save_interval 1 without one group of the default collections each (the
ReLU outputs; the parameters; the inputs and losses), and with ``--triton`` without the norms
kernel (the default kernels otherwise); ``--spin-wait`` the writer thread spinning
while it waits for a step's copy to the host (CUDA's default wait; the Recorder's is asleep,
``recorder.BLOCKING_WAIT``). ``--stub-kernels`` (with ``--host-proxy --triton``) runs the
Triton variant on the CPU with every kernel launch replaced by a no-op: the host work of the
GPU's default path (tables, queues, hooks, transfers) without the launches' own cost (about
20-40 microseconds each on a GPU host) or any counting, to compare with the bf16 budget.
``--profile DIR`` writes the profiler's op tables and traces of
a few steps, the device's busy time per step and the training thread's Python by function.
CPU default: 32 px. On a GPU at the seed's scale (all the GPU figures: gpu_figures.sh):

    python benchmarks/bench_capture.py --device cuda --size 224 --precision bf16 --channels-last

Not a test: it asserts nothing about timings (``--quick`` just exercises it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

TRITON_LABEL = "save_interval=1, Triton kernels"
DEFERRED_LABEL = "save_interval=1, deferred"
BOTH_LABEL = "deferred + Triton kernels"
SPIN_LABEL = "save_interval=1, spinning wait"
WRITER_LABEL = "save_interval=1, writer process"
TRITON_WRITER_LABEL = "Triton kernels + writer process"
#: --ablate: save_interval=1 with default collections switched off, a group at a time (the
#: default counting path): what each group of tensors costs a saving step
ABLATIONS = {
    "save_interval=1 without ReLU outputs": ("relu_output",),
    "save_interval=1 without parameters": ("weights", "biases", "gradients"),
    "save_interval=1 without inputs, losses": ("inputs", "losses", "loss_inputs"),
}
#: --ablate with --triton: the default kernels but the parameter norms by torch operations
NORMS_ABLATION = "save_interval=1 without Triton norms"


class _NoLaunch:
    """A Triton kernel whose launches (``kernel[grid](...)``) do nothing."""

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: None


def stub_kernel_launches(kernels: Any) -> Any:
    """--stub-kernels: the Recorder's Triton kernels become no-op launches (capture/kernels.py
    builds them through ``_kernel`` and ``_norm_kernels``), so that the GPU's code path runs
    on a CPU, launches excluded. The values recorded are garbage: a timing diagnostic only.
    Returns a function that puts the real kernel builders back."""
    import types

    def next_power_of_2(n: int) -> int:
        return 1 << max(0, int(n) - 1).bit_length()

    saved = kernels._kernel, kernels._norm_kernels
    filters = warnings.filters[:]
    triton = types.SimpleNamespace(next_power_of_2=next_power_of_2)
    kernels._kernel = lambda: (triton, _NoLaunch())
    kernels._norm_kernels = lambda: (_NoLaunch(), _NoLaunch())
    # the outputs no launch fills hold whatever memory held: their conversion on the writer's
    # side may meet NaNs, which is no news here
    warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)

    def restore() -> None:
        kernels._kernel, kernels._norm_kernels = saved
        warnings.filters[:] = filters

    return restore


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def narrow_resnet18(width: int):
    """ResNet-18's modules, names and call order (torchvision's BasicBlock) at base width
    ``width`` instead of 64: the same kernels launched, the same hooks called, next to no
    arithmetic. On a CPU with tiny images its step time is the host's share of a step (Python,
    dispatcher): a proxy for a GPU step bound by the CPU launching kernels."""
    import torch
    from torch import nn
    from torchvision.models.resnet import BasicBlock

    class ResNet(nn.Module):  # the class name gives the tensor names (ResNet_input_0)
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            inplanes = width
            for i, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
                stride = 1 if i == 0 else 2
                down = None
                if stride != 1 or inplanes != planes:
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
                    )
                blocks = (BasicBlock(inplanes, planes, stride, down), BasicBlock(planes, planes))
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
                inplanes = planes
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(inplanes, 43)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet()


def build(args: argparse.Namespace):
    """Model, loss, optimizer and a few synthetic batches on the device."""
    import torch
    import torchvision

    torch.manual_seed(0)
    if args.width == 64:
        model = torchvision.models.resnet18(weights=None, num_classes=43)
    else:
        model = narrow_resnet18(args.width)
    model = model.to(args.device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    batches = []
    for _ in range(4):
        x = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        y = torch.randint(0, 43, (args.batch,), device=args.device)
        batches.append((x.contiguous(memory_format=fmt), y))
    return model, loss_fn, opt, batches


#: the phases of a step whose training-thread CPU run_steps reports apart
PHASES = ("forward", "backward", "optimizer")


def run_steps(args, model, loss_fn, opt, batches, n: int) -> tuple[float, float, tuple[float, ...]]:
    """Time ``n`` training steps as a block (the device synchronised before and after only,
    as a training loop runs: kernel launches of one step overlap the next): the mean step
    time of the block, the training thread's mean CPU time per step (seconds), and that CPU
    time by phase (:data:`PHASES`: the forward pass and the loss with their hooks, the
    backward call, zero_grad and the optimizer step with its hooks). The CPU time is the
    host cost the training thread itself pays, what bounds a launch-bound GPU step; work the
    Recorder hands to its threads (capture/offload.py) leaves it."""
    import torch

    if args.precision == "bf16":
        amp = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
    else:
        amp = nullcontext()
    clock = time.thread_time
    phases = [0.0, 0.0, 0.0]
    _sync(args.device)
    t0, c0 = time.perf_counter(), clock()
    for i in range(n):
        x, y = batches[i % len(batches)]
        a = clock()
        opt.zero_grad(set_to_none=True)
        b = clock()
        with amp:
            out = model(x)
            loss = loss_fn(out, y)
        c = clock()
        loss.backward()
        d = clock()
        opt.step()
        e = clock()
        phases[0] += c - b
        phases[1] += d - c
        phases[2] += (b - a) + (e - d)
    c1 = clock()  # before the wait for the device (CUDA may spin in it)
    _sync(args.device)
    return (time.perf_counter() - t0) / n, (c1 - c0) / n, tuple(p / n for p in phases)


def recorder_threads_cpu(rec: Any) -> float | None:
    """CPU seconds the Recorder's launcher and writer threads have used so far (None where
    the platform has no per-thread clock). On a launch-bound GPU step they compete with the
    training thread for the interpreter lock: what they use bounds what they can take."""
    getclock = getattr(time, "pthread_getcpuclockid", None)
    if getclock is None:
        return None
    total = 0.0
    for thread in (rec._launcher, rec._thread):  # started on first use, alive until close
        if thread is not None and thread.is_alive() and thread.ident is not None:
            total += time.clock_gettime(getclock(thread.ident))
    pid = getattr(rec.writer, "pid", None)  # a writer process (Linux: /proc): its CPU too
    if pid is not None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None
    return total


def _ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def python_profile(args, model, loss_fn, opt, batches, label: str, path: Path, n: int = 20):
    """The training thread's Python over ``n`` steps of one variant (cProfile: the thread that
    calls it only), the package's functions by cumulative time, then every function by its
    own: where the host time of a launch-bound step goes, which the op tables do not show.
    cProfile's own cost inflates each call alike, so the tables rank; they do not time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    run_steps(args, model, loss_fn, opt, batches, n)
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    text.write(f"{label}: {n} steps, the training thread's Python (cProfile)\n")
    stats.sort_stats("cumulative").print_stats("pytest_modelrules", 40)
    stats.sort_stats("tottime").print_stats(30)
    path.write_text(text.getvalue().replace(str(Path.cwd()) + "/", ""))  # shorter paths


def profile_steps(args, model, loss_fn, opt, batches, label: str, out: Path, n: int = 6) -> None:
    """Profile ``n`` steps of one variant: op tables by host and by device time, and per step
    the wall time and the device's busy time (the sum of its kernels and copies: a step whose
    device is busy for less than its wall time is bound by the host launching work); then
    :func:`python_profile`."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    cuda = args.device.startswith("cuda")
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    run_steps(args, model, loss_fn, opt, batches, 2)
    with profile(activities=activities) as prof:
        wall = run_steps(args, model, loss_fn, opt, batches, n)[0]
    events = prof.key_averages()
    # the device's own events (kernels, copies, memsets): operators carry their kernels' time too
    device_events = [e for e in events if e.device_type == DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in device_events) / n / 1e3 if cuda else float("nan")
    name = re.sub(r"[^0-9A-Za-z]+", "_", label)  # save_interval=1 -> save_interval_1
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"{label}: wall {wall * 1e3:.2f} ms/step, device busy {busy:.2f} ms/step"]
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=80))
    if cuda:
        lines.append(events.table(sort_by="self_device_time_total", row_limit=30))
    (out / f"profile_{name}.txt").write_text("\n".join(lines))
    python_profile(args, model, loss_fn, opt, batches, label, out / f"python_{name}.txt")
    prof.export_chrome_trace(str(out / f"trace_{name}.json"))
    print(lines[0])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--width",
        type=int,
        default=64,
        help="base width (64: ResNet-18; 8 with --size 32 --batch 4 --threads 1: the host-cost "
        "proxy for a launch-bound GPU step)",
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per variant per round (20; 10)"
    )
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (5; 40)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--full-inputs",
        action="store_true",
        help="record the full input images too (save_raw_tensor)",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="diagnostic: the writer threads write nothing (the training thread's share)",
    )
    parser.add_argument(
        "--host-proxy",
        action="store_true",
        help="on a CPU, the host's share of a launch-bound GPU step: --width 8 --size 32 "
        "--batch 4 --threads 1 and the GPU's code path for weight and gradient norms",
    )
    parser.add_argument(
        "--triton",
        action="store_true",
        help="add a variant: save_interval=1 with the Triton kernels for the ReLU positive counts "
        "and the parameter norms (capture/kernels.py; the Recorder's default on CUDA)",
    )
    parser.add_argument(
        "--stub-kernels",
        action="store_true",
        help="diagnostic, with --host-proxy --triton: the Triton variant runs on the CPU with "
        "every kernel launch a no-op (the host work of the GPU's path, launches excluded)",
    )
    parser.add_argument(
        "--deferred",
        action="store_true",
        help="add a variant: save_interval=1 with the step's device work launched by the "
        "Recorder's thread (capture/offload.py; off by default until measured on a GPU)",
    )
    parser.add_argument(
        "--writer-process",
        action="store_true",
        help="add a variant: save_interval=1 written by a process of its own instead of the "
        "writer thread (Recorder(writer_process=True)); with --triton, also with the kernels",
    )
    parser.add_argument(
        "--ablate",
        action="store_true",
        help="diagnostic: add variants, save_interval=1 without the ReLU outputs, without the "
        "parameters (weights, biases, gradients), without the inputs and losses",
    )
    parser.add_argument(
        "--spin-wait",
        action="store_true",
        help="diagnostic: add a variant, save_interval=1 with the writer thread spinning while "
        "it waits for a step's copy (CUDA's default wait) instead of asleep",
    )
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument(
        "--profile",
        default=None,
        help="diagnostic: also profile a few steps of the baseline and of save_interval=1 "
        "(torch.profiler) and write op tables and GPU busy time per step to this folder",
    )
    parser.add_argument("--quick", action="store_true", help="tiny run (for the test suite)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.rounds, args.warmup = 16, 8, 2, 2, 1

    if args.host_proxy:
        args.width, args.size, args.batch, args.threads = 8, 32, 4, 1
        if not args.quick:  # many short blocks: the best of them is the host's cost
            args.steps = args.steps or 10
            args.rounds = args.rounds or 40
    args.steps = args.steps or 20
    args.rounds = args.rounds or 5

    from pytest_modelrules.capture import kernels, reductions

    if args.stub_kernels and (not (args.host_proxy and args.triton) or args.device != "cpu"):
        parser.error("--stub-kernels needs --host-proxy --triton on the CPU")
    # module switches the run changes, put back however it ends (the tests call main())
    fused = set(reductions.FUSED_NORM_DEVICES)
    if args.host_proxy:
        reductions.FUSED_NORM_DEVICES.add("cpu")
    unstub = stub_kernel_launches(kernels) if args.stub_kernels else None
    try:
        return _measure(args)
    finally:
        if unstub is not None:
            unstub()
        reductions.FUSED_NORM_DEVICES.clear()
        reductions.FUSED_NORM_DEVICES.update(fused)


def _measure(args: argparse.Namespace) -> dict[str, float]:
    """Run every variant, interleaved, and print the table: main() after set-up."""
    import torch

    from pytest_modelrules import Recorder
    from pytest_modelrules.capture import CollectionConfig, kernels, offload
    from pytest_modelrules.capture import recorder as recorder_module

    if args.threads:
        torch.set_num_threads(args.threads)
    model, loss_fn, opt, batches = build(args)
    tmp = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    variants = {"no recorder": None, "save_interval=500": 500, "save_interval=1": 1}
    if args.triton:
        variants[TRITON_LABEL] = 1
    if args.deferred:
        variants[DEFERRED_LABEL] = 1
        if args.triton:
            variants[BOTH_LABEL] = 1
    if args.spin_wait:
        variants[SPIN_LABEL] = 1
    if args.writer_process:
        variants[WRITER_LABEL] = 1
        if args.triton:
            variants[TRITON_WRITER_LABEL] = 1
    if args.ablate:
        variants.update(dict.fromkeys(ABLATIONS, 1))
        if args.triton:
            variants[NORMS_ABLATION] = 1
    recorders = {}
    for label, interval in variants.items():
        if interval is not None:
            collections = [CollectionConfig(n, end_step=0) for n in ABLATIONS.get(label, ())]
            if args.full_inputs:
                collections.append(CollectionConfig("inputs", save_raw_tensor=True))
            recorders[label] = Recorder(
                tmp / f"run{len(recorders)}",
                model,
                loss=loss_fn,
                optimizer=opt,
                save_interval=interval,
                collections=collections or None,
                writer_process=label in (WRITER_LABEL, TRITON_WRITER_LABEL),
            )
    # Recorders hook the same model: keep only the active one's hooks live.
    for rec in recorders.values():
        rec._remove_hooks(static=True)
        if args.no_write:
            rec._write_step = lambda *a: None

    # every variant sets the three switches (save_interval=1: torch operations, inline); put
    # back after
    switches = kernels.COUNT_KERNEL_DEVICES, kernels.NORM_KERNEL_DEVICES, offload.DEFER_DEVICES
    defaults = [set(switch) for switch in switches]
    kind = torch.device(args.device).type

    def activate(label: str):
        for other_label, rec in recorders.items():
            rec._remove_hooks(static=True)
            if other_label == label:
                rec._install_static_hooks()
        for switch in switches:
            switch.clear()
        if label in (TRITON_LABEL, BOTH_LABEL, TRITON_WRITER_LABEL):
            kernels.COUNT_KERNEL_DEVICES.add(kind)
            kernels.NORM_KERNEL_DEVICES.add(kind)
        if label in ABLATIONS or label == NORMS_ABLATION:  # the default kernels
            kernels.COUNT_KERNEL_DEVICES.update(defaults[0])
            if label != NORMS_ABLATION:
                kernels.NORM_KERNEL_DEVICES.update(defaults[1])
        if label in (DEFERRED_LABEL, BOTH_LABEL):
            offload.DEFER_DEVICES.add(kind)
        recorder_module.BLOCKING_WAIT = label != SPIN_LABEL

    samples: dict[str, list[float]] = {label: [] for label in variants}
    cpu: dict[str, list[float]] = {label: [] for label in variants}
    by_phase: dict[str, list[tuple[float, ...]]] = {label: [] for label in variants}
    # the Recorder's own threads' CPU time, read as each round starts a variant's block: from
    # the first round to the last, every block and what its threads did after it
    clocks: dict[str, list[float | None]] = {label: [] for label in recorders}
    for label in variants:  # warm-up, each variant
        activate(label)
        run_steps(args, model, loss_fn, opt, batches, args.warmup)
    for _ in range(args.rounds):
        for label in variants:
            activate(label)
            if label in recorders:
                clocks[label].append(recorder_threads_cpu(recorders[label]))
            wall, thread_cpu, phases = run_steps(args, model, loss_fn, opt, batches, args.steps)
            samples[label].append(wall)
            cpu[label].append(thread_cpu)
            by_phase[label].append(phases)
    threads_cpu: dict[str, float | None] = {"no recorder": 0.0}
    for label, readings in clocks.items():
        first, last = readings[0], readings[-1]
        ok = len(readings) > 1 and first is not None and last is not None
        threads_cpu[label] = (last - first) / ((len(readings) - 1) * args.steps) if ok else None
    if args.profile:
        profiled = ["no recorder", "save_interval=1"] + [TRITON_LABEL] * args.triton
        profiled += [DEFERRED_LABEL] * args.deferred
        profiled += [BOTH_LABEL] * (args.deferred and args.triton)
        for label in profiled:
            activate(label)
            profile_steps(args, model, loss_fn, opt, batches, label, Path(args.profile))
    activate("")
    for rec in recorders.values():
        rec.close()
    for switch, default in zip(switches, defaults):
        switch.update(default)
    shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(samples["no recorder"])
    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    print(
        f"ResNet-18{'' if args.width == 64 else f' at width {args.width}'}, batch {args.batch}, "
        f"{args.size} px, {args.precision}"
        f"{', channels_last' if args.channels_last else ''}, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.rounds} rounds x {args.steps} steps per variant, interleaved"
        f"{'; full input images recorded' if args.full_inputs else ''}"
        f"{'; writer thread disabled (--no-write)' if args.no_write else ''}"
        f"{'; host-cost proxy (GPU code path)' if args.host_proxy else ''}"
    )
    print(
        f"{'variant':<40} {'median step (ms)':>17} {'img/s':>9} {'ratio':>7} "
        f"{'paired ratio':>13} {'added (ms)':>11} {'best (ms)':>10} {'best added':>11} "
        f"{'thread CPU added':>17} {'Recorder threads CPU':>21}"
    )
    ratios = {}
    paired = {}
    best = {label: min(samples[label]) for label in variants}
    cpu_added: dict[str, float] = {}
    for label in variants:
        med = statistics.median(samples[label])
        ratios[label] = med / base
        # per round against the same round's baseline: robust to a machine whose speed drifts
        pairs = list(zip(samples[label], samples["no recorder"]))
        paired[label] = statistics.median(a / b for a, b in pairs)
        added = statistics.median(a - b for a, b in pairs)
        cpu_added[label] = statistics.median(a - b for a, b in zip(cpu[label], cpu["no recorder"]))
        print(
            f"{label:<40} {med * 1e3:>17.2f} {args.batch / med:>9.0f} {med / base:>7.3f} "
            f"{paired[label]:>13.3f} {added * 1e3:>11.2f} {best[label] * 1e3:>10.2f} "
            f"{(best[label] - best['no recorder']) * 1e3:>11.2f} "
            f"{cpu_added[label] * 1e3:>17.2f} {_ms(threads_cpu.get(label)):>21}"
        )
    # where on the training thread the CPU was added: per phase, paired with the baseline
    phase_added: dict[str, dict[str, float]] = {}
    print(f"thread CPU added by phase (ms, median over rounds): {' / '.join(PHASES)}")
    for label in variants:
        if label == "no recorder":
            continue
        rounds = list(zip(by_phase[label], by_phase["no recorder"]))
        phase_added[label] = {
            phase: statistics.median(a[k] - b[k] for a, b in rounds)
            for k, phase in enumerate(PHASES)
        }
        shown = " / ".join(f"{v * 1e3:.2f}" for v in phase_added[label].values())
        print(f"  {label:<40} {shown}")
    if args.json:
        figures = {"args": vars(args), "device": device, "torch": torch.__version__,
                   "median_step_s": {k: statistics.median(v) for k, v in samples.items()},
                   "ratios": ratios, "paired_ratios": paired,
                   "best_step_s": best,
                   "thread_cpu_added_s": cpu_added,
                   "thread_cpu_added_by_phase_s": phase_added,
                   "recorder_threads_cpu_s": threads_cpu}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return ratios


if __name__ == "__main__":
    main()
