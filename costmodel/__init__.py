"""Features of schedule candidates and learned models of their latency and energy."""
from .features import candidate_features, knob_features
from .model import KernelModel

__all__ = ["candidate_features", "knob_features", "KernelModel"]
