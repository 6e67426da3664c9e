"""A redis-server of a test's own, on a free loopback port, that the test can kill, freeze and restart.

It writes an AOF with fsync on every write into its folder, so a restart after SIGKILL brings back every
write Redis acknowledged. `running_redis` always kills it at the end; in a test module:

    @pytest.fixture
    def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
        with running_redis(tmp_path) as server:
            yield server
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from tests.conftest import free_port


class RedisProcess:
    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder, self.port = folder, port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> list[str]:
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.folder),
        ]

    def start(self, timeout_s: float = 10) -> RedisProcess:
        """Start (or restart, on the same port and AOF) and wait until it answers PING."""
        assert self._process is None or self._process.poll() is not None, "already running"
        with (self.folder / "redis.log").open("ab") as out:
            self._process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        self.wait_for_ping(timeout_s)
        return self

    def wait_for_ping(self, timeout_s: float = 10) -> None:
        client = self.client()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.ping():
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass
                assert self._process is not None
                if self._process.poll() is not None:
                    log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{log}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not answer in {timeout_s} s")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; the AOF (fsync always) has every acknowledged write."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung Redis)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        """A plain client for reading what the server holds (decoded strings)."""
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=2)


@contextlib.contextmanager
def running_redis(folder: Path) -> Iterator[RedisProcess]:
    """A started server with its data in `folder`/redis-data, killed on the way out whatever happened."""
    server = RedisProcess(folder / "redis-data")
    server.folder.mkdir(parents=True, exist_ok=True)
    try:
        yield server.start()
    finally:
        server.kill()  # SIGKILL ends a frozen (SIGSTOPped) server too
