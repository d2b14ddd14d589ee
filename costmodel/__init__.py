"""Features of schedule candidates and learned models of their latency and energy."""
from costmodel.features import candidate_features
from costmodel.model import KernelModel

__all__ = ["candidate_features", "KernelModel"]
