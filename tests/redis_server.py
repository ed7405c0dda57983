"""Start and stop redis-server processes the tests own (by pid), on free loopback ports."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import redis

from tests.support import wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process; ``stop``/``start`` kill and revive it on the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.workdir = workdir
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.client().ping(), f"redis-server on port {self.port} did not start", 10, until_dead=self.process)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open but answers nothing (a slow Redis)."""
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.process and getattr(self, "paused", False):
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def snapshot(self, name: str = "old.rdb") -> Path:
        """SAVE now and keep a copy of the RDB file: what a restore from an older backup brings back."""
        self.client().save()
        kept = self.workdir / name
        shutil.copyfile(self.workdir / "dump.rdb", kept)
        return kept

    def restart_from(self, snapshot: Path) -> None:
        """Kill the server, put ``snapshot`` back as its RDB file and start it: a restore from an older backup."""
        self.stop()
        shutil.copyfile(snapshot, self.workdir / "dump.rdb")
        self.start()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None
