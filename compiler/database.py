"""The tuning database: one SQLite row per measured candidate, written as each result arrives.

TVM's TuningRecord keeps only a trace and run times; this store keeps everything needed to audit a
figure later (trace JSON, target, workload, latency samples, energy, power, correctness, errors and
measurement metadata) and to resume an interrupted tune.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS candidates (
    id              INTEGER PRIMARY KEY,
    workload_key    TEXT NOT NULL,
    workload        TEXT NOT NULL,   -- JSON: op, shape, dtypes
    target          TEXT NOT NULL,   -- JSON export of the TVM target
    device          TEXT NOT NULL,   -- e.g. "NVIDIA H200"
    objective       TEXT NOT NULL,   -- objective of the tune that measured it
    mod_hash        TEXT NOT NULL,   -- structural hash of the scheduled module
    trace           TEXT NOT NULL,   -- JSON of the schedule trace
    status          TEXT NOT NULL,   -- ok | wrong | build_error | run_error
    error           TEXT,
    rel_error       REAL,
    latency_s       REAL,
    latency_samples TEXT,            -- JSON list of seconds
    energy_j        REAL,            -- per call
    power_w         REAL,
    meta            TEXT,            -- JSON: meter, windows, clocks, temperature, ...
    created_at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS candidates_workload ON candidates (workload_key);
CREATE TABLE IF NOT EXISTS models (
    workload_key TEXT NOT NULL,
    family       TEXT NOT NULL,      -- op, dtype and device: which workloads can share a model
    quantity     TEXT NOT NULL,      -- latency | power
    booster      BLOB NOT NULL,      -- XGBoost model (save_raw)
    samples      INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    PRIMARY KEY (workload_key, quantity)
);
"""


class DatabaseError(RuntimeError):
    """The database cannot be opened or written."""


@dataclass
class Record:
    id: int | None
    workload_key: str
    workload: dict
    target: str
    device: str
    objective: str
    mod_hash: str
    trace: list | dict
    status: str
    error: str | None = None
    rel_error: float | None = None
    latency_s: float | None = None
    latency_samples: list[float] | None = None
    energy_j: float | None = None
    power_w: float | None = None
    meta: dict | None = None
    created_at: float = 0.0


_JSON_FIELDS = ("workload", "trace", "latency_samples", "meta")


class TuningDatabase:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path)
            self.conn.executescript(SCHEMA)
            self.conn.execute("BEGIN IMMEDIATE")  # proves we can write, not only read
            self.conn.rollback()
        except (OSError, sqlite3.Error) as err:
            raise DatabaseError(f"cannot write tuning database {self.path}: {err}") from err

    def add(self, record: Record) -> int:
        row = dict(record.__dict__)
        row.pop("id")
        row["created_at"] = row["created_at"] or time.time()
        for key in _JSON_FIELDS:
            row[key] = json.dumps(row[key]) if row[key] is not None else None
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self.conn:
            cur = self.conn.execute(f"INSERT INTO candidates ({cols}) VALUES ({marks})", row)
        return cur.lastrowid

    def records(self, workload_key: str) -> list[Record]:
        cur = self.conn.execute("SELECT * FROM candidates WHERE workload_key = ? ORDER BY id",
                                (workload_key,))
        names = [c[0] for c in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            for key in _JSON_FIELDS:
                row[key] = json.loads(row[key]) if row[key] is not None else None
            out.append(Record(**row))
        return out

    def workload_keys(self) -> list[str]:
        """Every workload with a measured candidate, in the order first measured."""
        return [row[0] for row in self.conn.execute(
            "SELECT workload_key FROM candidates GROUP BY workload_key ORDER BY MIN(id)")]

    def save_model(self, workload_key: str, family: str, blobs: dict[str, bytes],
                   samples: int) -> None:
        with self.conn:
            for quantity, blob in blobs.items():
                self.conn.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?)",
                                  (workload_key, family, quantity, blob, samples, time.time()))

    def load_model(self, family: str, exclude_key: str) -> tuple[str, dict[str, bytes]] | None:
        """The newest model of another workload of the same family: (its workload key, blobs)."""
        row = self.conn.execute(
            "SELECT workload_key FROM models WHERE family = ? AND workload_key != ? "
            "ORDER BY created_at DESC LIMIT 1", (family, exclude_key)).fetchone()
        if row is None:
            return None
        blobs = dict(self.conn.execute("SELECT quantity, booster FROM models WHERE workload_key = ?",
                                       (row[0],)).fetchall())
        return row[0], blobs

    def close(self) -> None:
        self.conn.close()
