"""Reading and writing runs: the native format, SageMaker Debugger's layout, the Run API."""

from .format import Fraction
from .run import Collection, Run, Series, StepState, Tensor, create_trial, open_run
from .writer import RunWriter

__all__ = [
    "Collection",
    "Fraction",
    "Run",
    "RunWriter",
    "Series",
    "StepState",
    "Tensor",
    "create_trial",
    "open_run",
]
