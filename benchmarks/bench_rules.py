"""Time every default built-in rule over a 2,000-step run.

The run: per step the loss (scalar), 64 x 43 logits, 64 labels and the positive-fraction
reductions of four ReLU layers (128 units each); 180 TRAIN steps then 20 EVAL steps, repeated;
GTSRB class names in the metadata. Goal: all default rules together under 0.5 s on 2 cores.

    python benchmarks/bench_rules.py            # 2,000 steps
    python benchmarks/bench_rules.py --quick    # 200 steps, a smoke test (no timing goal)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_S = 0.5


def build_run(path: Path, steps: int, seed: int = 0) -> None:
    """Write the benchmark run with RunWriter."""
    from pytest_modelrules import RunWriter
    from pytest_modelrules.datasets.gtsrb_meta import CLASS_NAMES
    from pytest_modelrules.store.names import reduction_tensor_name

    rng = np.random.default_rng(seed)
    relus = [
        reduction_tensor_name(f"layer{k}.relu_output_0", "positive_fraction") for k in range(4)
    ]
    with RunWriter(path, metadata={"class_names": list(CLASS_NAMES)}) as w:
        w.set_collections({"losses": {"tensor_names": ["CrossEntropyLoss_output_0"]}})
        for g in range(steps):
            mode = "EVAL" if g % 200 >= 180 else "TRAIN"
            labels = rng.integers(0, 43, 64)
            logits = rng.standard_normal((64, 43)).astype(np.float32)
            logits[np.arange(64), labels] += min(4.0, g / 100)
            loss = 3.7 * np.exp(-g / 500) + 0.2 + 0.05 * rng.standard_normal()
            w.write("CrossEntropyLoss_output_0", np.float32(loss), g, mode)
            w.write("CrossEntropyLoss_input_0", logits, g, mode)
            w.write("CrossEntropyLoss_input_1", labels, g, mode)
            for name in relus:
                w.write(name, rng.uniform(0.2, 0.8, 128).astype(np.float32), g, mode)


def run_benchmark(steps: int, repeat: int = 3, folder: Path | None = None) -> dict:
    """{"steps", "open_s", "rules": {name: seconds}, "total_s", "errors"}: best of ``repeat``."""
    from pytest_modelrules import open_run
    from pytest_modelrules.rules.registry import default_rules, make_rule

    with tempfile.TemporaryDirectory() as tmp:
        path = (folder or Path(tmp)) / f"bench_{steps}"
        if not path.exists():
            build_run(path, steps)
        names = default_rules()
        best: dict[str, float] = {}
        best_open = best_total = float("inf")
        verdicts: dict[str, str] = {}
        errors: dict[str, str] = {}
        for _ in range(repeat):
            t0 = time.perf_counter()
            run = open_run(path)
            opened = time.perf_counter() - t0
            times: dict[str, float] = {}
            for name in names:
                rule = make_rule(name)
                t = time.perf_counter()
                try:
                    result = rule.evaluate(run)
                    verdicts[name] = result.summary()
                except Exception as exc:  # a rule that cannot run here is reported, not fatal
                    errors[name] = f"{type(exc).__name__}: {exc}"
                times[name] = time.perf_counter() - t
            total = time.perf_counter() - t0
            if total < best_total:
                best_total, best_open, best = total, opened, times
        return {
            "steps": steps,
            "open_s": best_open,
            "rules": best,
            "total_s": best_total,
            "verdicts": verdicts,
            "errors": errors,
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 steps, one repeat")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    steps, repeat = (200, 1) if args.quick else (args.steps, args.repeat)
    out = run_benchmark(steps, repeat)
    width = max(len(n) for n in out["rules"]) if out["rules"] else 10
    print(f"{out['steps']} steps; open_run {out['open_s'] * 1000:.1f} ms")
    for name, secs in sorted(out["rules"].items(), key=lambda kv: -kv[1]):
        err = out["errors"].get(name, "")
        flag = "  (its tensors are not in this run)" if "MissingTensorError" in err else ""
        flag = flag or ("  ERROR" if err else "")
        print(f"  {name:<{width}}  {secs * 1000:8.1f} ms{flag}")
    print(f"  {'total (open + all rules)':<{width}}  {out['total_s'] * 1000:8.1f} ms", end="")
    if not args.quick:
        print(f"   goal {GOAL_S * 1000:.0f} ms: {'met' if out['total_s'] < GOAL_S else 'MISSED'}")
    else:
        print()
    for name, err in out["errors"].items():
        print(f"  {name}: {err}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
