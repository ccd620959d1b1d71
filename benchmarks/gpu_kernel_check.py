"""On a CUDA GPU: the Triton kernels (pytest_modelrules/capture/kernels.py) against the torch
operations they replace, with the time of each - with the device synchronised ("total") and
the host's share alone ("host": the time to queue the work, what a launch-bound step pays):

- the positive counts on ResNet-18's 17 ReLU output shapes at 224 px, batch 64, in every
  floating dtype and in contiguous and channels_last layouts: equal counts (NaN, -0.0, 0 and
  inf included); the kernel's one launch against the torch operations' 17 x 4;
- the norms of ResNet-18's 62 parameters (float32, channels_last; also bfloat16 copies):
  both norms of each within 1e-5 of float64's, against the two ``_foreach_norm`` and
  ``stack`` pairs they replace, and no further from float64's than those are.

    python benchmarks/gpu_kernel_check.py

Prints one line per case and exits 1 on any difference. Not a test (CI has no GPU); the test
suite runs the same kernel with Triton's interpreter on the CPU (tests/capture/test_kernels.py)
and this script's ``--quick`` form (batch 2 at 32 px, bfloat16 and float32, five parameter
shapes, CPU tensors under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def shapes(batch: int, size: int) -> list[tuple[int, int, int, int]]:
    """ResNet-18's 17 ReLU outputs for ``size`` px images: the stem's, then 4 per stage."""
    side = -(-size // 2)  # the stem's stride-2 convolution
    out = [(batch, 64, side, side)]
    side = -(-side // 2)  # max pooling
    for stage, channels in enumerate((64, 128, 256, 512)):
        if stage:
            side = -(-side // 2)
        out += [(batch, channels, side, side)] * 4
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="batch 2 at 32 px on the CPU (Triton's interpreter)"
    )
    args = parser.parse_args(argv)
    import torch

    from pytest_modelrules.capture.kernels import multi_norms, positive_counts_c_order
    from pytest_modelrules.capture.reductions import positive_counts

    dtypes = [torch.bfloat16, torch.float16, torch.float32, torch.float64]
    if args.quick:
        device, cases, warmup, repeats = "cpu", shapes(2, 32), 0, 1
        dtypes = dtypes[::2]
    elif torch.cuda.is_available():
        device, cases, warmup, repeats = "cuda", shapes(64, 224), 3, 20
    else:
        print("no CUDA device")
        return 2

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(fn, xs) -> tuple[float, float]:
        """(host ms, total ms) per call of ``fn(xs)``, after the warm-up calls."""
        for _ in range(warmup):
            fn(xs)
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn(xs)
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        return (t1 - t0) / repeats * 1e3, (t2 - t0) / repeats * 1e3

    def reference(xs):
        return torch.cat([positive_counts(x).reshape(-1) for x in xs])

    failed = 0
    gen = torch.Generator(device=device).manual_seed(0)
    specials = torch.tensor([float("nan"), -0.0, 0.0, float("inf")], device=device)
    for dtype in dtypes:
        for layout in (torch.channels_last, torch.contiguous_format):
            xs = []
            for shape in cases:
                x = torch.relu(torch.randn(shape, device=device, generator=gen))
                x.view(-1)[:4] = specials
                xs.append(x.to(dtype).contiguous(memory_format=layout))
            counts = positive_counts_c_order(xs)
            equal = torch.equal(counts.float(), reference(xs))
            failed += not equal
            k_host, k_total = timed(positive_counts_c_order, xs)
            t_host, t_total = timed(reference, xs)
            print(
                f"{dtype!s:15s} {layout!s:25s} equal={equal!s:5s} {counts.dtype!s:12s} "
                f"kernel host {k_host:6.3f} total {k_total:6.3f} ms   "
                f"torch host {t_host:6.3f} total {t_total:6.3f} ms   ({len(xs)} batches)"
            )
    failed += _check_norms(torch, multi_norms, device, args.quick, timed)
    return 1 if failed else 0


def _check_norms(torch: Any, multi_norms: Any, device: str, quick: bool, timed: Any) -> int:
    """The norms kernel against ``_foreach_norm`` + ``stack`` (l2 and l1): 1 if it is off."""
    if quick:
        shapes_ = [(64, 3, 7, 7), (64,), (128, 64, 3, 3), (43, 512), (43,)]
        gen = torch.Generator().manual_seed(1)
        params = [torch.randn(s, generator=gen) for s in shapes_]
    else:
        import torchvision

        model = torchvision.models.resnet18(weights=None, num_classes=43).to(device)
        params = [p.detach() for p in model.to(memory_format=torch.channels_last).parameters()]

    def reference(xs):
        return torch.stack(torch._foreach_norm(xs, 2)), torch.stack(torch._foreach_norm(xs, 1))

    failed = 0
    for dtype in (torch.float32, torch.bfloat16):
        xs = [p.to(dtype) for p in params]
        got = multi_norms(xs).double().cpu()
        exact = torch.stack([torch.stack([x.double().norm(p) for x in xs]) for p in (2, 1)])
        exact = exact.cpu()
        before = torch.stack(reference(xs)).double().cpu()
        error = ((got - exact).abs() / exact.clamp_min(1e-30)).max().item()
        error_before = ((before - exact).abs() / exact.clamp_min(1e-30)).max().item()
        ok = error <= 1e-5 and error <= error_before + 1e-7
        failed += not ok
        k_host, k_total = timed(multi_norms, xs)
        t_host, t_total = timed(reference, xs)
        print(
            f"norms {dtype!s:15s} within={ok!s:5s} relative error {error:.1e} "
            f"(foreach {error_before:.1e})   kernel host {k_host:6.3f} total {k_total:6.3f} ms   "
            f"foreach+stack host {t_host:6.3f} total {t_total:6.3f} ms   ({len(xs)} tensors)"
        )
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
