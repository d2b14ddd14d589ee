"""The tuning database: one SQLite row per measured candidate, written as each result arrives.

TVM's TuningRecord keeps only a trace and run times; this store keeps everything needed to audit a
figure later (trace JSON, target, workload, latency samples, energy, power, correctness, errors and
measurement metadata) and to resume an interrupted tune.

Durability and sharing: every record is committed on its own as it arrives (a tune killed with
SIGKILL loses only the candidate it was measuring); WAL journaling and a busy timeout let several
tunes write one database at once. The schema is versioned with `PRAGMA user_version`; an older
database is migrated in place (MIGRATIONS), while a newer one, or a file that is not an SQLite
database, is refused with one line and never written.
"""
from __future__ import annotations

import ast
import json
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

# Version 0: the schema of release 0.1.0 (no user_version; target held Python's repr of a Map).
SCHEMA_V0 = """
CREATE TABLE IF NOT EXISTS candidates (
    id              INTEGER PRIMARY KEY,
    workload_key    TEXT NOT NULL,   -- compiler/identity.py: op, target, device, measurement
    workload        TEXT NOT NULL,   -- JSON: op, shape, dtypes
    target          TEXT NOT NULL,   -- JSON export of the TVM target (since version 1)
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
BUSY_TIMEOUT_S = 60.0


def _target_to_json(conn: sqlite3.Connection) -> None:
    """Version 0 -> 1: the target column from Python's repr of a TVM Map to JSON. Old rows keep
    their workload keys, which hash no measurement configuration: they are kept for auditing
    but no new tune resumes from them."""
    for row_id, text in conn.execute("SELECT id, target FROM candidates").fetchall():
        try:
            json.loads(text)
            continue
        except ValueError:
            pass
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        conn.execute("UPDATE candidates SET target = ? WHERE id = ?", (json.dumps(value), row_id))


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_target_to_json]  # [v] takes v to v+1
SCHEMA_VERSION = len(MIGRATIONS)


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
_COLUMNS = tuple(f.name for f in fields(Record))
_MODEL_COLUMNS = ("workload_key", "family", "quantity", "booster", "samples", "created_at")


class TuningDatabase:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            if self.path.is_dir():
                raise DatabaseError(f"cannot write tuning database {self.path}: it is a directory")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._open()
        except sqlite3.Error as err:
            if type(err) is sqlite3.DatabaseError:  # "file is not a database" and the like
                raise DatabaseError(f"{self.path} is not an SQLite database ({err}); it was left "
                                    "as it is: use another --db") from err
            raise DatabaseError(f"cannot write tuning database {self.path}: {err}") from err
        except OSError as err:
            raise DatabaseError(f"cannot write tuning database {self.path}: {err}") from err

    def _version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _open(self) -> None:
        """Check the version before writing anything, then migrate (one process at a time)."""
        if self._version() > SCHEMA_VERSION:
            raise DatabaseError(f"{self.path} has schema version {self._version()}, newer than "
                                f"this release's {SCHEMA_VERSION}; it was left as it is: use a "
                                f"newer energy-tuner or another --db")
        self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("BEGIN IMMEDIATE")  # also proves we can write, not only read
        try:
            version = self._version()         # another tune may have migrated meanwhile
            if version < SCHEMA_VERSION:
                for statement in SCHEMA_V0.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                for migrate in MIGRATIONS[version:]:
                    migrate(self.conn)
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def add(self, record: Record) -> int:
        row = {k: getattr(record, k) for k in _COLUMNS if k != "id"}
        row["created_at"] = row["created_at"] or time.time()
        for key in _JSON_FIELDS:
            row[key] = json.dumps(row[key]) if row[key] is not None else None
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        cur = self.conn.execute(f"INSERT INTO candidates ({cols}) VALUES ({marks})", row)
        return cur.lastrowid

    def records(self, workload_key: str) -> list[Record]:
        cur = self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM candidates "
                                "WHERE workload_key = ? ORDER BY id", (workload_key,))
        out = []
        for values in cur.fetchall():
            row = dict(zip(_COLUMNS, values))
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
        self.conn.execute("BEGIN IMMEDIATE")
        for quantity, blob in blobs.items():
            self.conn.execute(f"INSERT OR REPLACE INTO models ({', '.join(_MODEL_COLUMNS)}) "
                              "VALUES (?, ?, ?, ?, ?, ?)",
                              (workload_key, family, quantity, blob, samples, time.time()))
        self.conn.execute("COMMIT")
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
