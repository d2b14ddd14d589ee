"""Search strategies, chosen by name. Each lives in its own module; adding one is a module plus
a line in STRATEGIES. A space's default strategy is the first one registered for its kind."""
from __future__ import annotations

from .base import Candidate, SearchSetup, Strategy
from .evolutionary import EvolutionaryStrategy
from .genetic import GeneticStrategy

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (
    EvolutionaryStrategy,   # TVM's EvolutionarySearch, MetaSchedule trace spaces
    GeneticStrategy,        # our genetic search, knob spaces
)}


def strategy_for(space: object, name: str | None = None) -> type[Strategy]:
    """The strategy called `name` (it must serve this kind of space), or the space's default."""
    if name is None:
        return next(s for s in STRATEGIES.values() if isinstance(space, s.space_type))
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    if not isinstance(space, STRATEGIES[name].space_type):
        raise ValueError(f"strategy {name} does not search space {space.name}")
    return STRATEGIES[name]


__all__ = ["Candidate", "SearchSetup", "Strategy", "STRATEGIES", "strategy_for"]
