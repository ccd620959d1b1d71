"""On a CUDA GPU: a run recorded with the step's device work on the Recorder's thread and side
stream (pytest_modelrules/capture/offload.py) holds the same values, bit for bit, as the same
steps recorded from the training thread.

    python benchmarks/gpu_offload_check.py

Two Recorders watch one training loop (ResNet-18, 43 classes, SGD, bf16 autocast and
channels_last; 224 px, batch 32, 6 steps, then 2 EVAL steps): one does its device work on the
training thread, the other hands it to its thread, with the Triton kernels on (``--no-triton``:
off). Both read the very same tensors, so every stored value must be equal. Prints a summary
and exits 1 on any difference. Not a test (CI has no GPU); the test suite runs the ``--quick``
form (CPU tensors, ResNet-18 at width 8, 32 px, batch 4; Triton kernels interpreted) and
tests/capture/test_offload.py covers the CPU path.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np


def _values(path: Path) -> dict[tuple[str, int], np.ndarray]:
    from pytest_modelrules import open_run

    run = open_run(path)
    return {
        (name, step): value
        for name in run.tensor_names()
        for step, value in run.tensor(name).values().items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="CPU tensors, ResNet-18 at width 8, 32 px, batch 4"
    )
    parser.add_argument("--no-triton", action="store_true", help="torch operations only")
    args = parser.parse_args(argv)
    import torch

    from pytest_modelrules.capture import reductions

    if not args.quick and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    if not args.quick:
        return _check(args, "cuda", 224, 32)
    # CPU tensors on the GPU's code path for the parameter norms (put back after)
    fused_before = set(reductions.FUSED_NORM_DEVICES)
    reductions.FUSED_NORM_DEVICES.add("cpu")
    try:
        return _check(args, "cpu", 32, 4)
    finally:
        reductions.FUSED_NORM_DEVICES.clear()
        reductions.FUSED_NORM_DEVICES.update(fused_before)


def _bench_capture() -> Any:
    """benchmarks/bench_capture.py, imported from beside this script."""
    path = Path(__file__).with_name("bench_capture.py")
    spec = importlib.util.spec_from_file_location("bench_capture", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check(args: argparse.Namespace, device: str, size: int, batch: int) -> int:
    """Record the loop with both Recorders, compare, print; the exit status."""
    import torch
    import torchvision

    from pytest_modelrules import Recorder, modes

    kind = torch.device(device).type
    torch.manual_seed(0)
    if kind == "cuda":
        model = torchvision.models.resnet18(weights=None, num_classes=43).to(device)
    else:  # the same modules and names at width 8: Triton's interpreter reads every weight
        model = _bench_capture().narrow_resnet18(8)
    model = model.to(memory_format=torch.channels_last)
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = torch.autocast(device, dtype=torch.bfloat16) if kind == "cuda" else nullcontext()
    gen = torch.Generator().manual_seed(0)

    def batch_of(n: int):
        x = torch.randn(n, 3, size, size, generator=gen).to(device)
        return x.contiguous(memory_format=torch.channels_last), torch.randint(0, 43, (n,)).to(
            device
        )

    tmp = Path(tempfile.mkdtemp(prefix="modelrules-offload-check-"))
    common = {"loss": loss_fn, "optimizer": opt, "save_interval": 1}
    common["triton"] = not args.no_triton
    inline = Recorder(tmp / "inline", model, offload=False, **common)
    deferred = Recorder(tmp / "deferred", model, offload=True, **common)
    try:
        for _ in range(6):
            x, y = batch_of(batch)
            opt.zero_grad()
            with amp:
                loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
        for rec in (inline, deferred):
            rec.set_mode(modes.EVAL)
        with torch.no_grad(), amp:
            for _ in range(2):
                model(batch_of(batch)[0])
    finally:
        inline.close()
        deferred.close()
    for rec in (inline, deferred):
        if rec.error is not None:
            print(f"recording failed: {rec.error!r} (the runs are kept in {tmp})")
            return 1
    a, b = _values(tmp / "inline"), _values(tmp / "deferred")
    name = torch.cuda.get_device_name() if kind == "cuda" else "cpu"
    made_by = []
    for what, attr in (("counts", "_kernel_devices"), ("norms", "_norm_kernel_devices")):
        if args.no_triton:
            made_by.append(f"{what} by torch operations")
        elif all(kind in getattr(rec, attr) for rec in (inline, deferred)):
            made_by.append(f"{what} by Triton kernel")
        else:  # it failed at its first launch (a warning says why) and torch took over
            made_by.append(f"{what} by torch operations (the Triton kernel failed)")
    tensors = len({n for n, _ in a})
    print(f"{name}: {len(a)} values ({tensors} tensors x steps), {', '.join(made_by)}")
    differ = sorted(k for k in a.keys() & b.keys() if not np.array_equal(a[k], b[k]))
    missing = sorted(a.keys() ^ b.keys())
    for key in differ[:10]:
        print(f"DIFFERENT {key}")
    for key in missing[:10]:
        print(f"ONLY IN ONE {key}")
    ok = bool(a) and not differ and not missing
    print(
        "equal: every value bit for bit"
        if ok
        else f"{len(differ)} different, {len(missing)} missing (the two runs are kept in {tmp})"
    )
    if ok:  # a check that passed leaves nothing behind in the temporary folder
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
