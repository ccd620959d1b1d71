"""What a run holds, at a glance: workers, steps per mode, metadata, collections and each
tensor's saved steps and last value's dtype and shape (``modelrules info RUN``).

The first thing to look at when a rule says a tensor is missing, or before writing a custom
rule: the names to ask for and the steps they were saved at.
"""

from __future__ import annotations

from typing import Any

from .names import printable
from .run import Run


def summarize(run: Run, regex: str | None = None) -> dict[str, Any]:
    """A JSON-able description of ``run``; ``regex`` keeps only the tensors it matches
    (``re.search``). Reads one value per tensor (its last), nothing more."""
    modes = {
        mode.name: {"count": len(steps), "first": steps[0], "last": steps[-1]}
        for mode in run.modes()
        if (steps := run.steps(mode))
    }
    all_steps = run.steps()
    tensors = []
    for name in run.tensor_names(regex=regex):
        tensor = run.tensor(name)
        steps = tensor.steps()
        entry: dict[str, Any] = {"name": name, "steps": len(steps)}
        if steps:
            workers = tensor.workers(steps[-1])  # shards of a distributed run: the first's
            last = tensor.value(steps[-1], worker=workers[0] if workers else None)
            entry.update(first_step=steps[0], last_step=steps[-1])
            entry.update(dtype=str(last.dtype), shape=list(last.shape))
        tensors.append(entry)
    return {
        "path": run.path,
        "layout": run.layout,
        "workers": run.workers(),
        "ended": run.has_ended,
        "end": run.end_info,
        "steps": {
            "count": len(all_steps),
            "first": all_steps[0] if all_steps else None,
            "last": all_steps[-1] if all_steps else None,
            "modes": modes,
        },
        "metadata_keys": sorted(run.metadata),
        "class_names": len(run.class_names or []),
        "collections": {
            name: len(run.tensor_names(collection=name)) for name in sorted(run.collections())
        },
        "tensors": tensors,
    }


def not_ended_note(run: Run) -> str | None:
    """Why a run that has not ended must be read with care (None when it has ended): its
    training is still writing it, or stopped without closing the Recorder (killed, out of
    memory), and rules judge only the steps written so far - a gate that passes on half a
    run passes a model nobody finished training."""
    if getattr(run, "has_ended", True):
        return None
    steps = run.steps()
    held = f"{len(steps)} complete step{'s' if len(steps) != 1 else ''}"
    if steps:
        held += f" (last global step {steps[-1]})"
    marker = "training_job_end.ts" if getattr(run, "layout", "") == "smdebug" else "END file"
    return (
        f"the run has not ended (no {marker} from every worker): its training is still "
        f"writing it, or stopped without closing the Recorder (killed, out of memory); "
        f"rules judge the {held} written so far"
    )


def format_summary(summary: dict[str, Any]) -> str:
    """The text ``modelrules info`` prints."""
    steps = summary["steps"]
    workers = summary["workers"]
    end = summary["end"]
    reason = end.get("reason") if isinstance(end, dict) else None
    reason = printable(str(reason)) if reason else None  # the run's text: no control characters
    lines = [
        f"run: {summary['path']} ({summary['layout']} layout), {len(workers)} worker"
        f"{'s' if len(workers) != 1 else ''} ({', '.join(workers)}), "
        + ("ended" + (f" ({reason})" if reason else "") if summary["ended"] else "not ended"),
    ]
    if steps["count"]:
        modes = ", ".join(
            f"{name} {m['count']} ({m['first']}-{m['last']})" for name, m in steps["modes"].items()
        )
        lines.append(f"steps: {steps['count']} global ({steps['first']}-{steps['last']}); {modes}")
    else:
        lines.append("steps: none complete")
    meta = ", ".join(printable(str(k)) for k in summary["metadata_keys"]) or "none"
    if summary["class_names"]:
        meta += f" ({summary['class_names']} class names)"
    lines.append(f"metadata: {meta}")
    if summary["collections"]:
        counts = (f"{name} ({n})" for name, n in summary["collections"].items())
        lines.append("collections: " + ", ".join(counts))
    tensors = summary["tensors"]
    lines.append(f"tensors: {len(tensors)}")
    width = max((len(t["name"]) for t in tensors), default=4)
    for t in tensors:
        if t["steps"]:
            saved = f"{t['steps']:>6} steps ({t['first_step']}-{t['last_step']})"
            last = f"{t['dtype']} {tuple(t['shape'])}"
        else:
            saved, last = f"{0:>6} steps", ""
        lines.append(f"  {t['name']:<{width}}  {saved:<28} {last}")
    return "\n".join(lines)


__all__ = ["format_summary", "not_ended_note", "summarize"]
