"""The kernel library: export, hashes, tamper and mismatch detection, and the torch loader
dispatching to real llvm kernels (correct against torch), under torch.compile, with fallback."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from energy_tuner.compiler import library
from energy_tuner.compiler.library import LibraryError, LibraryFallbackWarning, load, sha256
from energy_tuner.compiler.model_cli import load_module_factory, main
from tests.conftest import DATA


@pytest.fixture
def lib_dir(model_tune, tmp_path):
    """A private copy of the exported library (tests may tamper with it)."""
    _, lib, _, rc = model_tune
    assert rc == 0
    return shutil.copytree(lib, tmp_path / "lib")


def test_manifest_lists_every_kernel_with_hashes(model_tune):
    db, lib, report, _ = model_tune
    manifest = json.loads((lib / "manifest.json").read_text())
    run = json.loads(report.read_text())
    assert {k["db_record_id"] for k in manifest["kernels"]} == \
        {t["ours"]["db_record"] for t in run["tasks"]}
    import tvm

    assert manifest["tvm_version"] == tvm.__version__
    for k in manifest["kernels"]:
        assert k["op"] == "linear" and k["dtype"] == k["output_dtype"] == "float32"
        assert k["target"]["kind"] == "llvm" and k["objective"] == "latency"
        assert k["measured"]["latency_ms"] > 0 and k["measured"]["energy_mj"] is None
        for name in (k["library"], k["manifest"]):
            assert manifest["sha256"][name] == sha256(lib / name)


def served_tiny_model(lib_dir):
    module, inputs = load_module_factory(f"{DATA / 'tiny_model.py'}:build")
    with torch.no_grad():
        expected = module(*inputs)
    lib = load(lib_dir)
    assert lib.serve(module) == 2
    return lib, module, inputs, expected


def test_served_model_runs_our_kernels_and_matches_torch(lib_dir):
    lib, module, inputs, expected = served_tiny_model(lib_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LibraryFallbackWarning)   # no fallback on these shapes
        with torch.no_grad():
            got = module(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    calls = {k.inputs: k.calls for k in lib.kernels}
    assert calls == {((4, 16), (32, 16)): 2, ((4, 32), (16, 32)): 1}   # as the graph counted


def test_eager_forward_calls_the_held_kernel_without_the_dispatcher(lib_dir, monkeypatch):
    """In eager mode a served linear calls its kernel directly (the custom op's dispatch costs
    host time per call); the result and the call counts are the same."""
    lib, module, inputs, expected = served_tiny_model(lib_dir)

    def no_dispatch(*args):
        raise AssertionError("the custom op was dispatched")
    monkeypatch.setattr(library, "_dispatch", no_dispatch)
    with torch.no_grad():
        got = module(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sum(k.calls for k in lib.kernels) == 3


def test_custom_op_called_directly(lib_dir):
    """Any float32 linear of x (4, 16) and w (32, 16) on the CPU is served, not only the
    model's, also with a non-contiguous w; a matmul of the same data is not held (torch's)."""
    lib = load(lib_dir)
    x, w = torch.randn(4, 16), torch.randn(32, 16)
    kernel = next(k for k in lib.kernels if k.inputs == ((4, 16), (32, 16)))
    before = kernel.calls
    out = torch.ops.energy_tuner.linear(x, w.t().contiguous().t(), torch.float32)
    torch.testing.assert_close(out, x @ w.t(), rtol=1e-5, atol=1e-5)
    assert kernel.calls == before + 1
    with pytest.warns(LibraryFallbackWarning, match="no matmul kernel"):
        out = torch.ops.energy_tuner.matmul(x, w.t(), torch.float32)
    torch.testing.assert_close(out, x @ w.t(), rtol=1e-5, atol=1e-5)
    assert kernel.calls == before + 1


def test_torch_compile_traces_the_custom_ops(lib_dir):
    lib, module, inputs, expected = served_tiny_model(lib_dir)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)  # no graph break
    before = sum(k.calls for k in lib.kernels)
    with torch.no_grad():
        got = compiled(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert sum(k.calls for k in lib.kernels) == before + 3


def test_shapes_it_does_not_hold_fall_back_to_torch_and_say_so_once(lib_dir):
    lib, module, _, _ = served_tiny_model(lib_dir)
    x = torch.randn(3, 16)                     # 3 rows: no kernel was tuned for that
    with torch.no_grad():
        expected = torch.nn.functional.linear(
            torch.relu(torch.nn.functional.linear(x, module.up.weight)), module.down.weight,
            module.down.bias) @ module.up.weight.t()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = module(x)
            module(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    fallbacks = [w for w in caught if issubclass(w.category, LibraryFallbackWarning)]
    assert len(fallbacks) == 2                 # two workloads, each said once over two calls
    assert "no linear kernel for inputs [3, 16] x [32, 16]" in str(fallbacks[0].message)


def loaded_keys():
    return {key: id(kernel) for key, kernel in library._KERNELS.items()}


@pytest.mark.parametrize("damage,fragment", [
    ("so", "does not match its sha256"),
    ("json", "does not match its sha256"),
    ("missing", "is missing"),
    ("tvm", "built with TVM 0.1.0"),
    ("gpu", "but torch sees no CUDA GPU" if not torch.cuda.is_available() else "this GPU is"),
    ("manifest", "cannot read manifest.json"),
    ("entry", "manifest.json disagrees with"),
])
def test_bad_library_is_one_error_and_loads_nothing(lib_dir, damage, fragment):
    manifest_path = lib_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    first = manifest["kernels"][0]
    if damage == "so":
        data = bytearray((lib_dir / first["library"]).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (lib_dir / first["library"]).write_bytes(bytes(data))
    elif damage == "json":
        (lib_dir / first["manifest"]).write_text("{}")
    elif damage == "missing":
        (lib_dir / manifest["kernels"][-1]["library"]).unlink()
    elif damage == "tvm":
        manifest["tvm_version"] = "0.1.0"
    elif damage == "gpu":                      # a consistent library, built for another GPU
        entry = manifest["kernels"][-1]
        entry.update(target={"kind": "cuda", "arch": "sm_1"}, device="NVIDIA Z1")
        own = json.loads((lib_dir / entry["manifest"]).read_text())
        own.update(target=entry["target"], device=entry["device"])
        (lib_dir / entry["manifest"]).write_text(json.dumps(own))
        manifest["sha256"][entry["manifest"]] = sha256(lib_dir / entry["manifest"])
    elif damage == "entry":
        manifest["kernels"][0]["arguments"][0]["shape"] = [400, 16]
    elif damage == "manifest":
        manifest_path.unlink()
    if damage in ("tvm", "gpu", "entry"):
        manifest_path.write_text(json.dumps(manifest))
    before = loaded_keys()
    with pytest.raises(LibraryError, match=fragment) as err:
        load(lib_dir)
    assert "\n" not in str(err.value)
    assert loaded_keys() == before             # nothing was loaded or replaced


def test_cli_verifies_a_library(lib_dir, capsys):
    assert main(["--verify", str(lib_dir)]) == 0
    assert "verified, 2 kernels" in capsys.readouterr().out
    (lib_dir / json.loads((lib_dir / "manifest.json").read_text())["kernels"][0]["library"]) \
        .write_bytes(b"not a library")
    proc = subprocess.run([sys.executable, "-m", "energy_tuner.compiler.model_cli", "--verify",
                           str(lib_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("tune-model: error:") and "does not match its sha256" in line


def test_cli_exports_a_db_alone_and_fails_in_one_line(model_tune, tmp_path):
    db, _, _, _ = model_tune
    assert main(["--export", str(tmp_path / "from_db"), "--db", str(db), "--target", "llvm"]) == 0
    manifest = json.loads((tmp_path / "from_db" / "manifest.json").read_text())
    assert len(manifest["kernels"]) == 2
    assert {k["library"] for k in manifest["kernels"]} <= set(os.listdir(tmp_path / "from_db"))
    proc = subprocess.run([sys.executable, "-m", "energy_tuner.compiler.model_cli", "--export",
                           str(tmp_path / "x"), "--db", str(tmp_path / "none.sqlite")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"tune-model: error: no tuning database at {tmp_path / 'none.sqlite'}"]


def test_loader_needs_no_compiler(model_tune):
    """A fresh process loads the library and runs a kernel without importing our compiler."""
    _, lib, _, _ = model_tune
    script = f"""
import sys, torch
from energy_tuner.compiler.library import load
lib = load({str(lib)!r})
x, w = torch.randn(4, 16), torch.randn(32, 16)
out = torch.ops.energy_tuner.linear(x, w, torch.float32)
assert torch.allclose(out, x @ w.t(), atol=1e-5), "wrong"
ours = [m for m in sys.modules if m.startswith("energy_tuner.")]
print(sorted(ours), lib.kernels[0].calls + lib.kernels[1].calls)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("]")[0] + "]" == \
        "['energy_tuner.compiler', 'energy_tuner.compiler.graph', 'energy_tuner.compiler.library']"
    assert proc.stdout.strip().endswith("1")
