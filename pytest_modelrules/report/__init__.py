"""Pictures and an HTML report of a run: the seed's investigation, drawn.

matplotlib is imported only when a plot is drawn (``report.plots``); the rule -> plot mapping
(``report.mapping``) is pure Python so that assertion messages can name the evidence.
"""

from __future__ import annotations

import importlib
from typing import Any

from .mapping import describe_evidence, evidence_anchor, evidence_files, evidence_plots

_LAZY = {
    "write_report": "html",
    "write_report_from_verdicts": "html",
    "evaluate_rules": "html",
    "plot_loss": "plots",
    "plot_label_counts": "plots",
    "plot_confusion_matrix": "plots",
    "plot_misclassified": "plots",
    "plot_dead_relu": "plots",
    "plot_gradient_norms": "plots",
    "save_figure": "plots",
}

__all__ = [
    "describe_evidence",
    "evaluate_rules",
    "evidence_anchor",
    "evidence_files",
    "evidence_plots",
    "plot_confusion_matrix",
    "plot_dead_relu",
    "plot_gradient_norms",
    "plot_label_counts",
    "plot_loss",
    "plot_misclassified",
    "save_figure",
    "write_report",
    "write_report_from_verdicts",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
