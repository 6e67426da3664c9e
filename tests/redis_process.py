"""Redis of a test's own on free loopback ports, that the test can kill, freeze and restart: one server
(`RedisProcess`), a three-node Redis Cluster (`RedisClusterProcess`) or a master watched by a Sentinel
(`RedisSentinelProcess`). Each has `url` (the router's form, docs/operations.md), `client()` (a plain
synchronous client for reading what it holds), `start`, `kill`, `freeze`, `thaw` and `flush`.

`reset` makes a backend that a test may have killed or frozen whole and empty again, so that one
backend can serve a module's tests in turn; `direct_client(url)` is a synchronous client for any URL.

Every data server writes an AOF with fsync on every write into its folder, so a restart after SIGKILL
brings back every write Redis acknowledged. `running_redis` always kills it at the end; in a test module:

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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import redis
import redis.cluster
import redis.sentinel

from router.state import parse_redis_url
from tests.conftest import free_port

Kind = Literal["single", "cluster", "sentinel"]
KINDS: tuple[Kind, ...] = ("single", "cluster", "sentinel")
SERVICE = "primary"
"""The name the Sentinel knows its master by."""


class RedisProcess:
    def __init__(self, folder: Path, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.folder, self.port, self.extra = folder, port or free_port(), extra
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
            *self.extra,
        ]

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10) -> RedisProcess:
        """Start (or restart, on the same port and AOF) and wait until it answers PING."""
        self.launch()
        self.wait_for_ping(timeout_s)
        return self

    def launch(self) -> None:
        assert not self.running, "already running"
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "redis.log").open("ab") as out:
            self._process = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)

    def wait_for_ping(self, timeout_s: float = 10) -> None:
        self.wait_until(lambda client: bool(client.ping()), timeout_s, "answer PING")

    def wait_until(self, check: Callable[[redis.Redis], bool], timeout_s: float, what: str) -> None:
        client = self.node_client()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if check(client):
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass
                assert self._process is not None
                if self._process.poll() is not None:
                    log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{log}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} did not {what} in {timeout_s} s")
                time.sleep(0.05)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final save; the AOF (fsync always) has every acknowledged write."""
        if self.running:
            assert self._process is not None
            self._process.kill()
            self._process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung Redis)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def node_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2)

    def client(self) -> Any:
        """A plain client for reading what the server holds (decoded strings)."""
        return self.node_client()

    def flush(self) -> None:
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()

    def reset(self) -> None:
        if self.running:
            self.thaw()
            self.wait_for_ping()
        else:
            self.start()
        client = self.node_client()
        try:
            client.config_set("maxmemory", "0")
        finally:
            client.close()
        self.flush()


