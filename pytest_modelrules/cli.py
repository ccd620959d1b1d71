"""``modelrules``: generate synthetic GTSRB, train the reference recipes, check and report runs.

Subcommands: ``generate``, ``train``, ``info``, ``check``, ``report``, ``demo``
(``modelrules CMD -h``).
Heavy libraries (torch, rich) load only inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .exceptions import ModelRulesError

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples" / "gtsrb"


def _err(msg: str) -> None:
    print(f"modelrules: {msg}", file=sys.stderr, flush=True)


# -- generate --------------------------------------------------------------------------------
def cmd_generate(args: argparse.Namespace) -> int:
    from .datasets.synthetic import SignsConfig, is_generated, split_labels, write_gtsrb

    cfg = SignsConfig(
        train_images=args.train_images,
        test_per_class=args.test_per_class,
        test_distribution=args.test_distribution,
        test_images=args.test_images,
        size=args.size,
        seed=args.seed,
    )
    n = len(split_labels(cfg, "train")) + len(split_labels(cfg, "test"))
    if is_generated(args.out, cfg):  # write_gtsrb would return at once: say so, not "wrote"
        print(f"{Path(args.out) / 'gtsrb'} already holds these {n} images ({args.size} px): "
              "nothing written")  # fmt: skip
        return 0
    t0 = time.perf_counter()
    write_gtsrb(args.out, cfg, show_progress=not args.quiet)
    print(f"wrote {n} images ({args.size} px) to {Path(args.out) / 'gtsrb'} "
          f"in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    return 0


# -- train -----------------------------------------------------------------------------------
_TRAIN_FLAGS: list[tuple[str, type, str]] = [
    ("image_size", int, "image side in pixels (GPU 224, CPU 32)"),
    ("epochs", int, "epochs (recipe: seed 10, fixed 3)"),
    ("steps", int, "total optimiser steps spread over the epochs (CPU default 600; "
                   "0 = whole passes over the data)"),
    ("batch_size", int, "batch size (64)"),
    ("lr", float, "SGD learning rate (GPU 0.001, CPU 0.03)"),
    ("momentum", float, "SGD momentum (GPU 0, CPU 0.9)"),
    ("weight_decay", float, "SGD weight decay (0)"),
    ("schedule", str, "learning-rate schedule: none | cosine (GPU none, CPU cosine)"),
    ("seed", int, "seed of the training RNGs (0)"),
    ("data", str, "folder holding gtsrb/ (real or synthetic); default: generate signs"),
    ("data_seed", int, "seed of the generated signs (0)"),
    ("train_images", int, "generated training images (GPU 39209, CPU 6000)"),
    ("test_per_class", int, "generated test images per class, balanced (CPU 50; "
                            "0 = GTSRB-proportioned --test-images)"),
    ("test_images", int, "generated test images in GTSRB's proportions (GPU 12630)"),
    ("device", str, "cpu | cuda | cuda:N | auto (default auto)"),
    ("save_interval", int, "record every N steps (GPU 500, CPU 25)"),
    ("workers", int, "data-loader worker processes (GPU 8, CPU 0)"),
    ("threads", int, "torch CPU threads"),
    ("weights", str, "ImageNet ResNet-18 weights file (else torchvision's cache, else random)"),
]  # fmt: skip


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    for name, typ, help_ in _TRAIN_FLAGS:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                       help=help_)  # fmt: skip
    p.add_argument("--flip", dest="flip", action=argparse.BooleanOptionalAction, default=None,
                   help="RandomHorizontalFlip (recipe: seed yes, fixed no)")  # fmt: skip
    p.add_argument("--sampler", choices=("shuffle", "weighted"), default=None,
                   help="plain shuffling or WeightedRandomSampler (recipe)")  # fmt: skip
    p.add_argument("--crop-scale", dest="crop_scale", type=float, nargs=2, default=None,
                   metavar=("MIN", "MAX"),
                   help="RandomResizedCrop scale (GPU 0.08 1.0, CPU 0.5 1.0)")  # fmt: skip
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default on GPU)")  # fmt: skip
    p.add_argument("--channels-last", dest="channels_last",
                   action=argparse.BooleanOptionalAction, default=None)  # fmt: skip
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=None,
                   help="do not look for ImageNet weights")  # fmt: skip
    p.add_argument("--no-progress", dest="progress", action="store_false", default=None)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = [n for n, _, _ in _TRAIN_FLAGS] + [
        "flip", "sampler", "crop_scale", "amp", "channels_last", "pretrained", "progress",
    ]  # fmt: skip
    out = {k: getattr(args, k, None) for k in keys}
    if out.get("steps") == 0:
        out["steps"] = None
        out["_whole_passes"] = True
    if out.get("crop_scale") is not None:
        out["crop_scale"] = tuple(out["crop_scale"])
    return out


def _train(recipe: str, out: Path, overrides: dict[str, Any], data_dir: Path | None = None):
    from .training.job import train
    from .training.recipes import make_config

    whole = overrides.pop("_whole_passes", False)
    device = overrides.pop("device", None) or "auto"
    config = make_config(recipe, device=device, **overrides)
    if whole:
        config.steps = None
    return train(config, out, data_dir=data_dir)


def _print_result(r: Any) -> None:
    conf = ", ".join(f"{k}: {v}" for k, v in r.mirror_confusions.items())
    print(
        f"{r.config.recipe}: test accuracy {r.accuracy:.3f} (balanced {r.balanced_accuracy:.3f}, "
        f"GTSRB-weighted {r.gtsrb_accuracy:.3f}); mirror-pair confusions {conf}; "
        f"{r.train_steps} steps in {r.train_seconds:.0f} s ({r.images_per_second:.0f} img/s); "
        f"run: {r.run_dir}"
    )


def cmd_train(args: argparse.Namespace) -> int:
    r = _train(args.recipe, Path(args.out), _overrides(args))
    _print_result(r)
    return 0


# -- info ------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    from .store.run import open_run
    from .store.summary import format_summary, summarize

    summary = summarize(open_run(args.run), regex=args.regex)
    print(format_summary(summary))
    if args.json:
        _write_json(args, json.dumps(summary, indent=1, default=str))
    return 0


def _write_json(args: argparse.Namespace, text: str) -> None:
    """``--json PATH`` writes the file; ``--json -`` writes to standard output, where it is
    the only thing written (:func:`main` sends the rest to standard error), for a pipe into
    jq."""
    if args.json == "-":
        out = getattr(args, "json_stdout", None) or sys.stdout
        out.write(text + "\n")
        out.flush()
    else:
        Path(args.json).write_text(text)


# -- check -----------------------------------------------------------------------------------
def _results_table(results: list[Any], title: str) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for r in results:
            state = "skipped" if r.skipped else ("FAIL" if r.triggered else "ok")
            state = "ERROR" if r.error else state
            print(f"  {state:7} {r.name:28} {r.explanation}")
        return
    table = Table(title=title, show_lines=False)
    table.add_column("rule")
    table.add_column("verdict")
    table.add_column("first step", justify="right")
    table.add_column("explanation", overflow="fold")
    for r in results:
        verdict = "[red]TRIGGERED[/]" if r.triggered else "[green]ok[/]"
        if r.skipped:
            verdict = "[bold red]ERROR[/]" if r.error else "[yellow]skipped[/]"
        first = "" if r.first_trigger is None else str(r.first_trigger.step)
        table.add_row(r.name, verdict, first, r.explanation)
    Console().print(table)


def check_run(run_path: str, baseline: str | None, rules: Sequence[str] | None) -> list[Any]:
    """Evaluate rules on a run: the named ones (``name`` or ``name:k=v;k=v``), else the
    default profile (rules/profiles.py; a rule whose tensors the run lacks is "not judged").
    With a baseline, rules that take one (``baseline`` or ``other_trials``) get it, and the
    default profile is followed by ``baseline_comparison`` against it.
    """
    return _check_run(run_path, baseline, rules)[1]


def _check_run(
    run_path: str, baseline: str | None, rules: Sequence[str] | None
) -> tuple[Any, list[Any]]:
    """:func:`check_run`, with the run it opened: (run, results)."""
    from .rules import registry as reg
    from .store.run import open_run

    run = open_run(run_path)
    base = open_run(baseline) if baseline else None
    if not rules:
        results = reg.evaluate_defaults(run, baseline=base)
        if base is not None:  # no rule of the profile takes a baseline: compare with it too
            cls = reg.rule_class("baseline_comparison")
            results.append(reg.evaluate_or_not_judged(run, cls, {"baseline": base}))
        return run, results
    specs = [_parse_rule_spec(s) for s in rules]
    results = []
    for name, params in specs:
        if base is not None:
            accepted = reg.rule_class(name).params
            for key, value in (("baseline", base), ("other_trials", [base])):
                if key in accepted:
                    params.setdefault(key, value)
        results.append(reg.evaluate_or_not_judged(run, reg.rule_class(name), params))
    return run, results


def _parse_rule_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``name`` or ``name:key=value;key=value`` (values as strings, as SageMaker passed them;
    ``;`` between parameters, since a value may hold commas: ``pairs=19-20,33-34``)."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for item in filter(None, rest.split(";") if ";" in rest else [rest] if rest else []):
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(
                f"--rule {spec!r}: {item!r} is not key=value (parameters are "
                "name:key=value;key=value)"
            )
        params[k.strip()] = v.strip()
    return name.strip(), params


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 2 when a rule could not read the run (its row says why; the other rules are still
    judged and shown), else 1 when a rule triggers; 2 ("not judged") when no rule could judge
    the run or, with the default profile, when the run holds no loss tensor or only the rules
    that judge any run (exploding_tensor, stalled_training_rule) judged it; else 0."""
    run, results = _check_run(args.run, args.baseline, args.rule)
    _results_table(results, f"rules on {args.run}")
    from .store.summary import not_ended_note

    note = not_ended_note(run)
    if note is not None:  # a killed job's half run must not pass unremarked
        _err(f"warning: {args.run}: {note}")
    if args.json:
        from .strict_json import dumps  # a NaN loss: null, not NaN (which jq refuses)

        _write_json(args, dumps([r.to_dict() for r in results]))
    triggered = [r.name for r in results if r.triggered and not r.skipped]
    errors = [r.name for r in results if r.error]
    skipped = sum(1 for r in results if r.skipped)
    judged = f"{len(results) - skipped} judged, {skipped} not judged"
    if triggered:
        print(f"{len(triggered)} rule(s) triggered: {', '.join(triggered)} ({judged})")
    if errors:  # the run could not be checked whole: bad input, whatever the others found
        _err(f"{len(errors)} rule(s) could not read {args.run}: {', '.join(errors)} ({judged})")
        return 2
    if triggered:
        return 1
    if results and skipped == len(results):  # an empty or unrelated run must not pass a gate
        _err(f"no rule could judge {args.run}: it holds none of what they read ({judged})")
        return 2
    if not args.rule:  # the default profile: a run missing its loss must not pass either
        from .rules.registry import default_profile_gap

        profile = [r for r in results if r.name != "baseline_comparison"]  # --baseline's
        gap = default_profile_gap(run, profile)
        if gap is not None:
            _err(f"not judged: {gap} ({judged}; name the rules to run with --rule)")
            return 2
    print(f"no rule triggered ({judged})")
    return 0


