"""`tune-report DB --out DIR [--workload KEY]`: PNG figures of one tuning database.

Per workload: the tuning curve (best objective vs trial, one line per tune) and the
latency-energy scatter with its Pareto front (compiler/plots.py). DB may be gzipped
(`.sqlite.gz`, as committed under experiments/results); it is read from a temporary copy and
never written. Bad input (missing file, not a database, no records) gives one line on stderr and
exit code 2.
"""
from __future__ import annotations

import argparse
import gzip
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from .database import DatabaseError, Record, TuningDatabase

SQLITE_HEADER = b"SQLite format 3\x00"


class ReportInputError(ValueError):
    """The database to report on cannot be read or holds nothing to plot."""


def read_records(path: str | Path) -> list[Record]:
    """Every record of a tuning database, gzipped (.gz) or not, read from a temporary copy (so
    read-only and compressed files can be read and the original is never migrated)."""
    path = Path(path)
    if not path.is_file():
        raise ReportInputError(f"{path}: no such file")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "db.sqlite"
        try:
            with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as src, \
                    open(copy, "wb") as dst:
                shutil.copyfileobj(src, dst)
            with open(copy, "rb") as f:
                if f.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                    raise ReportInputError(f"{path}: not an SQLite database")
            db = TuningDatabase(copy)
            try:
                return [r for key in sorted(db.workload_keys()) for r in db.records(key)]
            finally:
                db.close()
        except (OSError, EOFError, sqlite3.Error, DatabaseError) as err:
            raise ReportInputError(f"{path}: not a tuning database ({err})") from err


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tune-report", description=__doc__.split("\n\n")[0])
    ap.add_argument("db", help="tuning database (.sqlite or .sqlite.gz)")
    ap.add_argument("--out", required=True, help="folder for the PNG files")
    ap.add_argument("--workload", help="only this workload key (default: every workload)")
    args = ap.parse_args(argv)
    try:
        records = read_records(args.db)
        if not records:
            raise ReportInputError(f"{args.db}: no records")
        if args.workload:
            keys = sorted({r.workload_key for r in records})
            records = [r for r in records if r.workload_key == args.workload]
            if not records:
                raise ReportInputError(f"{args.db}: no records for workload {args.workload} "
                                       f"(it has {', '.join(keys)})")
        import matplotlib
        matplotlib.use("Agg")
        from .plots import write_report
        written = write_report(records, Path(args.out))
    except ReportInputError as err:
        print(f"tune-report: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"tune-report: cannot write {args.out}: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
