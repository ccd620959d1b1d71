"""The bug zoo: train runs with planted bugs and healthy runs over seeds, evaluate every rule
of the default profile on each, and write the matrix (docs/zoo.md).

    python benchmarks/zoo.py --out zoo-out                 # full: 15 variants x 5 seeds
    python benchmarks/zoo.py --quick --out zoo-quick       # the CI subset (a few minutes)
    python benchmarks/zoo.py --runs DIR --evaluate-only    # re-evaluate trained runs

Writes OUT/zoo.md and OUT/zoo.json and prints the matrix. Trained runs are kept under
``--runs`` (default OUT/runs) and reused: a run whose ``zoo-run.json`` exists is not trained
again, so an interrupted zoo resumes. Runs are trained seed by seed (every variant of seed 0,
then seed 1, ...), so a zoo cut short still has whole seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the CI subset: a few faults caught by different kinds of rules, one healthy run, short runs
QUICK_FAULTS = ("healthy", "imbalance", "not_normalised", "head_not_in_optimizer", "dead_relu")
QUICK_SCALE: dict[str, Any] = {"steps": 80, "train_images": 600, "test_per_class": 10}
FULL_SEEDS = 5


def train_all(
    faults: list[str], seeds: list[int], runs: Path, scale: dict[str, Any], workers: int
) -> list[dict[str, Any]]:
    """Train every (seed, fault) not trained yet, ``workers`` processes at a time."""
    from pytest_modelrules.training.faults import fault, train_zoo_run, zoo_config
    from pytest_modelrules.training.job import prepare_data

    runs.mkdir(parents=True, exist_ok=True)
    prepare_data(zoo_config(fault("healthy"), 0, **scale), runs / "data", print)
    todo = [
        (s, f) for s in seeds for f in faults if not (runs / f"{f}-s{s}" / "zoo-run.json").is_file()
    ]
    if todo:
        print(f"zoo: training {len(todo)} run(s) with {workers} worker(s)", flush=True)
    t0 = time.perf_counter()
    if workers <= 1:
        for s, f in todo:
            r = train_zoo_run(f, s, str(runs), scale)
            print(f"  {f} seed {s}: accuracy {r['accuracy']:.3f} in {r['train_seconds']:.0f} s",
                  flush=True)  # fmt: skip
    else:
        with ProcessPoolExecutor(workers, max_tasks_per_child=1) as pool:
            futs = {pool.submit(train_zoo_run, f, s, str(runs), scale): (f, s) for s, f in todo}
            for fut in as_completed(futs):
                f, s = futs[fut]
                r = fut.result()
                took = time.perf_counter() - t0
                print(f"  {f} seed {s}: accuracy {r['accuracy']:.3f} in "
                      f"{r['train_seconds']:.0f} s ({took:.0f} s)", flush=True)  # fmt: skip
    out = []
    for s in seeds:
        for f in faults:
            p = runs / f"{f}-s{s}" / "zoo-run.json"
            if p.is_file():
                out.append(json.loads(p.read_text()))
    return out


ACCURACY_MARGIN = 0.05  # a fault within 5 points of healthy accuracy: accuracy misses it


def _sagemaker_profile(profile: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The same rules with the classes' (SageMaker Debugger's) defaults; a selection that a
    rule needs (UnchangedTensor's tensor_regex) is kept."""
    keep = {"unchanged_tensor": ("tensor_regex",)}
    return {n: {k: v for k, v in p.items() if k in keep.get(n, ())} for n, p in profile.items()}


def evaluate_run(run_dir: str | Path, variant: str, profile: dict[str, dict[str, Any]]):
    """{rule: {triggered, skipped, missing, seconds, figure, first_step, explanation}} of one
    run under ``profile`` (with the variant's declared intent laid over it)."""
    from pytest_modelrules import open_run
    from pytest_modelrules.exceptions import MissingTensorError
    from pytest_modelrules.rules.profiles import profile_rules
    from pytest_modelrules.training.faults import fault

    run = open_run(str(run_dir))
    out: dict[str, dict[str, Any]] = {}
    for name, rule in profile_rules(profile, dict(fault(variant).intent)).items():
        t0 = time.perf_counter()
        try:
            r = rule.evaluate(run)
            out[name] = {
                "triggered": bool(r.triggered and not r.skipped),
                "skipped": bool(r.skipped),
                "missing": False,
                "seconds": round(time.perf_counter() - t0, 4),
                "figure": None if r.figure is None else float(r.figure),
                "limit": None if r.limit is None else float(r.limit),
                "first_step": None if r.first_trigger is None else r.first_trigger.step,
                "explanation": r.explanation[:300],
            }
        except MissingTensorError as exc:
            out[name] = {"triggered": False, "skipped": True, "missing": True,
                         "seconds": round(time.perf_counter() - t0, 4),
                         "explanation": str(exc)[:200]}  # fmt: skip
    return out


