"""What the Recorder saves and when: SaveConfig, SaveConfigMode and CollectionConfig.

A small API in the spirit of SageMaker Debugger's (``smdebug.SaveConfig``,
``sagemaker.debugger.CollectionConfig``): a collection is a named set of tensors (regexes and/or
exact names) with its own save schedule per mode, the reductions to store and whether to store
the full tensor. Pure Python: importing this module does not import torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..modes import ModeKeys, parse_mode
from ..store.names import OUR_REDUCTIONS, SMDEBUG_REDUCTIONS, check_printable

_SAVED_MODES = (ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT, ModeKeys.GLOBAL)


def _as_int_or_none(value: Any, what: str) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected an integer, got {value!r}") from None


def _as_steps(value: Any, what: str) -> list[int] | None:
    """``[0, 10]``, ``"0,10"`` or ``"0 10"`` -> [0, 10]."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = [p for p in re.split(r"[,\s]+", value.strip()) if p]
    elif isinstance(value, Iterable):
        parts = list(value)
    else:
        parts = [value]
    return sorted({_as_int_or_none(p, what) for p in parts} - {None})  # type: ignore[arg-type]


@dataclass
class SaveConfigMode:
    """When to save in one mode. Steps are that mode's own steps (counted from 0).

    A step is saved when it is in ``save_steps``, or when it lies in ``[start_step, end_step)``
    and is a multiple of ``save_interval`` (smdebug's rule). ``save_interval=None`` with
    ``save_steps`` given saves only those steps; ``save_interval=0`` saves nothing.
    """

    save_interval: int | None = None
    save_steps: list[int] | None = None
    start_step: int = 0
    end_step: int | None = None

    def __post_init__(self) -> None:
        self.save_interval = _as_int_or_none(self.save_interval, "save_interval")
        self.save_steps = _as_steps(self.save_steps, "save_steps")
        self.start_step = _as_int_or_none(self.start_step, "start_step") or 0
        self.end_step = _as_int_or_none(self.end_step, "end_step")
        if self.save_interval is not None and self.save_interval < 0:
            raise ValueError(f"save_interval must be >= 0, got {self.save_interval}")
        self._steps_set = frozenset(self.save_steps or ())

    def should_save(self, step: int) -> bool:
        """Whether mode step ``step`` is saved."""
        if step in self._steps_set:
            return True
        interval = self.save_interval
        if not interval or step < self.start_step:
            return False
        if self.end_step is not None and step >= self.end_step:
            return False
        return (step - self.start_step) % interval == 0

    def saves_any(self) -> bool:
        """Whether some step is saved (``save_interval=0`` and no ``save_steps``: none)."""
        if self._steps_set:
            return True
        end = self.end_step
        return bool(self.save_interval) and (end is None or end > self.start_step)

    def to_json(self) -> dict[str, Any]:
        return {
            "save_interval": self.save_interval,
            "save_steps": list(self.save_steps or []),
            "start_step": self.start_step,
            "end_step": self.end_step,
        }


class _DefaultInterval(int):
    """SaveConfig's default ``save_interval`` (500), told apart from a 500 given."""

    def __repr__(self) -> str:
        return "500"


_DEFAULT_INTERVAL = _DefaultInterval(500)


