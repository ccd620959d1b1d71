"""GPU check of the reference job: seed-scale training with and without the Recorder.

    python benchmarks/gpu_check.py            # on a GPU machine: 224 px, batch 64, 300 steps
    python benchmarks/gpu_check.py --quick    # anywhere: tiny CPU settings (the test suite's)

Generates synthetic GTSRB signs at the image size, trains the ``seed`` recipe (ResNet-18,
SGD, RandomResizedCrop + flip, bf16 autocast and channels_last on a GPU) for ``--steps``
steps twice - without recording, then recorded with the seed's collections - and prints
images per second of each (after a warm-up) and the Recorder's overhead. Under 5 minutes on
one H100 (generation ~1 minute of that).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny CPU settings (seconds)")
    p.add_argument("--steps", type=int, default=None, help="steps per measurement (300)")
    p.add_argument("--image-size", type=int, default=None, help="224 (quick: 32)")
    p.add_argument("--batch-size", type=int, default=None, help="64 (quick: 16)")
    p.add_argument("--train-images", type=int, default=None, help="2000 (quick: 100)")
    p.add_argument("--device", default=None, help="auto (quick: cpu)")
    p.add_argument("--workers", type=int, default=None, help="data-loader workers (GPU 8)")
    p.add_argument("--save-interval", type=int, default=None, help="the seed's 500 (quick: 2)")
    p.add_argument("--out", default=None, help="folder for data and runs (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    from pytest_modelrules.training.job import train
    from pytest_modelrules.training.recipes import make_config

    quick = args.quick
    pick = lambda value, full, small: value if value is not None else (small if quick else full)  # noqa: E731
    device = pick(args.device, "auto", "cpu")
    steps = pick(args.steps, 300, 4)
    settings = {
        "image_size": pick(args.image_size, 224, 32),
        "batch_size": pick(args.batch_size, 64, 16),
        "train_images": pick(args.train_images, 2000, 100),
        "test_per_class": 1 if quick else 5,
        "test_images": 0,
        "save_interval": pick(args.save_interval, 500, 2),
        "epochs": 1,
        "steps": steps,
        "progress": not quick,
    }
    if args.workers is not None:
        settings["workers"] = args.workers
    if quick:
        settings["threads"] = 1
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="modelrules-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = make_config("seed", device=device, **settings)
    name = torch.cuda.get_device_name(0) if cfg.device.startswith("cuda") else "cpu"
    print(f"device: {cfg.device} ({name}); {cfg.image_size} px, batch {cfg.batch_size}, "
          f"{steps} steps, amp={cfg.amp and cfg.device != 'cpu'}, "
          f"channels_last={cfg.channels_last}, workers={cfg.workers}", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    from pytest_modelrules.training.job import prepare_data

    prepare_data(cfg, work / "data")
    t_data = time.perf_counter() - t0
    print(f"generated {cfg.train_images} training images in {t_data:.1f} s", flush=True)

    figures: dict = {"device": name, "config": cfg.key_dict(), "generate_s": round(t_data, 1)}
    for label, record in (("without Recorder", False), ("with Recorder", True)):
        out = work / ("recorded" if record else "plain")
        t = time.perf_counter()
        r = train(cfg, out, data_dir=work / "data", record=record, log=lambda m: None)
        figures[label] = {
            "images_per_second": round(r.steady_images_per_second or r.images_per_second, 1),
            "wall_s": round(time.perf_counter() - t, 1),
            "accuracy": round(r.accuracy, 3),
        }
        print(f"{label:17}: {figures[label]['images_per_second']:8.1f} img/s "
              f"({figures[label]['wall_s']} s for the job)", flush=True)  # fmt: skip
    a = figures["without Recorder"]["images_per_second"]
    b = figures["with Recorder"]["images_per_second"]
    figures["recorder_overhead_percent"] = round(100 * (a - b) / a, 1) if a else None
    print(f"Recorder overhead: {figures['recorder_overhead_percent']}% "
          f"(total {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
