"""A real PostgreSQL server for the tests, started from the machine's server binaries (Debian's `postgresql`
package: /usr/lib/postgresql/<version>/bin) in a temporary folder, on a free loopback port, and stopped
after the session. Tests that need it skip, saying how to install it, when the binaries are absent."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path


def server_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """initdb + pg_ctl in `folder`. PostgreSQL refuses to run as root: as root it runs as the `postgres`
    system user (which the Debian package creates)."""

    def __init__(self, folder: Path, bindir: Path):
        self.folder, self.bindir = Path(folder), bindir
        self.data, self.port = self.folder / "data", free_port()
        self.user = "postgres" if os.geteuid() == 0 else None

    def run(self, *command: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stdout[-1500:]}{result.stderr[-1500:]}")

    def start(self) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.folder, entry.pw_uid, entry.pw_gid)
        self.run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "automl", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -h 127.0.0.1 -c fsync=off -c max_connections=200"
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                 str(self.folder / "server.log"), "-w", "start")
        self.run(str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "automl", "automl")
        return f"postgresql+psycopg://automl@127.0.0.1:{self.port}/automl"

    def stop(self) -> None:
        self.run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
