"""The research notebooks (experiments/notebooks): committed without outputs, each executes top to
bottom on the committed result data (nbclient, non-interactive matplotlib backend)."""
from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "experiments" / "notebooks").glob("*.ipynb"))
FIXTURE_DB = ROOT / "tests" / "data" / "h200_conv2d_objectives.sqlite.gz"


def execute(path: Path, **env: str) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel with defaults for every ENERGY_TUNER_* parameter except
    `env`; raises CellExecutionError if a cell raises."""
    nb = nbformat.read(path, as_version=4)
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith("ENERGY_TUNER_")]:
            del os.environ[key]
        os.environ.update(env, MPLBACKEND="Agg",
                          PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                   saved.get("PYTHONPATH")])))
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def test_one_notebook_per_study():
    assert [p.stem.split("_", 1)[1] for p in NOTEBOOKS] == [
        "objective_table", "latency_energy_pareto", "measurement_fidelity",
        "cost_model_and_policy", "kernels_vs_cublas"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_parameterized(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "os.environ" in params[0].source
    first = nb.cells[0].source
    assert "H200" in first and "2026-" in first  # states the GPU and date of its data


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes_on_committed_data(path):
    nb = execute(path)  # raises if a cell raises
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_pareto_notebook_reads_a_database_given_as_parameter():
    nb = execute(next(p for p in NOTEBOOKS if "pareto" in p.stem), ENERGY_TUNER_DB=str(FIXTURE_DB))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"{FIXTURE_DB.name}: 48 records" in text