class SaveConfig:
    """A save schedule for every mode: one SaveConfigMode per mode.

    ``SaveConfig(save_interval=100)`` saves every 100th step of each mode;
    ``SaveConfig({modes.EVAL: SaveConfigMode(save_interval=1)}, save_interval=500)`` saves every
    EVAL step and every 500th step of the other modes.
    """

    def __init__(
        self,
        mode_save_configs: Mapping[ModeKeys | str | int, SaveConfigMode | Mapping[str, Any] | None]
        | None = None,
        save_interval: int | None = _DEFAULT_INTERVAL,
        start_step: int = 0,
        end_step: int | None = None,
        save_steps: Iterable[int] | str | None = None,
    ) -> None:
        if save_interval is _DEFAULT_INTERVAL:
            # save_steps alone: only those steps (as smdebug's documentation says; its code
            # also saves every 100th step); an interval given with them: both
            save_interval = None if save_steps is not None else 500
        base = SaveConfigMode(
            save_interval, _as_steps(save_steps, "save_steps"), start_step, end_step
        )
        self.modes: dict[ModeKeys, SaveConfigMode] = {m: base for m in _SAVED_MODES}
        for key, value in (mode_save_configs or {}).items():
            mode = parse_mode(key, allow_none=False)
            if value is None:
                value = SaveConfigMode(save_interval=0)
            elif isinstance(value, Mapping):
                value = SaveConfigMode(**dict(value))
            self.modes[mode] = value  # type: ignore[index]

    def should_save(self, mode: ModeKeys, mode_step: int) -> bool:
        return self.modes[mode].should_save(mode_step)

    def saves_any(self) -> bool:
        """Whether some step of some mode is saved."""
        return any(m.saves_any() for m in self.modes.values())

    def to_json(self) -> dict[str, Any]:
        """smdebug's collection-file shape: {"TRAIN": {...}, "EVAL": {...}, ...}."""
        return {m.name: c.to_json() for m, c in self.modes.items()}

    def __repr__(self) -> str:
        return f"SaveConfig({self.to_json()})"


def glob_regex(pattern: str) -> str:
    """SageMaker's glob-ish regexes made valid: a ``*`` with nothing to repeat becomes ``.*``.

    ``"*ResNet_input|*CrossEntropyLoss"`` -> ``".*ResNet_input|.*CrossEntropyLoss"``.
    """
    converted = re.sub(r"(^|[|(])\*", r"\1.*", pattern)
    try:
        re.compile(converted)
    except re.error as exc:
        raise ValueError(
            f"include_regex {pattern!r} is not a valid regular expression: {exc}"
        ) from None
    return converted


def _regex_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [glob_regex(value)] if value else []
    return [glob_regex(str(v)) for v in value if str(v)]


_ALL_REDUCTIONS = SMDEBUG_REDUCTIONS + OUR_REDUCTIONS


def parse_reductions(value: Any) -> tuple[tuple[str, bool], ...]:
    """``["l2", "abs_mean"]`` or ``"l2,abs_mean"`` -> (("l2", False), ("mean", True))."""
    if value is None:
        return ()
    items = [p for p in re.split(r"[,\s]+", value) if p] if isinstance(value, str) else list(value)
    out: list[tuple[str, bool]] = []
    for item in items:
        name = str(item).strip()
        absolute = name.startswith("abs_")
        base = name[4:] if absolute else name
        if base not in _ALL_REDUCTIONS:
            raise ValueError(f"unknown reduction {name!r}: expected one of {_ALL_REDUCTIONS}")
        if absolute and base not in SMDEBUG_REDUCTIONS:
            raise ValueError(f"reduction {name!r}: only {SMDEBUG_REDUCTIONS} take abs_")
        if (base, absolute) not in out:
            out.append((base, absolute))
    return tuple(out)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass
