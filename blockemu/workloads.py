"""Database workloads run through the mounts, and checks that need no trust in blockemu.

Two databases, each with a check defined by the database itself:

* SQLite (stdlib), WAL mode, ``synchronous=FULL``: rows are written in
  batches, one transaction per batch, each row carrying the SHA-256 of its
  payload. :func:`sqlite_verify` runs ``PRAGMA integrity_check``, recomputes
  every digest and checks that only whole batches exist (a transaction is
  all or nothing). A *ledger* file outside the volume records each batch
  once its COMMIT returned, so a check can also say "nothing acknowledged
  was lost".
* PostgreSQL (Debian's packages): data and WAL on two volumes (one
  consistency group), ``pgbench``'s TPC-B-like transactions, and its
  invariant: the sum of ``pgbench_accounts.abalance`` equals the sum of
  ``pgbench_history.delta`` (every transaction does both or neither), plus
  ``pg_amcheck`` on the indexes and heap.

``python -m blockemu.workloads sqlite-load DB LEDGER`` runs the SQLite
writer until it is killed (the labs start it on a node and crash the node).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: Rows per transaction of the SQLite writer.
BATCH = 10


@dataclass(frozen=True)
class Check:
    """The outcome of a database check: ok, what was counted, and why not ok."""

    ok: bool
    rows: int
    detail: str


# -- SQLite -----------------------------------------------------------------------


def _payload(batch: int, i: int) -> bytes:
    return hashlib.sha256(f"{batch}:{i}".encode()).digest() * 16  # 512 bytes


def sqlite_write(db: Path, *, batches: int | None, ledger: Path | None = None,
                 pause: float = 0.0) -> int:  # fmt: skip
    """Write *batches* batches (None: until killed); returns how many were committed."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS t (batch INTEGER, i INTEGER, payload BLOB, "
                     "digest TEXT, PRIMARY KEY (batch, i))")  # fmt: skip
        start = conn.execute("SELECT COALESCE(MAX(batch) + 1, 0) FROM t").fetchone()[0]
        done = 0
        log = open(ledger, "a") if ledger else None  # noqa: SIM115 - closed below
        try:
            while batches is None or done < batches:
                batch = start + done
                conn.execute("BEGIN")
                for i in range(BATCH):
                    data = _payload(batch, i)
                    conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)",
                                 (batch, i, data, hashlib.sha256(data).hexdigest()))  # fmt: skip
                conn.execute("COMMIT")
                done += 1
                if log is not None:
                    log.write(f"{batch}\n")
                    log.flush()
                if pause:
                    time.sleep(pause)
        finally:
            if log is not None:
                log.close()
        return done
    finally:
        conn.close()


