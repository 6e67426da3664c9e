"""`router traffic`: export and purge the rows a policy's `capture:` keeps in Redis
(router/stages/capturing.py).

An export is canonical records (train/data.py's form), one JSON line per row, ready to be labelled: a
captured request has no gold answer, so each is a `chat` record (graded by a judge), with its answer and
how it was routed beside it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from policies.schema import NO_TENANT
from router.access.keys import NAME
from router.stages.capturing import CAPTURE_PREFIX, capture_key
from router.state import RedisStore

T = TypeVar("T")
traffic_app = typer.Typer(help="Captured traffic (policy `capture:`), kept in Redis.", no_args_is_help=True)

RedisUrl = Annotated[
    str,
    typer.Option(envvar="ROUTER_REDIS_URL", help="The Redis the routers share (the rows live there)."),
]
Tenant = Annotated[
    str | None,
    typer.Option(help=f"One tenant's rows: an API key's name, or {NO_TENANT} for requests without a key."),
]

EVERY_ROW = 2**31
_PURGE = """
local rows = redis.call('LLEN', KEYS[1])
redis.call('DEL', KEYS[1])
return rows
"""
"""Counted and deleted at once, so a row written meanwhile is either counted or still there."""


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _checked(tenant: str | None) -> str | None:
    if tenant is not None and tenant != NO_TENANT and not NAME.match(tenant):
        raise _fail(
            f"--tenant '{tenant}': neither a key name (letters, digits, '.', '_', '-') nor {NO_TENANT}"
        )
    return tenant


def _since(value: str | None) -> float:
    """Unix seconds from unix seconds or an ISO date or time (UTC unless it names a zone)."""
    if value is None:
        return 0.0
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(f"--since '{value}': give an ISO date or time, or unix seconds") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _run(redis_url: str, action: Callable[[RedisStore, Any], Awaitable[T]]) -> T:
    from router.state import RedisUrlError, is_outage

    async def run() -> T:
        # A whole tenant's rows come in one reply: more than the request path's one-second timeout allows.
        store = RedisStore(redis_url, connect_timeout_s=2, timeout_s=60)
        try:
            return await action(store, store.client)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except RedisUrlError as exc:
        raise _fail(str(exc)) from exc
    except Exception as exc:
        if not is_outage(exc):
            raise
        typer.echo(f"error: Redis at {redis_url} is unreachable ({exc})", err=True)
        raise typer.Exit(1) from exc


async def _tenants(store: RedisStore, client: Any, tenant: str | None) -> list[str]:
    if tenant is not None:
        return [tenant]
    start = len(store.prefix + CAPTURE_PREFIX)
    keys = {key async for key in client.scan_iter(match=f"{store.prefix}{CAPTURE_PREFIX}*", count=1000)}
    return sorted(key[start:] for key in keys)


def _record(row: dict[str, Any]) -> dict[str, Any] | None:
    """The canonical record of a row; None when it has no user message to ask again."""
    question = next((m["content"] for m in reversed(row["messages"]) if m["role"] == "user"), "")
    if not question.strip():
        return None
    return {
        "id": row["id"],
        "question": question,
        "messages": row["messages"],
        "answers": [],
        "task": "chat",
        "source": "traffic",
        # The client's answer first, then the explore: candidates' (a row may have no `shadow` at all).
        "answer": {
            **({row["target"]: row["answer"]} if row["target"] is not None else {}),
            **row.get("shadow", {}),
        },
        "decision": row["decision"],
        "confidences": row["confidences"],
        "family": row["family"],
        "tenant": row["tenant"],
        "time": row["time"],
    }


def export(
    policy: Annotated[Path, typer.Option(help="The policy that captured them (its retention_days).")],
    out: Annotated[Path, typer.Option(help="The JSONL file to write.")],
    redis_url: RedisUrl,
    tenant: Tenant = None,
    since: Annotated[
        str | None,
        typer.Option(
            help="Only rows from then on: an ISO date or time (UTC unless it says so), or unix seconds."
        ),
    ] = None,
) -> None:
    """Write the captured rows as canonical records, one JSON line each, oldest first: id, question (the
    last user message), messages, answers (empty: to be labelled), task chat, source traffic, and answer
    ({target: text}: the client's, then each shadow answer of explore:; no client's for a refusal),
    decision, confidences, family, tenant, time. Rows older than the policy's capture.retention_days are
    left out."""
    from router.cli import _load_or_exit

    loaded = _load_or_exit(policy)
    if loaded.capture is None:
        raise _fail(f"{policy}: no capture: block, so nothing is captured under it")
    oldest = max(_since(since), time.time() - loaded.capture.retention_days * 86400)
    chosen = _checked(tenant)

    async def read(store: RedisStore, client: Any) -> list[dict[str, Any]]:
        rows = []
        for name in await _tenants(store, client, chosen):
            rows += [json.loads(value) for value in await store.recent(capture_key(name), EVERY_ROW)]
        return [row for row in rows if row["time"] >= oldest]

    rows = sorted(_run(redis_url, read), key=lambda row: row["time"])
    records = [record for record in map(_record, rows) if record is not None]
    try:
        with out.open("w", encoding="utf-8") as file:
            file.writelines(json.dumps(record) + "\n" for record in records)
    except OSError as exc:
        raise _fail(f"{out}: cannot write: {exc.strerror}") from exc
    unasked = len(rows) - len(records)
    left_out = f" ({unasked} rows without a user message left out)" if unasked else ""
    typer.echo(f"{out}: {len(records)} records{left_out}")


def purge(redis_url: RedisUrl, tenant: Tenant = None) -> None:
    """Delete the captured rows of one tenant, or of every tenant, and print how many rows went."""
    chosen = _checked(tenant)

    async def delete(store: RedisStore, client: Any) -> int:
        keys = [store.prefix + capture_key(name) for name in await _tenants(store, client, chosen)]
        return sum([int(await client.eval(_PURGE, 1, key)) for key in keys])

    typer.echo(f"purged {_run(redis_url, delete)} rows")


traffic_app.command("export", short_help="Write captured rows as records to label (JSONL).")(export)
traffic_app.command("purge", short_help="Delete captured rows; print how many went.")(purge)