class CollectionConfig:
    """A collection to record: which tensors (regexes, exact names), when, and how.

    Accepts SageMaker's spelling, ``CollectionConfig(name="custom_collection",
    parameters={"include_regex": "*ResNet_input|*CrossEntropyLoss", "save_interval": "500"})``
    (parameter values may be strings; keys ``train.save_interval``, ``eval.save_steps``, ...
    set one mode), and keywords. ``reductions`` (e.g. ``["l2", "abs_mean"]``) are computed on
    the device; ``save_raw_tensor`` stores the full tensor too. With neither, the full tensor is
    stored. ``save_interval`` None means "the Recorder's".
    """

    name: str
    parameters: Mapping[str, Any] | None = None
    include_regex: list[str] | str | None = None
    tensor_names: list[str] | None = None
    save_interval: int | None = None
    save_steps: list[int] | str | None = None
    start_step: int | None = None
    end_step: int | None = None
    save_config: SaveConfig | None = None
    reductions: list[str] | str | None = None
    save_raw_tensor: bool | None = None
    mode_overrides: dict[ModeKeys, dict[str, Any]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a collection needs a non-empty name")
        check_printable([self.name], "collection")  # readers refuse the run (store/names.py)
        params = dict(self.parameters or {})
        known = {
            "include_regex", "tensor_names", "save_interval", "save_steps", "start_step",
            "end_step", "reductions", "save_raw_tensor", "abs_reductions",
        }  # fmt: skip
        for key, value in params.items():
            if "." in key:
                mode_name, _, sub = key.partition(".")
                mode = parse_mode(mode_name, allow_none=False)
                if sub not in ("save_interval", "save_steps", "start_step", "end_step"):
                    raise ValueError(f"collection {self.name!r}: unknown parameter {key!r}")
                self.mode_overrides.setdefault(mode, {})[sub] = value  # type: ignore[index]
            elif key not in known:
                raise ValueError(
                    f"collection {self.name!r}: unknown parameter {key!r}; known: {sorted(known)}"
                )
            elif getattr(self, key if key != "abs_reductions" else "reductions") is None:
                if key == "abs_reductions":
                    value = (
                        [f"abs_{r}" for r in re.split(r"[,\s]+", value) if r]
                        if isinstance(value, str)
                        else [f"abs_{r}" for r in value]
                    )
                    key = "reductions"
                setattr(self, key, value)
        self.include_regex = _regex_list(self.include_regex)
        if isinstance(self.tensor_names, str):
            self.tensor_names = [t for t in re.split(r"[,\s]+", self.tensor_names) if t]
        self.tensor_names = list(self.tensor_names or [])
        self.reduction_list = parse_reductions(self.reductions)
        if self.save_raw_tensor is None:
            self.full = not self.reduction_list
        else:
            self.full = _truthy(self.save_raw_tensor)

    def resolve_save_config(self, default_interval: int) -> SaveConfig:
        """The schedule: explicit save_config, else keywords/parameters, else the default."""
        if self.save_config is not None and not self.mode_overrides:
            return self.save_config
        if self.save_config is not None:
            config = self.save_config
        else:
            interval = self.save_interval
            if interval is None and self.save_steps is None:
                interval = default_interval
            config = SaveConfig(
                save_interval=interval,
                save_steps=self.save_steps,
                start_step=self.start_step or 0,
                end_step=self.end_step,
            )
            if self.save_steps is not None and self.save_interval is None:
                for mode in _SAVED_MODES:
                    config.modes[mode] = SaveConfigMode(
                        None, _as_steps(self.save_steps, "save_steps"), self.start_step or 0,
                        self.end_step,
                    )  # fmt: skip
        for mode, over in self.mode_overrides.items():
            base = config.modes[mode]
            merged = {**base.to_json(), **over}
            if "save_steps" in over and "save_interval" not in over:
                merged["save_interval"] = None
            config.modes[mode] = SaveConfigMode(**merged)
        return config


# -- the collections a PyTorch run gets, as SageMaker Debugger names them ----------------------

# Default reductions: what the default rule profile reads, chosen for cost (each costs one
# pass over the data; see capture/reductions.py). NaN/inf show in l2 (it propagates them):
# ExplodingTensor; gradient abs_mean: VanishingGradient; weight l2: TransferLearning, the
# gradient-norm plots; relu_output positive_fraction: DeadRelu. More on request
# (CollectionConfig(..., reductions=[...])): at save_interval 1 on a CPU, weights' mean/std and
# gradients' mean/std cost about 5 % of a ResNet-18 step. Rules outside the default profile
# say which collection to add: AllZero on ReLU outputs needs
# CollectionConfig("relu_output", reductions=["positive_fraction", "zero_fraction"]),
# PoorWeightInitialization's variance check CollectionConfig("relu_input").
WEIGHT_REDUCTIONS = ("l2",)
GRADIENT_REDUCTIONS = ("l2", "abs_mean")
RELU_OUTPUT_REDUCTIONS = ("positive_fraction",)
# relu_input is defined (so that CollectionConfig("relu_input") switches it on with these
# reductions) but saves nothing by default: no rule of the default profile reads it.
RELU_INPUT_REDUCTIONS = ("variance",)
# The model input: each sample's channel means (CheckInputImages), 64 x 3 numbers a step where
# the full batch is 64 x 3 x 224 x 224 (38 MB in float32 at the seed's scale). Full images
# (the misclassified-images gallery) on request: CollectionConfig("inputs",
# save_raw_tensor=True).
INPUT_REDUCTIONS = ("sample_channel_mean",)

DEFAULT_COLLECTION_NAMES = (
    "losses", "loss_inputs", "inputs", "outputs", "relu_output", "relu_input", "weights",
    "biases", "gradients",
)  # fmt: skip


def default_collections(
    root_name: str = "Module",
    loss_name: str | None = None,
    *,
    save_interval: int | None = None,
    record_outputs: bool = False,
) -> list[CollectionConfig]:
    """The built-in collections for a model whose class is ``root_name`` and loss module class
    ``loss_name`` (smdebug's regexes for losses, weights, biases, gradients and relu_output).

    ``outputs`` (``<root>_output_<i>``) is recorded in full only when ``record_outputs`` (the
    model computes its own loss, so the logits are not a loss input); otherwise it is defined
    but saves nothing. ``relu_input`` is defined but saves nothing (no rule of the default
    profile reads it); ``CollectionConfig("relu_input")`` switches it on.
    """
    root = re.escape(root_name)
    # an argument by position, or by keyword where its parameter has none (``\w+``)
    loss_inputs = [rf"^{re.escape(loss_name)}_input_\w+$"] if loss_name else []
    return [
        CollectionConfig("losses", include_regex=[r"[Ll]oss_(?!input).*output"],
                         save_interval=save_interval),
        CollectionConfig("loss_inputs", include_regex=loss_inputs or None,
                         save_interval=save_interval),
        CollectionConfig("inputs", include_regex=[rf"^{root}_input_\w+$"],
                         reductions=list(INPUT_REDUCTIONS), save_interval=save_interval),
        CollectionConfig("outputs", include_regex=[rf"^{root}_output_\d+$"],
                         save_interval=save_interval if record_outputs else 0),
        CollectionConfig("relu_output", include_regex=[r".*relu_output"],
                         reductions=list(RELU_OUTPUT_REDUCTIONS), save_interval=save_interval),
        CollectionConfig("relu_input", include_regex=[r".*relu_input"],
                         reductions=list(RELU_INPUT_REDUCTIONS), save_interval=0),
        CollectionConfig("weights", include_regex=[r"^(?!gradient).*weight"],
                         reductions=list(WEIGHT_REDUCTIONS), save_interval=save_interval),
        CollectionConfig("biases", include_regex=[r"^(?!gradient).*bias"],
                         reductions=list(WEIGHT_REDUCTIONS), save_interval=save_interval),
        CollectionConfig("gradients", include_regex=[r"^gradient/"],
                         reductions=list(GRADIENT_REDUCTIONS), save_interval=save_interval),
    ]  # fmt: skip


def merge_collections(
    defaults: list[CollectionConfig], given: Iterable[CollectionConfig | str] | None
) -> list[CollectionConfig]:
    """Defaults plus the user's: a user config with a built-in's name replaces what it sets
    (regexes and names, reductions, full tensor: what it does not give is kept); a bare name
    keeps the built-in."""
    by_name = {c.name: c for c in defaults}
    order = [c.name for c in defaults]
    for item in given or []:
        if isinstance(item, str):
            if item not in by_name:
                raise ValueError(
                    f"unknown collection {item!r}: built-in ones are "
                    f"{list(DEFAULT_COLLECTION_NAMES)}; pass a CollectionConfig to define a new one"
                )
            continue
        if not isinstance(item, CollectionConfig):
            raise TypeError(
                f"collections: expected CollectionConfig or str, got {type(item).__name__}"
            )
        base = by_name.get(item.name)
        if base is not None:
            if not item.include_regex and not item.tensor_names:
                item.include_regex = list(base.include_regex)  # type: ignore[arg-type]
                item.tensor_names = list(base.tensor_names or [])
            # what it does not set is the built-in's: save_raw_tensor alone adds the full
            # tensor to the built-in's reductions; reductions alone replace them
            if item.reductions is None:
                item.reduction_list = base.reduction_list
                if item.save_raw_tensor is None:
                    item.full = base.full
        else:
            order.append(item.name)
        by_name[item.name] = item
    return [by_name[n] for n in order]


__all__ = [
    "DEFAULT_COLLECTION_NAMES",
    "CollectionConfig",
    "SaveConfig",
    "SaveConfigMode",
    "default_collections",
    "glob_regex",
    "merge_collections",
    "parse_reductions",
]
