"""Training modes, numbered as SageMaker Debugger numbers them (TRAIN=1 ... GLOBAL=4).

`modes.TRAIN` and the strings ``"TRAIN"`` / ``"train"`` are accepted wherever a mode is taken.
"""

from __future__ import annotations

from enum import IntEnum


class ModeKeys(IntEnum):
    """A phase of a training job; GLOBAL means "global steps, whatever the mode"."""

    TRAIN = 1
    EVAL = 2
    PREDICT = 3
    GLOBAL = 4

    def __str__(self) -> str:  # "TRAIN", as smdebug prints it
        return self.name


TRAIN = ModeKeys.TRAIN
EVAL = ModeKeys.EVAL
PREDICT = ModeKeys.PREDICT
GLOBAL = ModeKeys.GLOBAL


def parse_mode(mode: ModeKeys | str | int | None, *, allow_none: bool = True) -> ModeKeys | None:
    """Turn ``modes.TRAIN``, ``"TRAIN"``, ``"modes.TRAIN"``, ``"train"`` or ``1`` into a ModeKeys.

    Raises ValueError naming the accepted values, so a typo in a rule parameter is caught early.
    """
    if mode is None:
        if allow_none:
            return None
        raise ValueError("a mode is required: one of TRAIN, EVAL, PREDICT, GLOBAL")
    if isinstance(mode, ModeKeys):
        return mode
    # smdebug's own ModeKeys (another Enum class) has the same names
    name = getattr(mode, "name", None)
    if isinstance(name, str) and name.upper() in ModeKeys.__members__:
        return ModeKeys[name.upper()]
    if isinstance(mode, str):
        text = mode.strip()
        if text.lower() in ("", "none") and allow_none:
            return None
        text = text.split(".")[-1].upper()
        if text in ModeKeys.__members__:
            return ModeKeys[text]
        if text.isdigit():
            mode = int(text)
        else:
            raise ValueError(f"unknown mode {mode!r}: expected one of TRAIN, EVAL, PREDICT, GLOBAL")
    if isinstance(mode, int) and not isinstance(mode, bool):
        try:
            return ModeKeys(mode)
        except ValueError:
            pass
    raise ValueError(f"unknown mode {mode!r}: expected one of TRAIN, EVAL, PREDICT, GLOBAL")


__all__ = ["EVAL", "GLOBAL", "PREDICT", "TRAIN", "ModeKeys", "parse_mode"]