# -- report ----------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    try:
        from .report.html import write_report
    except ImportError as exc:
        _err(f"the HTML report is not available (pytest_modelrules.report.html: {exc})")
        return 2
    from .store.run import open_run

    run = open_run(args.run)
    base = open_run(args.baseline) if args.baseline else None
    results = check_run(args.run, args.baseline, args.rule) if args.rule else None
    path = write_report(run, args.out, baseline=base, results=results)
    print(f"report: {path}")
    return 0


# -- demo ------------------------------------------------------------------------------------
def run_examples(run_dir: Path, extra: Sequence[str] = ()) -> tuple[int, str]:
    """Run examples/gtsrb's tests against a recorded run in a subprocess: (exit code, output)."""
    cmd = [
        sys.executable, "-m", "pytest", str(EXAMPLES_DIR), f"--model-run={Path(run_dir).resolve()}",
        "-p", "no:cacheprovider", "-q", "-rA", "--no-header", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=EXAMPLES_DIR)
    return proc.returncode, proc.stdout + proc.stderr


def _outcomes(output: str) -> dict[str, str]:
    """test name -> PASSED/FAILED from pytest's -rA summary lines."""
    out = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] in ("PASSED", "FAILED", "ERROR") and "::" in parts[1]:
            out[parts[1].split("::")[-1].split("[")[0]] = parts[0]  # no "[run]" suffix
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    if not EXAMPLES_DIR.is_dir():
        _err(f"the examples are not here ({EXAMPLES_DIR}); run the demo from a source checkout")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = _overrides(args)
    t0 = time.perf_counter()
    results, outcomes = {}, {}
    for recipe in ("seed", "fixed"):
        print(f"== training the {recipe!r} recipe ==", flush=True)
        r = _train(recipe, out / recipe, dict(overrides), data_dir=out / "data")
        results[recipe] = r
        _print_result(r)
        print(f"== examples/gtsrb against the {recipe!r} run ==", flush=True)
        _, text = run_examples(out / recipe)
        outcomes[recipe] = _outcomes(text)
        if args.verbose or not outcomes[recipe] or "ERROR" in outcomes[recipe].values():
            print(text)
    print("\n== verdicts ==")
    names = sorted(set(outcomes["seed"]) | set(outcomes["fixed"]))
    width = max((len(n) for n in names), default=10)
    print(f"{'example test':{width}}  {'seed':8}{'fixed':8}")
    for n in names:
        print(f"{n:{width}}  {outcomes['seed'].get(n, '?'):8}{outcomes['fixed'].get(n, '?'):8}")
    caught = [n for n in names if outcomes["seed"].get(n) == "FAILED"]
    cleared = [n for n in caught if outcomes["fixed"].get(n) == "PASSED"]
    s, f = results["seed"], results["fixed"]
    print(
        f"\nseed recipe : test accuracy {s.accuracy:.3f} (GTSRB-weighted {s.gtsrb_accuracy:.3f}), "
        f"mirror confusions {s.mirror_confusions}"
    )
    print(
        f"fixed recipe: test accuracy {f.accuracy:.3f} (GTSRB-weighted {f.gtsrb_accuracy:.3f}), "
        f"mirror confusions {f.mirror_confusions}"
    )
    print(f"rules caught in the seed run: {', '.join(caught) or 'none'}")
    print(f"cleared by the fix: {', '.join(cleared) or 'none'}")
    print(f"demo took {time.perf_counter() - t0:.0f} s; runs under {out}")
    fixed_clean = all(v == "PASSED" for v in outcomes["fixed"].values())
    ok = bool(caught) and cleared == caught and fixed_clean
    return 0 if ok else 1


