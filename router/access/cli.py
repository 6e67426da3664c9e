"""`router keys`: create, list and revoke API keys in the shared store."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer

from router.access.keys import ApiKey, KeyProblem, KeyRegistry, check_name

T = TypeVar("T")
keys_app = typer.Typer(help="API keys, hashed in Redis (policy `auth: required`).", no_args_is_help=True)

RedisUrl = Annotated[
    str,
    typer.Option(envvar="ROUTER_REDIS_URL", help="The Redis the routers share (the keys live there)."),
]


def _run(redis_url: str, action: Callable[[KeyRegistry], Awaitable[T]]) -> T:
    from router.state import RedisUrlError, is_outage, redis_client

    async def run() -> T:
        client = redis_client(redis_url, decode_responses=True, socket_connect_timeout=2)
        try:
            return await action(KeyRegistry(client))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (KeyProblem, RedisUrlError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except Exception as exc:
        if not is_outage(exc):
            raise
        typer.echo(f"error: Redis at {redis_url} is unreachable ({exc})", err=True)
        raise typer.Exit(1) from exc


def _models(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    models = tuple(m.strip() for m in value.split(",") if m.strip())
    if not models:
        raise typer.BadParameter("name at least one model", param_hint="--models")
    return models


@keys_app.command("create", short_help="Create a key and print it (shown this once).")
def create(
    name: Annotated[str, typer.Option(help="The tenant: what policy rules and metrics call this caller.")],
    redis_url: RedisUrl,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens (prompt and answer) per minute.")] = None,
    budget_usd: Annotated[
        float | None, typer.Option(min=0, help="Lifetime spend, at the targets' costs.")
    ] = None,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model names it may ask for (default: all).")
    ] = None,
) -> None:
    """Create a key and print it: it is shown this once and stored only hashed."""
    try:
        check_name(name)
    except KeyProblem as exc:
        raise typer.BadParameter(str(exc), param_hint="--name") from exc
    spec = ApiKey(name, rpm, tpm, budget_usd, _models(models))
    typer.echo(_run(redis_url, lambda registry: registry.create(spec)))


@keys_app.command("list")
def list_keys(redis_url: RedisUrl) -> None:
    """Every key's name, limits, models and spend (never the key)."""
    listed = _run(redis_url, lambda registry: registry.listed())
    typer.echo(f"{'name':<24} {'rpm':>7} {'tpm':>9} {'budget':>10} {'spent':>10}  {'created':<20} models")
    for key, spent in listed:
        typer.echo(
            f"{key.name:<24} {_shown(key.rpm):>7} {_shown(key.tpm):>9} "
            f"{_shown(key.budget_usd, '${:g}'):>10} {f'${spent:.4f}':>10}  "
            f"{datetime.fromtimestamp(key.created, UTC):%Y-%m-%d %H:%M:%S}  {','.join(key.models or ('*',))}"
        )


@keys_app.command("revoke")
def revoke(name: str, redis_url: RedisUrl) -> None:
    """Revoke a key: every replica refuses it within a second."""
    _run(redis_url, lambda registry: registry.revoke(name))
    typer.echo(f"revoked {name}")


def _shown(value: Any, form: str = "{}") -> str:
    return "-" if value is None else form.format(value)
