"""A throwaway PostgreSQL server for the tests: Debian's binaries, a temporary data directory, localhost only.

Started once per test session by the `postgres` fixture (conftest.py) when a test asks for it, and
stopped (its files removed) when the session ends. PostgreSQL refuses to run as root, so as root the
server runs as the `postgres` user the Debian package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "rubik"  # the database superuser initdb creates (trust authentication, localhost only)


def find_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian keeps initdb and pg_ctl off PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def missing_reason() -> str | None:
    """Why a server cannot be started here, or None."""
    if find_bindir() is None:
        return "PostgreSQL server binaries not found (Debian: apt-get install -y postgresql; .ci/run installs them)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="rubik-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync")
        self._databases = 0

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [*self._as_user, str(self.bindir / tool), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if check and result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr[-2000:]}\n{log}")
        return result

    @property
    def base_url(self) -> str:
        return f"postgresql://{USER}@localhost:{self.port}"

    def start(self) -> None:
        # fsync off: a test server's data need not survive a power cut, and the tests run faster.
        options = f"-p {self.port} -k {self.root} -c listen_addresses=localhost -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        # fast: clients are disconnected at once, as when a database server restarts under a running study.
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database's URL, so tests do not see each other's studies."""
        import psycopg

        self._databases += 1
        name = f"{prefix}{self._databases}_{int(time.time() * 1000) % 10**8}"
        with psycopg.connect(f"{self.base_url}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.base_url}/{name}"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
