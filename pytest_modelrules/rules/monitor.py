"""RuleMonitor: evaluate rules while training runs and ask the loop to stop when one triggers
(SageMaker Debugger's auto-termination, without CloudWatch).

The Recorder (or a hand-written loop) calls :meth:`RuleMonitor.attach` once with the run's
folder, :meth:`RuleMonitor.on_step_committed` after each committed step (cheap: every
``every_n_steps`` calls it wakes a worker thread that refreshes the run from disk and
evaluates the rules), reads :attr:`RuleMonitor.stop_requested`, and calls
:meth:`RuleMonitor.close` at the end (a final evaluation, the thread joined)::

    monitor = RuleMonitor(["loss_not_decreasing"], every_n_steps=50)
    monitor.attach(run_dir)
    for step, batch in enumerate(loader):
        ...  # train, write the step
        monitor.on_step_committed(step)
        if monitor.stop_requested:
            break
    writer.close(reason=monitor.stop_reason)
    results = monitor.close()
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from ..exceptions import ModelRulesError
from .base import BuiltinRule
from .registry import make_rule
from .result import RuleResult

_LOG = logging.getLogger("pytest_modelrules.monitor")


class RuleMonitor:
    """Evaluate ``rules`` every ``every_n_steps`` committed steps of a run being written.

    ``rules``: names, (name, params) pairs or BuiltinRule instances. With ``stop_on_trigger``
    the first triggered rule sets :attr:`stop_requested` and :attr:`stop_reason`. With
    ``background`` False the evaluation runs inside :meth:`on_step_committed` (deterministic,
    for tests and small runs).
    """

    def __init__(
        self,
        rules: list[Any] | tuple[Any, ...] | str | BuiltinRule,
        every_n_steps: int = 100,
        stop_on_trigger: bool = True,
        background: bool = True,
    ) -> None:
        if isinstance(rules, (str, BuiltinRule)):
            rules = [rules]
        self.rules: list[BuiltinRule] = [make_rule(r) for r in rules]
        if not self.rules:
            raise ValueError("RuleMonitor needs at least one rule")
        if isinstance(every_n_steps, bool) or int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps!r}")
        self.every_n_steps = int(every_n_steps)
        self.stop_on_trigger = bool(stop_on_trigger)
        self.background = bool(background)
        self.errors: list[str] = []
        self.evaluations = 0
        self.last_evaluated_step: int | None = None
        self._path: str | None = None
        self._run: Any = None
        self._results: list[RuleResult] = []
        self._stop_reason: str | None = None
        self._committed = 0
        self._pending: int | None = None
        self._lock = threading.Lock()
        self._eval_lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None

    # -- the interface the Recorder calls ------------------------------------------------------

    def attach(self, run_path: str | os.PathLike) -> None:
        """Watch the run at ``run_path`` (a folder or URL the training job writes)."""
        if self._closed:
            raise RuntimeError("this RuleMonitor is closed")
        self._path = os.fspath(run_path)
        self._run = None
        if self.background and self._thread is None:
            self._thread = threading.Thread(
                target=self._worker, name="modelrules-rule-monitor", daemon=True
            )
            self._thread.start()

    def on_step_committed(self, step: int) -> None:
        """A step was committed; every ``every_n_steps`` calls an evaluation is scheduled."""
        if self._path is None:
            raise RuntimeError("RuleMonitor.attach(run_path) must be called before steps arrive")
        self._committed += 1
        if self._committed % self.every_n_steps:
            return
        if self.background:
            with self._lock:
                self._pending = int(step)
            self._wake.set()
        else:
            self._evaluate(int(step))

    @property
    def stop_requested(self) -> bool:
        """A rule triggered and ``stop_on_trigger`` is set: the loop should stop."""
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """Which rule triggered, where, and why (one line), or None."""
        return self._stop_reason

    @property
    def results(self) -> list[RuleResult]:
        """The results of the latest evaluation, one per rule."""
        with self._lock:
            return list(self._results)

    def close(self) -> list[RuleResult]:
        """Stop the worker thread, evaluate once more over everything written, return results."""
        if self._closed:
            return self.results
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._path is not None:
            self._evaluate(None)
        self._closed = True
        return self.results

    def __enter__(self) -> RuleMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                step, self._pending = self._pending, None
            if step is not None:
                self._evaluate(step)
            if self._closing:
                return

    def _open(self) -> Any:
        from ..store.run import open_run

        if self._run is None:
            self._run = open_run(self._path)
        else:
            self._run.refresh()
        return self._run

    def _evaluate(self, step: int | None) -> None:
        with self._eval_lock:
            try:
                run = self._open()
            except ModelRulesError as exc:  # nothing committed yet, or a damaged file
                self.errors.append(f"opening {self._path}: {exc}")
                return
            results: list[RuleResult] = []
            for rule in self.rules:
                try:
                    result = rule.evaluate(run)
                except ModelRulesError as exc:  # e.g. a tensor not written yet
                    self.errors.append(f"{type(rule).__name__} at step {step}: {exc}")
                    continue
                except Exception as exc:  # a bug must not kill training; it is kept and logged
                    _LOG.exception("rule %s failed", type(rule).__name__)
                    self.errors.append(f"{type(rule).__name__} at step {step}: {exc!r}")
                    continue
                results.append(result)
                stop = self.stop_on_trigger or bool(
                    result.evidence.get("stop_training_on_fire", False)
                )
                if result.triggered and stop and self._stop_reason is None:
                    self._stop_reason = f"{result.summary()}. {result.explanation}"
                    _LOG.warning("RuleMonitor: stop requested: %s", self._stop_reason)
            with self._lock:
                self._results = results
            self.evaluations += 1
            self.last_evaluated_step = step


__all__ = ["RuleMonitor"]
