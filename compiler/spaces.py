"""The spaces a tune can search, chosen by name through the registries, never by op.

- knob spaces: the kernel families of schedules/knobs.py that apply to the op and target
  (`knob_spaces`), named by their `name`;
- the MetaSchedule trace space (`design_space` of schedules/space.py), named `trace`.
`auto` takes the first registered knob space that applies and prefers itself for the op
(`KnobSpace.preferred`: its `auto`, or a per-op rule), else the trace space.
"""
from __future__ import annotations

import tvm
from tvm.target import Target

from ..schedules import Op, design_space
from ..schedules.knobs import SPACES, KnobSpace, knob_spaces

AUTO, TRACE = "auto", "trace"


class SpaceError(ValueError):
    """The asked-for space does not exist or does not apply (one line for the user)."""


class TraceSpace:
    """The MetaSchedule design space of op on target: candidates are schedule traces."""

    name = TRACE
    compile_options: dict = {}
    model_quality = None  # as KnobSpace's: the trace model's quality falls short (compiler/policy.py)

    def __init__(self, op: Op, target: Target) -> None:
        self.op, self.target = op, target
        self.mod = tvm.IRModule({"main": op.prim_func()})

    def generator(self):
        return design_space(self.op, self.target)

    def runnable_seeds(self) -> list:
        """None: a trace search starts from samples of the space."""
        return []

    def schedule(self, trace: list) -> tvm.s_tir.Schedule:
        """The schedule a stored trace (JSON) describes."""
        sch = tvm.s_tir.Schedule(self.mod)
        tvm.s_tir.schedule.Trace.apply_json_to_schedule(trace, sch)
        return sch


Space = KnobSpace | TraceSpace


def space_names(op: Op, target: Target) -> list[str]:
    """The spaces that apply, in the order `auto` prefers them."""
    return [s.name for s in knob_spaces(op, target)] + [TRACE]


def choose_space(op: Op, target: Target, name: str = AUTO) -> Space:
    knobs = {s.name: s for s in knob_spaces(op, target)}
    if name == AUTO:
        return next((s for s in knobs.values() if s.preferred()), None) or TraceSpace(op, target)
    if name == TRACE:
        return TraceSpace(op, target)
    if name not in knobs:
        why = f": {SPACES[name].why_not(op, target)}" if name in SPACES else " (no such space)"
        raise SpaceError(f"space {name!r} does not apply to {op.name} {op.shape_text()} "
                         f"{op.dtype} on {target.kind.name}{why}; applicable: "
                         f"{', '.join(space_names(op, target))}")
    return knobs[name]


def stored_module(space: Space, trace: list | dict) -> tvm.IRModule:
    """The module a record's trace column describes in this space."""
    if isinstance(space, TraceSpace):
        return space.schedule(trace).mod
    if not (isinstance(trace, dict) and trace.get("space") == space.name):
        raise SpaceError(f"a stored candidate of another space is not one of {space.name}")
    return space.module(trace["config"])
