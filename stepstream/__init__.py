"""stepstream: multi-step jobs whose per-step progress and logs are exact and live."""

from .gctuning import tune as tune_gc
from .model import (
    Conflict,
    InvalidParams,
    InvalidRequest,
    InvalidTransition,
    MissingDependency,
    NotFound,
    StepstreamError,
)
from .orchestrator import JobContext, Orchestrator, Step

__all__ = [
    "Conflict",
    "InvalidParams",
    "InvalidRequest",
    "InvalidTransition",
    "JobContext",
    "MissingDependency",
    "NotFound",
    "Orchestrator",
    "Step",
    "StepstreamError",
    "tune_gc",
]
__version__ = "0.1.0"
