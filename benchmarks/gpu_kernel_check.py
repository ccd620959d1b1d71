"""On a CUDA GPU: the Triton positive-count kernel (pytest_modelrules/capture/kernels.py)
against the torch operations it replaces, on ResNet-18's 17 ReLU output shapes at 224 px,
batch 64, in every floating dtype and in contiguous and channels_last layouts: equal counts
(NaN, -0.0, 0 and inf included), and the time of each for all 17 calls.

    python benchmarks/gpu_kernel_check.py

Prints one line per case and exits 1 on any difference. Not a test (CI has no GPU); the test
suite runs the same kernel with Triton's interpreter on the CPU (tests/capture/test_kernels.py).
"""

from __future__ import annotations

import sys
import time

SHAPES = (
    [(64, 64, 112, 112)]
    + [(64, 64, 56, 56)] * 4
    + [(64, 128, 28, 28)] * 4
    + [(64, 256, 14, 14)] * 4
    + [(64, 512, 7, 7)] * 4
)


def main() -> int:
    import torch

    from pytest_modelrules.capture.kernels import positive_counts_c_order
    from pytest_modelrules.capture.reductions import positive_counts

    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2

    def timed(fn, xs) -> float:
        for _ in range(3):
            [fn(x) for x in xs]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            [fn(x) for x in xs]
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / 20 * 1e3

    def reference(x):
        return positive_counts(x).reshape(-1)

    failed = 0
    gen = torch.Generator(device="cuda").manual_seed(0)
    specials = torch.tensor([float("nan"), -0.0, 0.0, float("inf")], device="cuda")
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        for layout in (torch.channels_last, torch.contiguous_format):
            xs = []
            for shape in SHAPES:
                x = torch.relu(torch.randn(shape, device="cuda", generator=gen))
                x[0, 0, 0, :4] = specials
                xs.append(x.to(dtype).contiguous(memory_format=layout))
            equal = all(torch.equal(positive_counts_c_order(x), reference(x)) for x in xs)
            failed += not equal
            print(
                f"{dtype!s:15s} {layout!s:25s} equal={equal!s:5s} "
                f"kernel {timed(positive_counts_c_order, xs):6.3f} ms  "
                f"torch {timed(reference, xs):6.3f} ms  (17 calls)"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
