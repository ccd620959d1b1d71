"""The capture benchmark's figures against the goals of the issue that set them.

Reads the ``--json`` files of ``bench_capture.py`` and prints, for each Recorder variant, its
ratio to the plain loop (median step time) and its paired ratio (median of each round's ratio)
next to the goal that applies, and whether both are within it:

- on a CPU at 32 px: at most 1.05 at save_interval 500 and 1.25 at save_interval 1;
- on a GPU at the seed's scale (224 px, batch 64), fp32 and bf16 alike: 1.02 and 1.10.

Runs measured with the full input images, the writer idle or as the host-cost proxy are
diagnostics with no goal: listed, not judged. ``gpu_figures.sh`` runs it last, so a GPU run's
output ends with the verdict. Exit status 0 when every judged run has its save_interval 500
variant and at least one save_interval 1 variant within the goal; 1 otherwise, or when no run
could be judged.

    python benchmarks/capture_goals.py gpu-figures/json/capture_*.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: (save_interval 500, save_interval 1) goals per kind of run
GOALS = {"cpu": (1.05, 1.25), "gpu": (1.02, 1.10)}


#: variants of bench_capture.py that explain a figure rather than offer a way to record
#: (the spinning wait, and ``--ablate``'s "save_interval=1 without ..."): listed, never the
#: best variant
DIAGNOSTIC_VARIANTS = frozenset({"save_interval=1, spinning wait"})


def _is_diagnostic(label: str) -> bool:
    return label in DIAGNOSTIC_VARIANTS or label.startswith("save_interval=1 without ")


def _interval(label: str) -> int | None:
    """The save_interval a variant of bench_capture.py records at (None: the plain loop)."""
    if label == "no recorder":
        return None
    return 500 if label == "save_interval=500" else 1


def _diagnostic(args: dict[str, Any]) -> str | None:
    """Why a run is not judged against a goal, or None."""
    for key, why in (
        ("host_proxy", "host-cost proxy"),
        ("full_inputs", "full input images recorded"),
        ("no_write", "writer idle"),
    ):
        if args.get(key):
            return why
    if str(args.get("device", "cpu")).startswith("cuda"):
        if args.get("size") != 224 or args.get("batch") != 64:
            return "not the seed's scale (224 px, batch 64)"
    elif args.get("size") != 32:
        return "not the CPU goal's 32 px"
    return None


def judge(figures: dict[str, Any]) -> tuple[list[str], bool | None]:
    """Lines describing one bench_capture.py JSON, and whether it meets its goals (None: a
    diagnostic run, not judged)."""
    args = figures.get("args", {})
    gpu = str(args.get("device", "cpu")).startswith("cuda")
    goals = GOALS["gpu" if gpu else "cpu"]
    why_not = _diagnostic(args)
    head = (
        f"{figures.get('device', args.get('device'))}, {args.get('precision')}"
        f"{', channels_last' if args.get('channels_last') else ''}, {args.get('size')} px, "
        f"batch {args.get('batch')}"
    )
    lines = [head + (f" ({why_not}: no goal)" if why_not else "")]
    lines.append(f"  {'variant':<40} {'ratio':>7} {'paired':>7} {'goal':>6}  verdict")
    ratios, paired = figures["ratios"], figures.get("paired_ratios", {})
    met_500: bool | None = None
    best_1: tuple[float, str] | None = None
    for label, ratio in ratios.items():
        interval = _interval(label)
        if interval is None:
            continue
        pair = paired.get(label, ratio)
        goal = goals[0] if interval == 500 else goals[1]
        within = ratio <= goal and pair <= goal
        shown, verdict = ("-", "") if why_not else (f"{goal:.2f}", "within" if within else "over")
        if _is_diagnostic(label):
            shown, verdict = "-", "diagnostic"
        lines.append(f"  {label:<40} {ratio:>7.3f} {pair:>7.3f} {shown:>6}  {verdict}")
        if _is_diagnostic(label):
            continue
        if interval == 500:
            met_500 = within
        elif best_1 is None or max(ratio, pair) < best_1[0]:
            best_1 = (max(ratio, pair), label)
    if why_not:
        return lines, None
    met_1 = best_1 is not None and best_1[0] <= goals[1]
    if best_1 is not None:
        lines.append(
            f"  save_interval 1: best variant {best_1[1]!r} at {best_1[0]:.3f} "
            f"(the larger of its two ratios): goal {goals[1]:.2f} "
            f"{'met' if met_1 else 'not met'}"
        )
    ok = bool(met_500) and met_1
    lines.append(f"  save_interval 500: goal {goals[0]:.2f} {'met' if met_500 else 'not met'}")
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="bench_capture.py --json files")
    args = parser.parse_args(argv)
    verdicts = []
    for path in args.files:
        try:
            figures = json.loads(path.read_text())
            lines, ok = judge(figures)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            print(f"{path}: not a bench_capture.py --json file ({type(exc).__name__}: {exc})")
            verdicts.append(False)
            continue
        print(f"{path.name}: " + "\n".join(lines))
        if ok is not None:
            verdicts.append(ok)
    return 0 if verdicts and all(verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
