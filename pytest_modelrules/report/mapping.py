"""Which plot shows the evidence of which rule, and where it sits in the HTML report.

Pure Python (no matplotlib): assertion messages and the pytest plugin import it to name the
file and anchor that show a failure, e.g. ``report.html#rule-dead_relu`` and ``dead_relu.png``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REPORT_FILE = "report.html"


@dataclass(frozen=True)
class PlotSpec:
    """One plot of the report: its key (also the PNG's stem and the section's id) and title."""

    key: str
    title: str
    what: str

    @property
    def filename(self) -> str:
        return f"{self.key}.png"


#: every plot of the report, in the order the page shows them
PLOTS: dict[str, PlotSpec] = {
    p.key: p
    for p in (
        PlotSpec(
            "loss", "Loss per mode", "the loss over steps, per mode, with rule triggers marked"
        ),
        PlotSpec("label_counts", "Label counts per class", "how many samples of each class"),
        PlotSpec("confusion_matrix", "Confusion matrix", "true class (rows) against predicted"),
        PlotSpec("misclassified", "Misclassified inputs", "inputs the model got wrong"),
        PlotSpec("dead_relu", "Dead ReLU units per layer", "percent of dead units over steps"),
        PlotSpec("gradient_norms", "Gradient norms per layer", "L2 norm of each gradient"),
    )
}

_CONFUSION = ("confusion_matrix", "misclassified")

#: rule (snake_case) -> the plots that show its evidence, the first one holding its anchor
RULE_PLOTS: dict[str, tuple[str, ...]] = {
    "loss_not_decreasing": ("loss",),
    "overfit": ("loss",),
    "overtraining": ("loss",),
    "class_imbalance": ("label_counts", "confusion_matrix"),
    "confusion": _CONFUSION,
    "direction_confusion": _CONFUSION,
    "recall_floor": _CONFUSION,
    "recall_above": _CONFUSION,
    "class_recall_regression": _CONFUSION,
    "dead_relu": ("dead_relu",),
    "vanishing_gradient": ("gradient_norms",),
    "exploding_gradient": ("gradient_norms",),
    "exploding_tensor": ("gradient_norms", "loss"),
    "poor_weight_initialization": ("gradient_norms", "loss"),
}

# fallbacks for rules not listed above (custom rules, rules added later), by name fragment
_FRAGMENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("relu", ("dead_relu",)),
    ("gradient", ("gradient_norms",)),
    ("confusion", _CONFUSION),
    ("recall", _CONFUSION),
    ("imbalance", ("label_counts",)),
    ("label", ("label_counts",)),
    ("loss", ("loss",)),
    ("overfit", ("loss",)),
)


def snake_name(rule_name: str) -> str:
    """``DeadRelu`` / ``dead_relu`` / ``dead-relu`` -> ``dead_relu`` (what anchors use)."""
    text = rule_name.strip()
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", text)
    text = re.sub(r"[^0-9A-Za-z]+", "_", text)
    return text.strip("_").lower()


def evidence_plots(rule_name: str) -> tuple[str, ...]:
    """The keys of the plots (see :data:`PLOTS`) that show a rule's evidence; () if none."""
    name = snake_name(rule_name)
    if name in RULE_PLOTS:
        return RULE_PLOTS[name]
    for fragment, plots in _FRAGMENTS:
        if fragment in name:
            return plots
    return ()


def evidence_files(rule_name: str) -> list[str]:
    """The PNG files (beside report.html) that show a rule's evidence."""
    return [PLOTS[k].filename for k in evidence_plots(rule_name)]


def run_slug(run_name: str) -> str:
    """A run name made safe for an HTML id or a folder name."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "-", run_name).strip("-") or "run"


def anchor_id(rule_name: str, run_name: str | None = None) -> str:
    """The HTML id of a rule's evidence: ``rule-<snake>``, or ``rule-<snake>--<run>``."""
    base = f"rule-{snake_name(rule_name)}"
    return f"{base}--{run_slug(run_name)}" if run_name else base


def evidence_anchor(rule_name: str, run_name: str | None = None) -> str:
    """The anchor (``#rule-<snake_name>``) in report.html that shows why a rule failed.

    With ``run_name`` it names that run's section (``#rule-<snake>--<run>``); without, the
    first section that holds the rule (the only one in a single-run report).
    """
    return "#" + anchor_id(rule_name, run_name)


def describe_evidence(rule_name: str, report_dir: str | None = None) -> str:
    """One line for an assertion message: where the report shows this rule's evidence."""
    page = f"{report_dir.rstrip('/')}/{REPORT_FILE}" if report_dir else REPORT_FILE
    files = evidence_files(rule_name)
    where = f"{page}{evidence_anchor(rule_name)}"
    if files:
        titles = ", ".join(PLOTS[k].title.lower() for k in evidence_plots(rule_name))
        return f"evidence: {where} ({titles}: {', '.join(files)})"
    return f"evidence: {where}"
