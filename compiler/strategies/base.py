"""What a search strategy is to the tuning loop.

The loop asks a strategy for batches of candidates (`propose`), builds and measures them, and
tells the strategy every result (`learn`, then `end_batch`). A strategy serves one kind of space
(`space_type`); the loop scores nothing itself, a strategy ranks with the `Scorer` it is given.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, ClassVar

import numpy as np
import tvm
from tvm.target import Target

from ..database import Record
from ..scoring import Scorer
from ...schedules import Op


@dataclass
class Candidate:
    """One schedule to build and measure. `trace` is what the database's trace column holds;
    `handle` is the strategy's own form of it (a MeasureCandidate, a knob config)."""
    mod_hash: str
    trace: list | dict
    handle: object
    make: Callable[[], tvm.IRModule] = field(repr=False)

    @cached_property
    def mod(self) -> tvm.IRModule:
        return self.make()


@dataclass
class SearchSetup:
    op: Op
    target: Target
    space: object                       # the space this strategy's space_type names
    scorer: Scorer                      # positive, unit-free scores of feature rows
    value: Callable[[Record], float]    # what a record costs (lower is better; inf: unusable)
    seed: int = 0
    batch: int = 16
    population: int = 512
    threads: int = 1
    max_trials: int = 64
    seeds: bool = True                  # start from the space's seeds (knob spaces that have them)


class Strategy(ABC):
    name: ClassVar[str]
    space_type: ClassVar[type]          # the kind of space it searches

    def __init__(self, setup: SearchSetup) -> None:
        self.setup = setup

    @abstractmethod
    def candidate(self, record: Record) -> Candidate | None:
        """A stored record as a candidate of this space; None if it is of another space."""

    @abstractmethod
    def features(self, candidates: list[Candidate]) -> np.ndarray:
        """One row per candidate for the cost model."""

    @abstractmethod
    def propose(self) -> list[Candidate]:
        """The next batch (empty when the space is exhausted). May run on a background thread
        while the previous batch is measured; `learn` and `end_batch` never run meanwhile."""

    def learn(self, candidate: Candidate, record: Record) -> None:
        """One result: measured now or found in the database."""

    def end_batch(self, proposed: list[Candidate], known: dict[str, Record]) -> None:
        """The proposed batch has been measured or answered from the database (`known` by
        mod_hash)."""

    def report(self) -> str | None:
        """A line for the summary (e.g. rejected settings), if the strategy has one."""
        return None

    def close(self) -> None:
        pass