def ledger_batches(ledger: Path) -> int:
    """How many batches the writer saw committed (lines of the ledger)."""
    try:
        return sum(1 for line in ledger.read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def sqlite_verify(db: Path, *, at_least_batches: int = 0) -> Check:
    """Integrity, digests, whole batches only, and at least *at_least_batches* of them."""
    if not db.exists():
        return Check(False, 0, f"{db} does not exist")
    try:
        conn = sqlite3.connect(f"file:{db}?mode=rw", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        return Check(False, 0, f"cannot open {db}: {exc}")
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if integrity != "ok":
            return Check(False, 0, f"integrity_check: {integrity}")
        rows = conn.execute("SELECT COUNT(*) FROM t").fetchone()[0]
        bad = sum(1 for payload, digest in conn.execute("SELECT payload, digest FROM t")
                  if hashlib.sha256(payload).hexdigest() != digest)  # fmt: skip
        partial = conn.execute(
            "SELECT COUNT(*) FROM (SELECT batch FROM t GROUP BY batch HAVING COUNT(*) != ?)",
            (BATCH,),
        ).fetchone()[0]
    except sqlite3.Error as exc:
        return Check(False, 0, f"{db}: {exc}")
    finally:
        conn.close()
    problems = []
    if bad:
        problems.append(f"{bad} rows whose payload does not match its digest")
    if partial:
        problems.append(f"{partial} partial batches (a transaction half applied)")
    if rows // BATCH < at_least_batches:
        problems.append(f"{rows // BATCH} batches, but {at_least_batches} were acknowledged")
    detail = "; ".join(problems) or f"integrity ok, {rows} rows in {rows // BATCH} whole batches"
    return Check(not problems, rows, detail)


# -- PostgreSQL ---------------------------------------------------------------------


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), or None."""

    def version(path: str) -> int:
        part = path.split("/")[4]
        return int(part) if part.isdigit() else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=version)
    return Path(found[-1]).parent if found else None


class PostgresError(RuntimeError):
    """A PostgreSQL command failed; the message carries its output."""


class Postgres:
    """One PostgreSQL cluster in *data* (run as the ``postgres`` user when we are root)."""

    def __init__(
        self, data: Path, *, port: int, socket_dir: Path, prefix: Sequence[str] = ()
    ) -> None:
        """*prefix* runs every command through e.g. ``nsenter --net=...`` (a lab node)."""
        bindir = postgres_bindir()
        if bindir is None:
            raise PostgresError("PostgreSQL is not installed: apt-get install postgresql")
        self.bin = bindir
        self.data = Path(data)
        self.port = port
        self.socket_dir = Path(socket_dir)
        self.prefix = list(prefix)

    def _as_owner(self, *cmd: str) -> list[str]:
        owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return [*self.prefix, *owner, *cmd]

    def _run(self, *cmd: str, timeout: float = 300) -> str:
        proc = subprocess.run(self._as_owner(*cmd), capture_output=True, text=True,
                              timeout=timeout, cwd="/")  # fmt: skip
        if proc.returncode != 0:
            raise PostgresError(f"{Path(cmd[0]).name} failed ({proc.returncode}): "
                                f"{(proc.stderr or proc.stdout).strip()[-2000:]}")  # fmt: skip
        return proc.stdout

    def _own(self, *paths: Path) -> None:
        if os.geteuid() == 0:
            for path in paths:
                shutil.chown(path, "postgres", "postgres")

    def initdb(self, waldir: Path) -> None:
        """A new cluster with its WAL in *waldir* (another volume: one consistency group)."""
        self.data.mkdir(parents=True, exist_ok=True)
        waldir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data, waldir, self.socket_dir)
        os.chmod(self.data, 0o700)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "--waldir", str(waldir),
                  "-A", "trust", "-U", "postgres", "--no-instructions")  # fmt: skip

    def adopt_copy(self, waldir: Path) -> None:
        """Make a split copy startable here: its pg_wal link names the original WAL mount,
        and its postmaster.pid is the original's (maybe alive on this machine)."""
        link = self.data / "pg_wal"
        if link.is_symlink():
            link.unlink()
            link.symlink_to(waldir)
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.socket_dir)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.socket_dir} -c listen_addresses='' -c fsync=on"
        log = self.data / "server.log"
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w",
                      "-t", "120", "-l", str(log), "start")  # fmt: skip
        except PostgresError as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-8:] if log.exists() else []
            raise PostgresError(f"{exc}; {log}: " + " | ".join(tail)) from None

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def argv(self, tool: str, *args: str) -> list[str]:
        """A client tool's full command line (prefix, owner, connection options)."""
        return self._as_owner(*self._client(tool), *args)

    def _client(self, tool: str) -> list[str]:
        return [str(self.bin / tool), "-h", str(self.socket_dir), "-p", str(self.port)]

    def sql(self, query: str) -> str:
        return self._run(*self._client("psql"), "-U", "postgres", "-d", "postgres", "-At",
                         "-v", "ON_ERROR_STOP=1", "-c", query).strip()  # fmt: skip

    def pgbench_init(self, scale: int = 1) -> None:
        self._run(*self._client("pgbench"), "-U", "postgres", "-i", "-q", "-s", str(scale),
                  "postgres")  # fmt: skip

    def pgbench(self, *, transactions: int = 0, seconds: int = 0, clients: int = 2) -> float:
        """Run the TPC-B-like load; returns TPS as pgbench reports it."""
        limit = ["-t", str(transactions)] if transactions else ["-T", str(seconds or 5)]
        out = self._run(*self._client("pgbench"), "-U", "postgres", "-n", "-c", str(clients),
                        "-j", str(clients), *limit, "postgres")  # fmt: skip
        for line in out.splitlines():
            if line.startswith("tps ="):
                return float(line.split()[2])
        raise PostgresError(f"no tps line in pgbench's output: {out[-500:]}")

    def verify(self) -> Check:
        """pgbench's invariant and pg_amcheck; the cluster must be running."""
        try:
            accounts, history, count = self.sql(
                "SELECT (SELECT COALESCE(SUM(abalance), 0) FROM pgbench_accounts), "
                "(SELECT COALESCE(SUM(delta), 0) FROM pgbench_history), "
                "(SELECT COUNT(*) FROM pgbench_history)"
            ).split("|")
        except PostgresError as exc:
            return Check(False, 0, str(exc))
        problems = []
        if accounts != history:
            problems.append(f"sum(abalance) {accounts} != sum(delta) {history}")
        amcheck = self.bin / "pg_amcheck"
        if amcheck.exists():
            try:
                self._run(*self._client("pg_amcheck"), "-U", "postgres", "--install-missing",
                          "--heapallindexed", "postgres")  # fmt: skip
            except PostgresError as exc:
                problems.append(f"pg_amcheck: {exc}")
        ok_detail = (f"sum(abalance) = sum(delta) = {accounts} over {count} transactions"
                     + (", pg_amcheck clean" if amcheck.exists() else ""))  # fmt: skip
        return Check(not problems, int(count), "; ".join(problems) or ok_detail)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m blockemu.workloads",
                                     description="database workloads for the labs")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("sqlite-load", help="write batches until killed (or --batches)")
    load.add_argument("db", type=Path)
    load.add_argument("ledger", type=Path, help="file (outside the volume) of committed batches")
    load.add_argument("--batches", type=int, default=None)
    load.add_argument("--pause", type=float, default=0.0, help="seconds between batches")
    check = sub.add_parser("sqlite-check", help="verify a database; exit 1 if it fails")
    check.add_argument("db", type=Path)
    check.add_argument("--ledger", type=Path, help="also require every acknowledged batch")
    args = parser.parse_args(argv)
    if args.command == "sqlite-load":
        sqlite_write(args.db, batches=args.batches, ledger=args.ledger, pause=args.pause)
    else:
        result = sqlite_verify(args.db, at_least_batches=ledger_batches(args.ledger)
                               if args.ledger else 0)  # fmt: skip
        print(result.detail)
        raise SystemExit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
