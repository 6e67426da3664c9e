"""A closed-loop HTTP/1.1 load generator on raw asyncio streams: each client keeps one connection and sends
its next request when the last answer has been read. Its own cost per request is a few tens of microseconds,
so on a shared core it takes little from the server it measures (an httpx client costs ten times as much).

Times are taken for the whole answer and for its first body byte (for a stream: its first event).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field

_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")


class BadAnswer(RuntimeError):
    pass


@dataclass
class Timings:
    latency_s: list[float] = field(default_factory=list)
    first_byte_s: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    untimed: int = 0
    """Warm-up requests sent besides the timed ones."""

    @property
    def throughput(self) -> float:
        return len(self.latency_s) / self.wall_s if self.wall_s else 0.0

    def extend(self, other: Timings) -> None:
        self.latency_s += other.latency_s
        self.first_byte_s += other.first_byte_s
        self.wall_s += other.wall_s
        self.untimed += other.untimed


@dataclass(frozen=True)
class Call:
    """One request, sent as is by every client."""

    host: str
    port: int
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    expect: bytes = b'"choices"'
    """Bytes every answer must contain (a gateway that answers errors fast is not fast)."""

    def wire(self) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"host: {self.host}:{self.port}",
            "content-type: application/json",
            f"content-length: {len(self.body)}",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


class _Client:
    def __init__(self, call: Call) -> None:
        self.call, self.wire = call, call.wire()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def send(self) -> tuple[float, float]:
        """(seconds to the whole answer, seconds to its first body byte)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.call.host, self.call.port)
        assert self.reader is not None
        started = time.perf_counter()
        self.writer.write(self.wire)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lower = head.lower()
        found = _LENGTH.search(lower)
        if found is not None:
            body = await self.reader.readexactly(int(found.group(1)))
            first = time.perf_counter()
        elif b"transfer-encoding: chunked" in lower:
            body, first = await self._chunked()
        else:
            raise BadAnswer(f"an answer with neither a length nor chunks: {head[:200]!r}")
        done = time.perf_counter()
        if not head.startswith(b"HTTP/1.1 200") or self.call.expect not in body:
            raise BadAnswer(f"{head[:200]!r} {body[:300]!r}")
        if b"\r\nconnection: close" in lower:
            await self.close()
        return done - started, first - started

    async def _chunked(self) -> tuple[bytes, float]:
        assert self.reader is not None
        parts: list[bytes] = []
        first = 0.0
        while True:
            size = int((await self.reader.readline()).split(b";")[0].strip(), 16)
            if size == 0:
                await self.reader.readline()  # the CRLF after the last chunk (no trailers)
                return b"".join(parts), first
            parts.append((await self.reader.readexactly(size + 2))[:-2])
            first = first or time.perf_counter()

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def run(call: Call, clients: int, requests: int, warm_up: int = 2) -> Timings:
    """`requests` in all from `clients` concurrent clients, after `warm_up` untimed requests each."""
    pool = [_Client(call) for _ in range(clients)]
    try:
        for _ in range(warm_up):
            await asyncio.gather(*(client.send() for client in pool))
        timings = Timings(untimed=warm_up * clients)
        left = requests

        async def drive(client: _Client) -> None:
            nonlocal left
            while left > 0:
                left -= 1
                latency, first = await client.send()
                timings.latency_s.append(latency)
                timings.first_byte_s.append(first)

        started = time.perf_counter()
        await asyncio.gather(*(drive(client) for client in pool))
        timings.wall_s = time.perf_counter() - started
        return timings
    finally:
        await asyncio.gather(*(client.close() for client in pool))