class RedisClusterProcess:
    """Three primaries, no replicas, each slot on one of them: `redis-cli --cluster create` on the first
    start; a restart brings every node back with its slots (nodes.conf) and its data (AOF)."""

    def __init__(self, folder: Path, nodes: int = 3) -> None:
        self.nodes = [
            RedisProcess(
                folder / f"node-{i}",
                # The bus port is port + 10000 unless given: that one may be taken, or past 65535.
                extra=(
                    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                    *("--cluster-port", str(free_port())),
                ),
            )
            for i in range(nodes)
        ]
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        self._created = False

    def start(self, timeout_s: float = 20) -> RedisClusterProcess:
        """Start the nodes that are not running and wait until the cluster serves every slot."""
        for node in self.nodes:
            if node.running:
                node.thaw()
            else:
                node.launch()
        for node in self.nodes:
            node.wait_for_ping(timeout_s)
        if not self._created:
            subprocess.run(
                [
                    "redis-cli",
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{node.port}" for node in self.nodes),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=timeout_s,
            )
            self._created = True
        for node in self.nodes:
            node.wait_until(_cluster_ok, timeout_s, "report cluster_state:ok")
        return self

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def freeze(self) -> None:
        for node in self.nodes:
            node.freeze()

    def thaw(self) -> None:
        for node in self.nodes:
            node.thaw()

    def client(self) -> redis.cluster.RedisCluster:
        first = self.nodes[0]
        return redis.cluster.RedisCluster(
            host="127.0.0.1", port=first.port, decode_responses=True, socket_timeout=2
        )

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def reset(self) -> None:
        self.start()
        for node in self.nodes:
            node.reset()


def _cluster_ok(client: redis.Redis) -> bool:
    return bool(client.cluster("info").get("cluster_state") == "ok")


def _synced(client: redis.Redis) -> bool:
    info = client.info("replication")
    return bool(info.get("role") == "slave" and info.get("master_link_status") == "up")


class RedisSentinelProcess:
    """A master and one Sentinel watching it (quorum 1). Without a replica there is nothing to fail over
    to, so a killed master is the outage it is, and comes back as the master; with one, `failover` makes
    the replica the master."""

    def __init__(self, folder: Path, with_replica: bool = False) -> None:
        # A replica's first sync waits 5 s for other replicas to share it, unless told not to.
        self.master = RedisProcess(folder / "master", extra=("--repl-diskless-sync-delay", "0"))
        self.replica = None
        if with_replica:
            self.replica = RedisProcess(
                folder / "replica", extra=("--replicaof", "127.0.0.1", str(self.master.port))
            )
        self.folder = folder / "sentinel"
        self.sentinel_port = free_port()
        self.url = f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{SERVICE}/0"
        self._sentinel: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10) -> RedisSentinelProcess:
        for server in (self.master, self.replica):
            if server is not None and not server.running:
                server.start(timeout_s)
        if self.replica is not None:
            self.replica.wait_until(_synced, timeout_s, "sync with its master")
        if self._sentinel is None or self._sentinel.poll() is not None:
            self._start_sentinel(timeout_s)
        return self

    def _start_sentinel(self, timeout_s: float) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "sentinel.conf"  # the Sentinel rewrites its own configuration
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\ndir {self.folder}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} 60000\n"
        )
        with (self.folder / "sentinel.log").open("ab") as out:
            self._sentinel = subprocess.Popen(
                ["redis-server", str(config), "--sentinel"], stdout=out, stderr=subprocess.STDOUT
            )
        client = redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if client.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE):
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server --sentinel did not answer in {timeout_s} s")
                time.sleep(0.05)
        finally:
            client.close()

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.sentinel_port, decode_responses=True, socket_timeout=2)

    def failover(self, timeout_s: float = 30) -> None:
        """SENTINEL FAILOVER: the replica becomes the master (and the old master its replica); returns once
        the Sentinel names it and it takes writes."""
        assert self.replica is not None, "a failover needs a replica"
        promoted = self.replica
        # Sentinel promotes the replica as it stands: a write it has not received yet would be lost, which is
        # replication lag on a busy machine, not what a test of the failover asks about.
        master = self.master.node_client()
        try:
            written = int(master.info("replication")["master_repl_offset"])
        finally:
            master.close()
        promoted.wait_until(
            lambda c: int(c.info("replication")["master_repl_offset"]) >= written,
            timeout_s,
            "receive every write before the failover",
        )
        client = self.sentinel_client()
        deadline = time.monotonic() + timeout_s
        try:
            while True:  # until the Sentinel has found the replica (INFO from the master)
                try:
                    client.execute_command("SENTINEL", "FAILOVER", SERVICE)
                    break
                except redis.exceptions.ResponseError:  # NOGOODSLAVE: not known yet
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            while client.execute_command("SENTINEL", "get-master-addr-by-name", SERVICE)[1] != str(
                promoted.port
            ):
                assert time.monotonic() < deadline, "the Sentinel never named the replica"
                time.sleep(0.1)
        finally:
            client.close()
        promoted.wait_until(lambda c: c.role()[0] == "master", timeout_s, "become the master")
        self.master, self.replica = promoted, self.master
        # Until the Sentinel turns the old master into a replica, it takes writes that the failover loses.
        self.replica.wait_until(_synced, timeout_s, "become the new master's replica")

    def kill(self) -> None:
        """The master goes; the Sentinel stays and keeps naming it."""
        self.master.kill()

    def stop_all(self) -> None:
        self.master.kill()
        if self.replica is not None:
            self.replica.kill()
        if self._sentinel is not None and self._sentinel.poll() is None:
            self._sentinel.kill()
            self._sentinel.wait(timeout=10)

    def freeze(self) -> None:
        self.master.freeze()

    def thaw(self) -> None:
        self.master.thaw()

    def client(self) -> redis.Redis:
        return self.master.client()

    def flush(self) -> None:
        self.master.flush()

    def reset(self) -> None:
        self.start()
        self.master.reset()


Backend = RedisProcess | RedisClusterProcess | RedisSentinelProcess


def backend(kind: Kind, folder: Path) -> Backend:
    if kind == "cluster":
        return RedisClusterProcess(folder / "redis-cluster")
    if kind == "sentinel":
        return RedisSentinelProcess(folder / "redis-sentinel")
    return RedisProcess(folder / "redis-data")


def direct_client(url: str) -> Any:
    """A synchronous client (decoded strings) for a URL of any form the router takes."""
    target = parse_redis_url(url)
    if target.topology == "cluster":
        nodes = [redis.cluster.ClusterNode(host, port) for host, port in target.nodes]
        return redis.cluster.RedisCluster(startup_nodes=nodes, decode_responses=True, socket_timeout=2)
    if target.topology == "sentinel":
        sentinel = redis.sentinel.Sentinel(list(target.nodes), socket_timeout=2)
        return sentinel.master_for(target.service, db=target.db, decode_responses=True, socket_timeout=2)
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=2)


@contextlib.contextmanager
def running_redis(folder: Path, kind: Kind = "single") -> Iterator[Any]:
    """A started backend with its data under `folder`, killed on the way out whatever happened (SIGKILL
    ends a frozen, SIGSTOPped, server too)."""
    server = backend(kind, folder)
    try:
        yield server.start()
    finally:
        if isinstance(server, RedisSentinelProcess):
            server.stop_all()
        else:
            server.kill()
