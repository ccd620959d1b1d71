"""Recorder overhead under torch.compile: the compiled ResNet-18 training step without and with
the Recorder (save_interval 500 and 1), side by side; the eager step for reference.

Each variant trains its own copy of one model (the same weights), compiled once after its
Recorder is attached (the way docs/recording.md says to record a compiled model), and the
variants are timed in interleaved rounds (bench_capture.run_steps: a block of steps, the
device synchronised at its ends only). Printed: each variant's median step time, its ratio to
the compiled step without a Recorder (and, paired per round, its median ratio), the time
the Recorder added to a step (against the step of its kind, eager or compiled), the time the
first steps took (compilation included), and how many graphs Dynamo compiled while the
variants were timed (0: no recompilation as steps go by; the Recorder's own code is never
traced). CPU default: 32 px, width 8 (Inductor compiles in a minute or two); on a GPU:

    python benchmarks/bench_compile.py --device cuda --size 224 --width 64 --batch 64 \
        --precision bf16 --channels-last

Not a test: it asserts nothing about timings (``--quick`` just exercises it).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_capture  # the model, the data and the timed loop are shared

BASE = "compiled, no recorder"
EAGER = "eager, no recorder"
VARIANTS = {EAGER: None, "eager, save_interval=1": 1, BASE: None}
VARIANTS.update({"compiled, save_interval=500": 500, "compiled, save_interval=1": 1})


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width", type=int, default=8, help="base width (64: ResNet-18)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--warmup", type=int, default=6, help="untimed steps (compilation)")
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="tiny run (for the test suite)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.rounds, args.warmup = 16, 2, 2, 2, 3
        args.backend = "aot_eager"  # Dynamo and AOTAutograd, no code generation

    import torch
    import torch._dynamo

    from pytest_modelrules import Recorder

    if args.threads:
        torch.set_num_threads(args.threads)
    model, loss_fn, _opt, batches = bench_capture.build(args)
    tmp = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    runs: dict[str, tuple] = {}
    recorders = []
    first_steps: dict[str, float] = {}
    for label, interval in VARIANTS.items():
        net = copy.deepcopy(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
        if interval is not None:
            recorders.append(
                Recorder(tmp / f"run{len(recorders)}", net, loss=loss_fn, optimizer=opt,
                         save_interval=interval)
            )  # fmt: skip
        if label.startswith("compiled"):
            net = torch.compile(net, backend=args.backend)
        runs[label] = (net, opt)
        start = time.perf_counter()
        bench_capture.run_steps(args, net, loss_fn, opt, batches, args.warmup)
        first_steps[label] = time.perf_counter() - start
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    samples: dict[str, list[float]] = {label: [] for label in VARIANTS}
    for _ in range(args.rounds):
        for label, (net, opt) in runs.items():
            wall = bench_capture.run_steps(args, net, loss_fn, opt, batches, args.steps)[0]
            samples[label].append(wall)
    recompiled = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    for rec in recorders:
        rec.close()
    shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(samples[BASE])
    print(
        f"ResNet-18 at width {args.width}, batch {args.batch}, {args.size} px, {args.precision}"
        f"{', channels_last' if args.channels_last else ''}, device {args.device}, torch "
        f"{torch.__version__}, backend {args.backend}; {args.rounds} rounds x {args.steps} "
        f"steps per variant, interleaved"
    )
    print(
        f"{'variant':<30} {'median step (ms)':>17} {'ratio':>7} {'paired ratio':>13} "
        f"{'added (ms)':>11} {'first steps (s)':>16}"
    )
    added = {}
    ratios, paired = {}, {}
    for label in VARIANTS:
        med = statistics.median(samples[label])
        ratios[label] = med / base
        paired[label] = statistics.median(a / b for a, b in zip(samples[label], samples[BASE]))
        own = samples[BASE if label.startswith("compiled") else EAGER]
        added[label] = statistics.median(a - b for a, b in zip(samples[label], own))
        print(
            f"{label:<30} {med * 1e3:>17.2f} {ratios[label]:>7.3f} {paired[label]:>13.3f} "
            f"{added[label] * 1e3:>11.2f} {first_steps[label]:>16.1f}"
        )
    print(f"graphs compiled while timed: {recompiled} (0: no recompilation as steps go by)")
    if args.json:
        figures = {"args": vars(args), "torch": torch.__version__, "ratios": ratios,
                   "paired_ratios": paired, "added_s": added, "first_steps_s": first_steps,
                   "median_step_s": {k: statistics.median(v) for k, v in samples.items()},
                   "graphs_compiled_while_timed": recompiled}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return {"graphs_compiled_while_timed": recompiled, **ratios}


if __name__ == "__main__":
    main()
