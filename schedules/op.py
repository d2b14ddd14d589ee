"""The operator interface and the registry that parses user input into an operator."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np
from tvm import tirx


class OpError(ValueError):
    """Bad operator input from the user (unknown op, malformed shape, unsupported dtype)."""


class Op(ABC):
    """One operator instance: a fixed shape and dtype, its TE definition and its numpy reference."""

    name: ClassVar[str]
    dtypes: ClassVar[tuple[str, ...]]
    shape_keys: ClassVar[tuple[str, ...]]

    def __init__(self, shape: dict[str, int], dtype: str) -> None:
        self.shape = shape
        self.dtype = dtype

    @abstractmethod
    def prim_func(self) -> tirx.PrimFunc:
        """The TE compute lowered to a schedulable PrimFunc named `main` (inputs..., output)."""

    @abstractmethod
    def inputs(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Random inputs (never all ones or zeros) in the op's input dtypes."""

    @abstractmethod
    def reference(self, inputs: list[np.ndarray]) -> np.ndarray:
        """The expected output, computed by numpy in at least float32."""

    @property
    @abstractmethod
    def output_shape(self) -> tuple[int, ...]: ...

    @property
    @abstractmethod
    def output_dtype(self) -> str: ...

    @property
    @abstractmethod
    def flops(self) -> int: ...

    @property
    @abstractmethod
    def bytes_moved(self) -> int:
        """Fewest bytes through device memory: each input read once, the output written once."""

    @property
    @abstractmethod
    def tolerance(self) -> float:
        """Largest accepted relative Frobenius error ||out - ref|| / ||ref||."""

    def describe(self) -> dict:
        """JSON-able identity of this op instance."""
        return {"op": self.name, "shape": dict(self.shape), "dtype": self.dtype,
                "output_dtype": self.output_dtype}

    def shape_text(self) -> str:
        return ",".join(str(self.shape[k]) for k in self.shape_keys)


OPS: dict[str, type[Op]] = {}


def register(cls: type[Op]) -> type[Op]:
    OPS[cls.name] = cls
    return cls


def parse_shape(text: str, keys: tuple[str, ...]) -> dict[str, int]:
    """Parse `"64,64,64"` (positional, in `keys` order) into `{key: int}`; every value positive."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(keys):
        raise OpError(f"shape {text!r} must have {len(keys)} comma-separated values "
                      f"({','.join(k.upper() for k in keys)})")
    values = {}
    for key, part in zip(keys, parts):
        if not part.isdigit() or int(part) < 1:
            raise OpError(f"shape {text!r}: {key.upper()} must be a positive integer, got {part!r}")
        values[key] = int(part)
    return values


def make_op(name: str, shape_text: str, dtype: str) -> Op:
    """Build an op from user input, raising OpError with a one-line message when it is bad."""
    if name not in OPS:
        raise OpError(f"unknown op {name!r} (known: {', '.join(sorted(OPS))})")
    cls = OPS[name]
    if dtype not in cls.dtypes:
        raise OpError(f"op {name} does not support dtype {dtype!r} (supported: {', '.join(cls.dtypes)})")
    return cls(parse_shape(shape_text, cls.shape_keys), dtype)


def op_from_description(desc: dict) -> Op:
    """Rebuild an op from `Op.describe()` output (e.g. in a worker process)."""
    cls = OPS[desc["op"]]
    return cls({k: int(desc["shape"][k]) for k in cls.shape_keys}, desc["dtype"])