def _rate(xs: list[bool]) -> float | None:
    return float(np.mean(xs)) if xs else None


def evaluate_zoo(
    results: list[dict[str, Any]],
    tune_seeds: int = 3,
    profile: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Evaluate the profile (and, beside it, the SageMaker defaults) on every trained run;
    the matrix, the goals and the per-rule times."""
    from pytest_modelrules.rules.profiles import default_profile
    from pytest_modelrules.training.faults import fault

    profile = profile or default_profile()
    sm = _sagemaker_profile(profile)
    rules = list(profile)
    runs: list[dict[str, Any]] = []
    for res in results:
        runs.append({
            **{k: res[k] for k in ("fault", "seed", "healthy", "accuracy", "balanced_accuracy",
                                   "nan_loss", "train_seconds", "steps", "run_dir")},
            "profile": evaluate_run(res["run_dir"], res["fault"], profile),
            "sagemaker_defaults": evaluate_run(res["run_dir"], res["fault"], sm),
        })  # fmt: skip
    variants = list(dict.fromkeys(r["fault"] for r in runs))
    healthy_acc = [r["accuracy"] for r in runs if r["fault"] == "healthy"]
    base_acc = float(np.mean(healthy_acc)) if healthy_acc else float("nan")
    rows: dict[str, Any] = {}
    for v in variants:
        f = fault(v)
        mine = [r for r in runs if r["fault"] == v]
        row: dict[str, Any] = {
            "healthy": f.healthy,
            "summary": f.summary,
            "meant": list(f.meant),
            "seeds": [r["seed"] for r in mine],
            "accuracy_mean": float(np.mean([r["accuracy"] for r in mine])),
            "accuracy_min": float(np.min([r["accuracy"] for r in mine])),
            "accuracy_max": float(np.max([r["accuracy"] for r in mine])),
        }
        for key in ("profile", "sagemaker_defaults"):
            row[key] = {n: _rate([r[key][n]["triggered"] for r in mine]) for n in rules}
            row[key + "_missing"] = {n: sum(r[key][n]["missing"] for r in mine) for n in rules}
        if not f.healthy:
            for key in ("profile", "sagemaker_defaults"):
                caught = [any(r[key][n]["triggered"] for n in f.meant) for r in mine]
                row[key + "_caught"] = _rate(caught)
                row[key + "_caught_tune"] = _rate(
                    [c for c, r in zip(caught, mine) if r["seed"] < tune_seeds]
                )
                row[key + "_caught_confirm"] = _rate(
                    [c for c, r in zip(caught, mine) if r["seed"] >= tune_seeds]
                )
            row["accuracy_alone_misses"] = bool(row["accuracy_mean"] >= base_acc - ACCURACY_MARGIN)
        else:
            for key in ("profile", "sagemaker_defaults"):
                alarms = [any(r[key][n]["triggered"] for n in rules) for r in mine]
                row[key + "_false_alarm_runs"] = _rate(alarms)
        rows[v] = row
    times = (
        {n: float(np.mean([r["profile"][n]["seconds"] for r in runs])) for n in rules}
        if runs
        else {}
    )
    faults_rows = [v for v in variants if not rows[v]["healthy"]]
    healthy_rows = [v for v in variants if rows[v]["healthy"]]
    goals = {
        "detection_goal": 0.95,
        "faults_meeting_goal": [v for v in faults_rows if rows[v]["profile_caught"] >= 0.95],
        "faults_missing_goal": [v for v in faults_rows if rows[v]["profile_caught"] < 0.95],
        "healthy_false_alarms": {
            v: [n for n in rules if rows[v]["profile"][n]] for v in healthy_rows
        },
    }
    goals["met"] = not goals["faults_missing_goal"] and not any(
        goals["healthy_false_alarms"].values()
    )
    return {
        "profile": profile,
        "rules": rules,
        "margins": margins(runs, rules),
        "tune_seeds": list(range(tune_seeds)),
        "healthy_accuracy": base_acc,
        "rows": rows,
        "rule_seconds_mean": times,
        "goals": goals,
        "runs": runs,
    }


def margins(runs: list[dict[str, Any]], rules: list[str]) -> dict[str, Any]:
    """Per rule meant for some fault: the range of its figure on the healthy runs and on the
    runs of the faults meant for it (profile), and its limit - how far from the threshold
    each side stayed."""
    from pytest_modelrules.rules.registry import rule_class
    from pytest_modelrules.training.faults import fault

    def span(rs: list[dict[str, Any]], n: str) -> list[float] | None:
        xs = [r["profile"][n].get("figure") for r in rs]
        xs = [x for x in xs if x is not None and np.isfinite(x)]
        return [float(min(xs)), float(max(xs))] if xs else None

    healthy = [r for r in runs if r["healthy"]]
    out: dict[str, Any] = {}
    for n in rules:
        meant = [r for r in runs if n in fault(r["fault"]).meant]
        if not meant:
            continue
        limits = [r["profile"][n].get("limit") for r in runs]
        out[n] = {
            "limit": next((x for x in limits if x is not None), None),
            "faults": sorted({r["fault"] for r in meant}),
            "healthy": span(healthy, n),
            "meant_faults": span(meant, n),
            "higher_is_worse": bool(rule_class(n).higher_is_worse),
        }
    return out


def _cell(rate: float | None, n: int, meant: bool) -> str:
    if rate is None:
        return "-"
    k = round(rate * n)
    text = f"{k}/{n}" if k else "."
    return f"**{text}**" if meant else text


def render_markdown(report: dict[str, Any]) -> str:
    """The matrix (profile), the SageMaker-defaults matrix beside it, goals and times."""
    from pytest_modelrules.training.faults import fault

    rules = report["rules"]
    short = {n: n.replace("_", " ") for n in rules}
    lines = []
    m = report.get("machine", {})
    lines.append(f"Command: `{report.get('command', '')}`; scale: {report.get('scale')}; "
                 f"machine: {m.get('cpus')} CPUs, {m.get('platform')}, load average at the end "
                 f"{m.get('loadavg_at_end')}; training wall time "
                 f"{report.get('wall_seconds_training')} s.")  # fmt: skip
    lines.append("")
    titles = (("profile", "default profile"), ("sagemaker_defaults", "SageMaker's defaults"))
    for key, title in titles:
        lines.append(f"### Triggers per run, {title}")
        lines.append("")
        lines.append("Cells: runs (seeds) on which the rule triggered; **bold** = a rule meant "
                     "for that fault; `.` = none.")  # fmt: skip
        lines.append("")
        head = "| variant | acc. | caught |" + "".join(f" {short[n]} |" for n in rules)
        lines.append(head)
        lines.append("|" + "---|" * (3 + len(rules)))
        for v, row in report["rows"].items():
            n = len(row["seeds"])
            acc = f"{100 * row['accuracy_mean']:.0f}%"
            if row["healthy"]:
                caught = f"FA {_cell(row[key + '_false_alarm_runs'], n, False)}"
            else:
                caught = f"{100 * row[key + '_caught']:.0f}%"
                if row.get("accuracy_alone_misses"):
                    acc += " (≈)"
            cells = "".join(f" {_cell(row[key][r], n, r in row['meant'])} |" for r in rules)
            lines.append(f"| {v} | {acc} | {caught} |{cells}")
        lines.append("")
    lines.append("acc. = mean test accuracy over the seeds; (≈) = within "
                 f"{int(100 * ACCURACY_MARGIN)} points of the healthy runs' "
                 f"{100 * report['healthy_accuracy']:.0f}%: accuracy alone would miss it. "
                 "caught = runs where a meant rule triggered; FA = healthy runs where any rule "
                 "triggered.")  # fmt: skip
    lines.append("")
    g = report["goals"]
    lines.append(f"Goals (every fault caught by its meant rule in >= 95 % of seeds, no healthy "
                 f"run tripping any rule): {'met' if g['met'] else 'NOT met'}. Faults under the "
                 f"goal: {', '.join(g['faults_missing_goal']) or 'none'}. Healthy false alarms: "
                 + (", ".join(f"{v}: {', '.join(r)}" for v, r in g["healthy_false_alarms"].items()
                              if r) or "none") + ".")  # fmt: skip
    lines.append("")
    ts = report["tune_seeds"]
    lines.append(f"Detection by the meant rule, seeds {ts[0]}..{ts[-1]} (thresholds chosen) vs "
                 "the other seeds (confirmation):")  # fmt: skip
    lines.append("")
    lines.append("| fault | meant rule(s) | tune seeds | confirm seeds |")
    lines.append("|---|---|---|---|")
    for v, row in report["rows"].items():
        if row["healthy"]:
            continue
        t, c = row["profile_caught_tune"], row["profile_caught_confirm"]
        lines.append(f"| {v} | {', '.join(row['meant'])} | "
                     f"{'-' if t is None else f'{100 * t:.0f}%'} | "
                     f"{'-' if c is None else f'{100 * c:.0f}%'} |")  # fmt: skip
    lines.append("")
    if report.get("margins"):
        lines.append("Margins: each rule's figure on the healthy runs and on the runs of the "
                     "faults meant for it (min - max over the seeds; a rule meant for several "
                     "faults catches a run when any of its rules does):")  # fmt: skip
        lines.append("")
        lines.append("| rule | figure worse when | limit | healthy runs | meant faults' runs "
                     "| faults |")  # fmt: skip
        lines.append("|---|---|---|---|---|---|")

        def fmt_span(sp: list[float] | None) -> str:
            return "-" if sp is None else f"{sp[0]:.3g} - {sp[1]:.3g}"

        for n, mg in report["margins"].items():
            lim = "-" if mg.get("limit") is None else f"{mg['limit']:.3g}"
            lines.append(f"| {n} | {'higher' if mg['higher_is_worse'] else 'lower'} | {lim} | "
                         f"{fmt_span(mg['healthy'])} | {fmt_span(mg['meant_faults'])} | "
                         f"{', '.join(mg['faults'])} |")  # fmt: skip
        lines.append("")
    lines.append("Mean seconds per rule and run: " + ", ".join(
        f"{n} {s:.3f}" for n, s in report["rule_seconds_mean"].items()) + ".")  # fmt: skip
    lines.append("")
    lines.append("Variants: " + "; ".join(
        f"**{v}**: {fault(v).summary}" for v in report["rows"]) + ".")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_outputs(report: dict[str, Any], out: Path) -> str:
    """OUT/zoo.json and OUT/zoo.md; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    text = render_markdown(report)
    (out / "zoo.md").write_text(text)
    (out / "zoo.json").write_text(json.dumps(report, indent=1, default=str))
    return text


def main(argv: list[str] | None = None) -> int:
    from pytest_modelrules.training.faults import FAULTS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("zoo-out"))
    ap.add_argument("--runs", type=Path, default=None, help="where trained runs live (OUT/runs)")
    ap.add_argument("--quick", action="store_true", help="the CI subset")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1")
    ap.add_argument("--first-seed", type=int, default=0, help="train seeds from this one")
    ap.add_argument("--faults", default=None, help="comma-separated variants (default: all)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: scale's)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--evaluate-only", action="store_true")
    ap.add_argument("--tune-seeds", type=int, default=3,
                    help="seeds 0..K-1 chose the thresholds; the rest confirm them")  # fmt: skip
    args = ap.parse_args(argv)

    scale = dict(QUICK_SCALE) if args.quick else {}
    if args.steps:
        scale["steps"] = args.steps
    faults = args.faults.split(",") if args.faults else list(QUICK_FAULTS if args.quick else FAULTS)
    for f in faults:
        if f not in FAULTS:
            ap.error(f"unknown variant {f!r}; known: {', '.join(FAULTS)}")
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else FULL_SEEDS)
    seeds = list(range(args.first_seed, n_seeds))
    runs = args.runs or args.out / "runs"
    t0 = time.perf_counter()
    if args.evaluate_only:
        results = [
            json.loads(p.read_text())
            for s in seeds
            for f in faults
            if (p := runs / f"{f}-s{s}" / "zoo-run.json").is_file()
        ]
    else:
        results = train_all(faults, seeds, runs, scale, args.workers)
    train_s = time.perf_counter() - t0
    if args.train_only:
        return 0
    report = evaluate_zoo(results, tune_seeds=args.tune_seeds)
    report["command"] = "python benchmarks/zoo.py " + " ".join(argv or sys.argv[1:])
    report["scale"] = scale or "full"
    report["wall_seconds_training"] = round(train_s, 1)
    report["machine"] = _machine()
    text = write_outputs(report, args.out)
    print(text)
    return 0


def _machine() -> dict[str, Any]:
    """Where the zoo ran and how busy the machine was."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in load],
        "processor": platform.processor() or platform.machine(),
    }


if __name__ == "__main__":
    sys.exit(main())
