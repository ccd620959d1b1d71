"""Recorder overhead: ResNet-18 training steps without and with the Recorder, side by side.

Runs the same loop (torchvision resnet18, weights=None, 43 classes, SGD, batch 64, synthetic
data) in three variants - no Recorder, Recorder at save_interval 500, Recorder at save_interval
1 (default collections) - interleaved in rounds (each round times a block of steps, the device
synchronised only at its ends, as in training), and prints the median over rounds of each
variant's step time, images per second and ratio to the baseline. ``--full-inputs`` also
records the full input images (what the reference job adds for the report's gallery).
CPU default: 32 px. On a GPU at the seed's scale (all the GPU figures: gpu_figures.sh):

    python benchmarks/bench_capture.py --device cuda --size 224 --precision bf16 --channels-last

Not a test: it asserts nothing about timings (``--quick`` just exercises it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(args: argparse.Namespace):
    """Model, loss, optimizer and a few synthetic batches on the device."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=43).to(args.device)
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


def run_steps(args, model, loss_fn, opt, batches, n: int) -> list[float]:
    """Time ``n`` training steps as a block (the device synchronised before and after only,
    as a training loop runs: kernel launches of one step overlap the next); the mean step
    time of the block (seconds), in a one-element list."""
    import torch

    if args.precision == "bf16":
        amp = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
    else:
        amp = nullcontext()
    _sync(args.device)
    t0 = time.perf_counter()
    for i in range(n):
        x, y = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        with amp:
            out = model(x)
            loss = loss_fn(out, y)
        loss.backward()
        opt.step()
    _sync(args.device)
    return [(time.perf_counter() - t0) / n]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
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
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="tiny run (for the test suite)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.rounds, args.warmup = 16, 8, 2, 1, 1

    import torch

    from pytest_modelrules import Recorder
    from pytest_modelrules.capture import CollectionConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    model, loss_fn, opt, batches = build(args)
    tmp = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    variants = {"no recorder": None, "save_interval=500": 500, "save_interval=1": 1}
    recorders = {}
    for label, interval in variants.items():
        if interval is not None:
            recorders[label] = Recorder(
                tmp / f"run{interval}",
                model,
                loss=loss_fn,
                optimizer=opt,
                save_interval=interval,
                collections=[CollectionConfig("inputs", save_raw_tensor=True)]
                if args.full_inputs
                else None,
            )
    # Recorders hook the same model: keep only the active one's hooks live.
    for rec in recorders.values():
        rec._remove_hooks(static=True)
        if args.no_write:
            rec._write_step = lambda *a: None

    def activate(label: str):
        for other_label, rec in recorders.items():
            rec._remove_hooks(static=True)
            if other_label == label:
                rec._install_static_hooks()

    samples: dict[str, list[float]] = {label: [] for label in variants}
    for label in variants:  # warm-up, each variant
        activate(label)
        run_steps(args, model, loss_fn, opt, batches, args.warmup)
    for _ in range(args.rounds):
        for label in variants:
            activate(label)
            samples[label].extend(run_steps(args, model, loss_fn, opt, batches, args.steps))
    activate("")
    for rec in recorders.values():
        rec.close()
    shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(samples["no recorder"])
    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name()})"
    print(
        f"ResNet-18, batch {args.batch}, {args.size} px, {args.precision}"
        f"{', channels_last' if args.channels_last else ''}, device {device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.rounds} rounds x {args.steps} steps per variant, interleaved"
        f"{'; full input images recorded' if args.full_inputs else ''}"
        f"{'; writer thread disabled (--no-write)' if args.no_write else ''}"
    )
    print(f"{'variant':<20} {'median step (ms)':>17} {'img/s':>9} {'ratio':>7}")
    ratios = {}
    for label in variants:
        med = statistics.median(samples[label])
        ratios[label] = med / base
        print(f"{label:<20} {med * 1e3:>17.2f} {args.batch / med:>9.0f} {med / base:>7.3f}")
    if args.json:
        figures = {"args": vars(args), "device": device, "torch": torch.__version__,
                   "median_step_s": {k: statistics.median(v) for k, v in samples.items()},
                   "ratios": ratios}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return ratios


if __name__ == "__main__":
    main()
