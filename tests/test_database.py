"""The tuning database: schema versions and migration, refusals that never overwrite, sharing."""
import json
import multiprocessing as mp
import shutil
import sqlite3

import pytest

from energy_tuner.compiler.database import (SCHEMA_VERSION, DatabaseError, Record,
                                            TuningDatabase)
from tests.conftest import DATA

SCHEMA0 = DATA / "tuning_schema0.sqlite"   # written by release 0.1.0 (tests/data/README.md)


def record(i: int, key: str = "k") -> Record:
    return Record(id=None, workload_key=key, workload={"op": "matmul"}, target='{"kind": "llvm"}',
                  device="cpu", objective="latency", mod_hash=f"{i:016x}", trace=[i],
                  status="ok", latency_s=1e-3 + i * 1e-6, meta={"i": i})


def test_a_release_0_1_database_opens_and_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    shutil.copy(SCHEMA0, path)
    db = TuningDatabase(path)
    assert db.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    old = db.records("0123456789abcdef")
    assert [r.status for r in old] == ["ok", "build_error", "ok"]
    assert json.loads(old[0].target)["keys"] == ["cpu"]          # repr of a Map -> JSON
    assert old[0].latency_samples == [1.5e-5, 1.5e-5] and old[0].meta == {"l2": "resident"}
    key, blobs = db.load_model("matmul/float32/Intel(R) Xeon(R) CPU", "other")
    assert key == "0123456789abcdef" and blobs == {"latency": b"\x00booster"}
    new_id = db.add(record(9))
    db.close()
    again = TuningDatabase(path)                                  # already current: unchanged
    assert len(again.records("0123456789abcdef")) == 3 and again.records("k")[0].id == new_id
    again.close()


def test_wal_and_busy_timeout(tmp_path):
    db = TuningDatabase(tmp_path / "t.sqlite")
    assert db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    db.close()


def test_an_added_column_does_not_break_reading(tmp_path):
    db = TuningDatabase(tmp_path / "t.sqlite")
    db.add(record(1))
    db.conn.execute("ALTER TABLE candidates ADD COLUMN added_later TEXT")
    db.add(record(2))
    assert [r.meta for r in db.records("k")] == [{"i": 1}, {"i": 2}]
    db.close()


def test_a_file_that_is_not_a_database_is_refused_and_kept(tmp_path):
    path = tmp_path / "notes.sqlite"
    content = b"my notes, not a database\n" * 200
    path.write_bytes(content)
    with pytest.raises(DatabaseError, match="is not an SQLite database.*left as it is"):
        TuningDatabase(path)
    assert path.read_bytes() == content


def test_a_newer_schema_is_refused_and_kept(tmp_path):
    path = tmp_path / "new.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE future (x)")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    content = path.read_bytes()
    with pytest.raises(DatabaseError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        TuningDatabase(path)
    assert path.read_bytes() == content


def _write_many(path: str, writer: int, count: int, start) -> None:
    db = TuningDatabase(path)
    start.wait()
    for i in range(count):
        db.add(record(writer * count + i, key=f"writer{writer}"))
    db.close()


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    TuningDatabase(path).close()
    ctx = mp.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_write_many, args=(path, w, 300, start)) for w in (0, 1)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    db = TuningDatabase(path)
    for w in (0, 1):
        mine = db.records(f"writer{w}")
        assert [r.meta["i"] for r in mine] == list(range(w * 300, w * 300 + 300))
    assert db.conn.execute("SELECT COUNT(DISTINCT id) FROM candidates").fetchone()[0] == 600
    db.close()
