"""Shared fixtures: one real tiny tune on the llvm target, reused by several tests."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
TINY = ["--op", "matmul", "--shape", "64,64,64", "--target", "llvm", "--seed", "0"]


@pytest.fixture(scope="session")
def tiny_tune(tmp_path_factory):
    """Run `tune` for 8 trials of a 64^3 float32 matmul on llvm; return (db path, export dir, rc)."""
    from energy_tuner.compiler.cli import main

    work = tmp_path_factory.mktemp("tiny")
    db, export = work / "tune.sqlite", work / "export"
    rc = main([*TINY, "--trials", "8", "--db", str(db), "--export", str(export)])
    return db, export, rc


@pytest.fixture(scope="session")
def gpu_records() -> list[dict]:
    """The 128 candidates measured on an H200 (see tests/data/README.md)."""
    with gzip.open(DATA / "h200_matmul4096_fp16_records.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def model_tune(tmp_path_factory):
    """`tune-model` on tests/data/tiny_model.py (two linear tasks) for 6 trials on llvm, exported
    as a library; returns (db path, library dir, JSON report path, rc)."""
    from energy_tuner.compiler.model_cli import main

    work = tmp_path_factory.mktemp("model")
    db, lib, report = work / "tune.sqlite", work / "lib", work / "report.json"
    rc = main(["--module", f"{DATA / 'tiny_model.py'}:build", "--target", "llvm",
               "--trials", "6", "--first-trials", "2", "--round-trials", "2", "--db", str(db),
               "--export", str(lib), "--json", str(report)])
    return db, lib, report, rc


# After the summary, the full suite's process (TVM, torch and xgboost loaded together) died at
# interpreter shutdown with SIGBUS in CI on 2026-12-01 (every test had reported). Leave without that
# shutdown, keeping pytest's own exit status. Cause not yet diagnosed.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _EXIT_STATUS:
        import os
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])
