"""CheckInputImages: was the model input normalised? (SageMaker Debugger's built-in)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from . import _select as sel
from .base import BuiltinRule, Param, register
from .result import RuleResult

#: the root model's first input (``ResNet_input_0``), not a loss's (``CrossEntropyLoss_input_0``)
#: and not a submodule's (names with a dot)
DEFAULT_INPUT_REGEX = r"^(?![A-Za-z0-9_]*[Ll]oss_)[A-Za-z0-9_]+_input_0$"


@register
class CheckInputImages(BuiltinRule):
    """Input images not normalised: once ``threshold_samples`` images were seen, the mean of
    every image seen so far, per channel (axis ``channel`` of the saved batch, NCHW: 1), is
    further than ``threshold_mean`` from 0.

    Decisions: the default ``regex`` selects the root model's input (``ResNet_input_0``): a
    name ``<Model>_input_0`` without dots that is not a loss's input. The mean is cumulative
    over all saved batches (TRAIN and EVAL, in global step order) and is checked at every step
    from the one at which ``threshold_samples`` samples were reached; a run with fewer samples
    is reported as skipped. Reads the full input tensor or, when only that is stored, the
    Recorder's ``sample_channel_mean`` reduction of it (each sample's channel means: the same
    figures).
    """

    name = "check_input_images"
    params: ClassVar[dict[str, Param]] = {
        "threshold_mean": Param(0.2, "float", "largest allowed |mean| per channel"),
        "threshold_samples": Param(500, "int", "images to see before judging"),
        "regex": Param(DEFAULT_INPUT_REGEX, "regex", "the model input tensor", optional=False),
        "channel": Param(1, "int", "channel axis of the saved batch (NCHW: 1)"),
    }

    def _validate(self) -> None:
        if self.channel < 1:
            raise self.param_error(
                "channel", f"must be >= 1 (axis 0 is the batch), got {self.channel}"
            )
        if self.threshold_samples < 1:
            raise self.param_error("threshold_samples", "must be at least 1")

    def _evaluate(self, run: Any) -> RuleResult:
        chosen = sel.select(run, tensor_regex=self.regex)
        names = [n for n in chosen if run.has_tensor(n)]
        reduced = {
            n: red
            for n in chosen
            if not run.has_tensor(n)
            and (red := sel.stored_reduction(run, n, "sample_channel_mean")) is not None
        }
        if not names and not reduced:
            raise sel.missing(
                "CheckInputImages",
                f"neither a full tensor nor a sample_channel_mean reduction matches regex "
                f"{self.regex!r} (the model input)",
                run,
            )
        ch = self.channel
        if reduced and ch != 1:
            raise sel.missing(
                "CheckInputImages",
                f"only the sample_channel_mean reduction of {', '.join(reduced)} is stored: it "
                f"holds the channel means of axis 1, but channel={ch} was asked (record the "
                "full input: CollectionConfig('inputs', save_raw_tensor=True))",
                run,
            )
        per: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        # per step and channel: [sum of values, values counted, samples]; the full tensor sums
        # pixels, the reduction (one mean per sample and channel) sums sample means - each
        # sample weighing one either way, as every sample of a batch has as many pixels
        def sums(x: np.ndarray) -> np.ndarray:
            per_channel = np.moveaxis(x, ch + 1, 1).reshape(x.shape[0], x.shape[ch + 1], -1)
            total = per_channel.astype(np.float64).sum(axis=2)
            counts = np.full((x.shape[0], 1), per_channel.shape[2], np.float64)
            batch = np.full((x.shape[0], 1), x.shape[1], np.float64)
            return np.concatenate([total, counts, batch], axis=1)

        def from_means(x: np.ndarray) -> np.ndarray:  # (steps, samples, channels)
            total = x.astype(np.float64).sum(axis=1)
            n = np.full((x.shape[0], 1), x.shape[1], np.float64)
            return np.concatenate([total, n, n], axis=1)

        sources = [(n, run.tensor(n).series(), sums) for n in names]
        sources += [(n, run.tensor(red).series(), from_means) for n, red in reduced.items()]
        # integers are indices (token ids, class ids) or raw bytes the model converts itself:
        # no values to normalise
        integer = {
            n: s.arrays[0].dtype
            for n, s, _ in sources
            if s.arrays and s.arrays[0].dtype.kind in "iub"
        }
        not_judged = [f"{n} not judged: it holds integers ({dt})" for n, dt in integer.items()]
        sources = [src for src in sources if src[0] not in integer]
        if integer and not sources:
            raise sel.missing(
                "CheckInputImages",
                "; ".join(f"{n} holds integers ({dt})" for n, dt in integer.items())
                + ": ids or raw bytes, not values to normalise (the rule judges float inputs)",
                run,
            )
        for name, s, fn in sources:
            if not s.arrays:
                continue
            if fn is sums and s.arrays[0].ndim <= ch:
                raise sel.missing(
                    "CheckInputImages",
                    f"{name!r} has shape {s.arrays[0].shape}: no channel axis {ch} (images are "
                    "saved as batch x channels x ...)",
                    run,
                )
            cum = np.cumsum(sel.apply_per_step(s, fn), axis=0)
            per[name] = (s.global_steps, cum[:, :-2] / cum[:, -2:-1], cum[:, -1])
        if not per:
            raise sel.missing("CheckInputImages", f"{', '.join(names)} saved at no step", run)
        triggers_at: set[int] = set()
        lines: list[str] = []
        first: tuple[int, str, int, float, float] | None = None
        worst = 0.0
        seen_total = 0
        evidence: dict[str, Any] = {"tensors": list(per), "threshold_mean": self.threshold_mean}
        judged = False
        for name, (gsteps, means, seen) in per.items():
            evidence[name] = {"steps": gsteps, "channel_mean": means, "samples_seen": seen}
            seen_total = max(seen_total, int(seen[-1]))
            ok_rows = seen >= self.threshold_samples
            if not ok_rows.any():
                continue
            judged = True
            absm = np.abs(means[ok_rows])
            worst = max(worst, float(absm.max()))
            bad = (np.abs(means) > self.threshold_mean).any(axis=1) & ok_rows
            triggers_at.update(gsteps[bad].tolist())
            if bad.any():
                r = int(np.argmax(bad))
                c = int(np.argmax(np.abs(means[r])))
                if first is None or gsteps[r] < first[0]:
                    first = (int(gsteps[r]), name, c, float(means[r, c]), float(seen[r]))
            lines.append(
                f"{name}: channel means "
                + ", ".join(sel.fmt(m, 3) for m in means[-1])
                + f" over {int(seen[-1])} samples"
            )
        lines += not_judged
        if not judged:
            return self.make_result(
                False,
                f"Only {seen_total} input samples were saved ({', '.join(per)}); the rule judges "
                f"after {self.threshold_samples}.",
                evidence=evidence,
                skipped=True,
            )
        triggers = sel.trigger_steps(self, run, triggers_at)
        if first is not None:
            g, name, c, m, seen = first
            text = (
                f"{name}: channel {c} mean {sel.fmt(m, 3)} over the first {int(seen)} samples at "
                f"{sel.step_label(run, g)}; limit |mean| <= {sel.fmt(self.threshold_mean)}: the "
                f"input does not look normalised. At the end: {'; '.join(lines)}."
            )
        else:
            text = (
                f"Input looks normalised: every channel mean within {sel.fmt(self.threshold_mean)} "
                f"of 0 ({'; '.join(lines)})."
            )
        return self.make_result(
            first is not None,
            text,
            first_trigger=triggers[0] if triggers else None,
            triggers=triggers,
            figure=worst,
            figure_name="largest |channel mean|",
            limit=self.threshold_mean,
            evidence=evidence,
            steps_evaluated=int(max(len(v[0]) for v in per.values())),
        )
