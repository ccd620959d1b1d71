"""Hypothesis profiles for the strategy and property tests (registered here, not loaded
globally): the modules build their settings from ``PROFILE`` so that other test folders keep
their own. ``MODELRULES_HYPOTHESIS_PROFILE=modelrules-thorough`` runs ten times more examples."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

# no "explain" phase: it traces every shrink step, which costs seconds per failure
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

settings.register_profile(
    "modelrules-fast",
    max_examples=40,
    deadline=None,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "modelrules-thorough",
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PROFILE = os.environ.get("MODELRULES_HYPOTHESIS_PROFILE", "modelrules-fast")
