"""Knob spaces: kernel families (templates) whose schedule is a choice of values for named knobs.

A MetaSchedule trace space (schedules/space.py) describes a schedule as a trace of sampled
decisions; a knob space describes it as a dict of knob values that a template turns into a module
(e.g. the Hopper GEMM family written in TIRx). Each family subclasses `KnobSpace` and registers
itself with `@register`; `knob_spaces(op, target)` returns the families that apply, so the tuning
loop never asks `if op == ...`. A strategy (compiler/strategies) samples, mutates and crosses
configs through the methods below; the builder compiles `module(config)` with `compile_options`.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import tvm
from tvm.target import Target

from .op import Op

Config = dict[str, object]  # knob name -> chosen value (JSON-serialisable)


@dataclass(frozen=True)
class Knob:
    name: str
    values: tuple
    default: object = None   # what a config recorded before the knob existed ran with


class KnobSpace(ABC):
    """One kernel family for one op on one target."""

    name: ClassVar[str]                          # registry name, stored with every record
    compile_options: ClassVar[dict] = {}         # extra tvm.compile arguments, e.g. tir_pipeline
    auto: ClassVar[bool] = True                  # may `--space auto` pick it (False: not yet run
                                                 # on hardware; it must then be named)
    model_quality: ClassVar[str | None] = None   # where the cost model's quality on this family
                                                 # was measured (compiler/policy.py trusts it)

    def __init__(self, op: Op, target: Target) -> None:
        self.op, self.target = op, target

    @classmethod
    @abstractmethod
    def applies(cls, op: Op, target: Target) -> bool:
        """Whether this family can compute op on target at all."""

    @classmethod
    def why_not(cls, op: Op, target: Target) -> str | None:
        """Why the family does not apply (one line for the user), None if it does; families
        that can say more than "it does not apply" override this."""
        return None if cls.applies(op, target) else "it does not apply"

    @property
    @abstractmethod
    def knobs(self) -> tuple[Knob, ...]:
        """The knobs and their candidate values for this op and target."""

    @abstractmethod
    def reject(self, config: Config) -> str | None:
        """Why the hardware cannot run config (one line), or None if it can."""

    @abstractmethod
    def module(self, config: Config) -> tvm.IRModule:
        """The module to compile; its `main` takes the op's arguments (inputs, then output)."""

    @abstractmethod
    def features(self, config: Config) -> dict[str, float]:
        """Numbers a cost model can learn from (tile sizes, shared memory, waves, bytes/FLOP...)."""

    def preferred(self) -> bool:
        """Whether `--space auto` may pick this family for its op (where it was measured to run
        well); the class's `auto` unless a family knows better per op."""
        return self.auto

    def seeds(self) -> list[Config]:
        """Settings measured to run well on this family's hardware (the committed GPU tables),
        which a strategy tries before it samples; those `reject` refuses for this op are skipped.
        None by default."""
        return []

    def runnable_seeds(self) -> list[Config]:
        """The seeds, without duplicates, that `reject` accepts for this op, in order."""
        unique = {self.key(c): c for c in self.seeds()}
        return [c for c in unique.values() if self.reject(c) is None]

    # -- what a strategy needs; written once here over the knobs --------------------------------
    def sample(self, rng: np.random.Generator) -> Config:
        return {k.name: k.values[rng.integers(len(k.values))] for k in self.knobs}

    def mutate(self, config: Config, rng: np.random.Generator) -> Config:
        """config with one knob (that has another value) set to another value."""
        movable = [k for k in self.knobs if len(k.values) > 1]
        knob = movable[rng.integers(len(movable))]
        others = [v for v in knob.values if v != config[knob.name]]
        return {**config, knob.name: others[rng.integers(len(others))]}

    def crossover(self, a: Config, b: Config, rng: np.random.Generator) -> Config:
        return {k.name: (a if rng.random() < 0.5 else b)[k.name] for k in self.knobs}

    def complete(self, config: Config) -> Config:
        """config with the knobs added to the space after it was recorded at their defaults."""
        return {**{k.name: k.default for k in self.knobs if k.default is not None}, **config}

    @staticmethod
    def key(config: Config) -> str:
        """The canonical text of a config (its identity in the database)."""
        return json.dumps(config, sort_keys=True)


SPACES: dict[str, type[KnobSpace]] = {}


def register(cls: type[KnobSpace]) -> type[KnobSpace]:
    SPACES[cls.name] = cls
    return cls


def knob_spaces(op: Op, target: Target) -> list[KnobSpace]:
    """The registered families that apply to op on target."""
    return [cls(op, target) for cls in SPACES.values() if cls.applies(op, target)]