# -- parser ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modelrules", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="write the synthetic GTSRB in the official layout")
    g.add_argument("--out", required=True, help="folder to write (gtsrb/ goes inside)")
    g.add_argument("--train-images", type=int, default=6000)
    g.add_argument("--test-per-class", type=int, default=50)
    g.add_argument("--test-distribution", choices=("balanced", "gtsrb"), default="balanced")
    g.add_argument("--test-images", type=int, default=0)
    g.add_argument("--size", type=int, default=32)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("train", help="train a reference recipe, recording a run")
    t.add_argument("--recipe", choices=("seed", "fixed"), default="seed")
    t.add_argument("--out", required=True, help="run folder to write")
    _add_train_flags(t)
    t.set_defaults(func=cmd_train)

    i = sub.add_parser("info", help="what a run holds: workers, steps, metadata, tensors")
    i.add_argument("run", help="run folder or fsspec URL (either layout)")
    i.add_argument("--regex", default=None, help="only the tensors this regex finds")
    i.add_argument("--json", default=None,
                   help="also write the summary as JSON here ('-': standard output, the "
                        "text going to standard error)")  # fmt: skip
    i.set_defaults(func=cmd_info)

    c = sub.add_parser("check", help="evaluate rules on a run (exit 1 when one triggers)")
    c.add_argument("run")
    c.add_argument("--baseline", default=None,
                   help="run to compare with: rules that take a baseline get it; with the "
                        "default profile, baseline_comparison is added")  # fmt: skip
    c.add_argument("--rule", action="append", default=None,
                   help="rule name, or name:key=value;key=value (repeatable)")  # fmt: skip
    c.add_argument("--json", default=None,
                   help="also write the results as JSON here ('-': standard output, the "
                        "table going to standard error)")  # fmt: skip
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("report", help="write the HTML report of a run")
    r.add_argument("run")
    r.add_argument("--baseline", default=None)
    r.add_argument("--rule", action="append", default=None)
    r.add_argument("--out", required=True)
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="train seed and fixed, run examples/gtsrb against both")
    d.add_argument("--out", default="modelrules-demo")
    d.add_argument("--verbose", action="store_true", help="print the example tests' output")
    _add_train_flags(d)
    d.set_defaults(func=cmd_demo)
    return p


# the path arguments (dest -> how the user wrote it): an empty one is an unset variable, not
# "the current folder" (``--out ''`` wrote there) nor "none given" (``--baseline ''`` was dropped)
_PATH_ARGS = {
    "run": "RUN", "out": "--out", "baseline": "--baseline", "json": "--json",
    "data": "--data", "weights": "--weights",
}  # fmt: skip


def _empty_path_arg(args: argparse.Namespace) -> str | None:
    """The first path argument given as an empty (or blank) string, as the user wrote it."""
    for dest, flag in _PATH_ARGS.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and not value.strip():
            return flag
    return None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's flush at exit finds no closed pipe
    (Python's recipe for SIGPIPE: https://docs.python.org/3/library/signal.html)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (a captured stream)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    empty = _empty_path_arg(args)
    if empty is not None:
        _err(f"{empty} is empty (an unset variable?): give a path")
        return 2
    try:
        if getattr(args, "json", None) == "-":  # JSON alone on stdout, the rest on stderr
            args.json_stdout = sys.stdout
            with contextlib.redirect_stdout(sys.stderr):
                code = int(args.func(args) or 0)
        else:
            code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, where a reader gone away is caught, not at exit
        return code
    except BrokenPipeError:  # `modelrules info RUN | head`: the reader went away, no error
        _silence_stdout()
        return 141  # a shell's status for a writer stopped by SIGPIPE
    except (OSError, ValueError, ModelRulesError) as exc:  # also an output path that is a file
        _err(str(exc))
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
