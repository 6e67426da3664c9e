"""The service's commands: serve, calibrate, score, and the `models` and `policy` groups.

commands/ assembles them, with the training commands and `keys`, into the `router` command.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

import calibrators
import scorers  # noqa: F401  (registers scorers/checks.py: the scorer checks load_policy runs)
from localmodel.interface import PRECISION_ENV, precision_override
from policies import DEFAULT_POLICY_PATH, Policy, PolicyError, RequestFacts, decide, load_policy

models_app = typer.Typer(help="Fetch and list local models.", no_args_is_help=True)
policy_app = typer.Typer(help="Check and explain policy files.", no_args_is_help=True)

PolicyFile = Annotated[Path, typer.Argument(help="A policy YAML file.")]


def _load_or_exit(path: Path) -> Policy:
    try:
        return load_policy(path)
    except PolicyError as exc:
        for problem in exc.problems:
            typer.echo(problem, err=True)
        raise typer.Exit(2) from exc


def serve(
    policy: Annotated[Path | None, typer.Option(help="Policy YAML; the built-in default if omitted.")] = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    redis_url: Annotated[
        str | None,
        typer.Option(envvar="ROUTER_REDIS_URL", help="Shared state (score cache); in-process if unset."),
    ] = None,
    log_level: str = "info",
    grace_s: Annotated[
        float,
        typer.Option(
            envvar="ROUTER_GRACE_S",
            min=0,
            help="On SIGTERM, how long requests in flight may finish before they are cancelled.",
        ),
    ] = 30.0,
    watch_policy: Annotated[
        float,
        typer.Option(
            "--watch-policy",
            envvar="ROUTER_WATCH_POLICY_S",
            min=0,
            metavar="SECONDS",
            help="Reload when the policy file's content changes, looking every SECONDS (0: off).",
        ),
    ] = 0.0,
    scorer_precision: ScorerPrecision = None,
) -> None:
    """Serve the OpenAI-compatible proxy."""
    import signal

    import uvicorn

    from localmodel import catalog as models
    from router.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _set_precision(scorer_precision)
    if logging.getLogger().level > logging.DEBUG:
        # One line per request, the router's own (router/asgi.py): none per upstream call from the HTTP
        # client or from litellm (which logs each call at INFO, twice: through its own handler too).
        for chatty in ("httpx", "httpcore", "LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
    loaded = _load_or_exit(policy or DEFAULT_POLICY_PATH)
    try:  # fetch a catalog model before binding the port, so a missing model fails the start-up
        models.resolve(loaded.scorer.model)
    except models.ModelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    if loaded.auth == "off" and not _loopback(host):
        logging.getLogger("router").warning(
            "listening on %s with auth off: anyone who can reach this port may call every target; set "
            "`auth: required` in the policy and create keys with `router keys create`",
            host,
        )
    try:
        proxy = create_app(
            loaded,
            redis_url,
            policy_path=policy or DEFAULT_POLICY_PATH,
            admin_key=os.environ.get("ROUTER_ADMIN_KEY"),
            watch_policy_s=watch_policy,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    # uvicorn annotates the grace period as int but waits on it with asyncio.wait_for, which takes a float.
    grace: int = grace_s  # type: ignore[assignment]
    config = uvicorn.Config(
        proxy,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=grace,
        access_log=False,  # router/asgi.py logs each request, with how it was routed
    )
    # uvicorn drains on SIGTERM and SIGINT, then raises the signal again under the handler it found; with
    # these in place a drained shutdown is a clean exit (0), not death by signal (143, 130).
    for drained in (signal.SIGTERM, signal.SIGINT):
        signal.signal(drained, lambda *_: None)
    uvicorn.Server(config).run()


ScorerPrecision = Annotated[
    str | None,
    typer.Option(
        envvar=PRECISION_ENV,
        help="The head scorer's forward pass on this machine, over the policy's scorer.precision: "
        "auto (bf16 on a CPU with AMX), fp32 (off) or bf16.",
    ),
]


def _set_precision(precision: str | None) -> None:
    """The model reads the setting where the scorer is built, in this process: through the environment."""
    if precision is None:
        return
    os.environ[PRECISION_ENV] = precision
    try:
        precision_override()
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


def calibrate(
    out: Annotated[Path, typer.Option(help="Where to write calibrator.json.")],
    from_feedback: Annotated[
        bool, typer.Option("--from-feedback", help="Fit on the feedback logged in the shared store.")
    ] = False,
    redis_url: Annotated[
        str | None, typer.Option(envvar="ROUTER_REDIS_URL", help="The store the servers log feedback to.")
    ] = None,
    method: Annotated[
        str, typer.Option(help=f"A calibrator kind: {', '.join(calibrators.fittable_kinds())}.")
    ] = "platt",
    min_samples: int = 50,
) -> None:
    """Fit a calibrator (raw score -> confidence) and write it; a policy adopts it as scorer.calibrator."""
    from router.recalibrate import fit_from_feedback

    if not from_feedback or redis_url is None:
        typer.echo("error: give --from-feedback and --redis-url (or ROUTER_REDIS_URL)", err=True)
        raise typer.Exit(2)
    try:
        fitted = fit_from_feedback(redis_url, method, min_samples)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    fitted.calibrator.save(out)
    typer.echo(
        f"{out}: {method} on {fitted.samples} records ({fitted.correct} correct) of scorer {fitted.scorer}; "
        f"ECE {fitted.ece_before:.4f} as served, {fitted.ece_after:.4f} recalibrated (in-sample)"
    )


def score(
    question: Annotated[str, typer.Argument(help="The question, as a single user message.")],
    policy: Annotated[Path | None, typer.Option(help="Take the scorer from this policy.")] = None,
    scorer_precision: ScorerPrecision = None,
) -> None:
    """Score one question with the policy's scorer and print JSON."""
    import asyncio
    import json

    from localmodel import LocalModel
    from router.service import Router

    _set_precision(scorer_precision)
    loaded = _load_or_exit(policy or DEFAULT_POLICY_PATH)

    async def run() -> dict[str, object]:
        router = Router(loaded, LocalModel(loaded.scorer.model))
        try:
            messages = [{"role": "user", "content": question}]
            scored = await router.score(messages, cached=False)
        finally:
            await router.close()
        primary = router.scorer.primary
        report: dict[str, object] = {
            "confidence": scored.confidence[primary],
            "raw_score": scored.raw[primary],
            "confidences": scored.confidence,
            "scorer": router.scorer.method,
            "latency_ms": round(scored.latency_ms, 3),
        }
        if scored.task is not None:
            report["task"], report["task_probabilities"] = scored.family, scored.task
        if scored.draft is not None:
            report["draft"] = scored.draft.text
        return report

    report = asyncio.run(run())
    typer.echo(json.dumps(report))


@models_app.command("pull", short_help="Fetch a catalog model; convert it to safetensors once.")
def models_pull(name: str) -> None:
    """Fetch a catalog model and convert it to a local safetensors folder (idempotent)."""
    from localmodel import catalog as models

    try:
        typer.echo(models.pull(name))
    except models.ModelError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@models_app.command("list")
def models_list() -> None:
    """Show the catalog and what is cached."""
    from localmodel import catalog as models

    cached = {m.name: m for m in models.list_cached()}
    for name in sorted(set(models.CATALOG) | set(cached)):
        entry = cached.get(name)
        status = f"pulled  {entry.size_bytes / 1e6:7.1f} MB  {entry.path}" if entry else "not pulled"
        typer.echo(f"{name:28} {status}")


@policy_app.command("validate", short_help="Check policy files: one line per problem.")
def policy_validate(files: Annotated[list[Path], typer.Argument(help="Policy YAML files.")]) -> None:
    """Exit 0 when every file is valid; else print one line per problem and exit 2."""
    failed = False
    for path in files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            failed = True
            for problem in exc.problems:
                typer.echo(problem, err=True)
        else:
            typer.echo(f"{path}: ok ({len(policy.rules)} rules, targets: {', '.join(policy.targets)})")
    if failed:
        raise typer.Exit(2)


@policy_app.command("explain", short_help="Show the rule a request would match, and why.")
def policy_explain(
    file: PolicyFile,
    confidence: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="The certainty to evaluate at (every target's).")
    ],
    confidence_of: Annotated[
        list[str] | None,
        typer.Option(help="TARGET=P: one target's certainty instead (repeatable), for pick rules."),
    ] = None,
    model: Annotated[str, typer.Option(help="The requested model name.")] = "router",
    user: Annotated[str | None, typer.Option(help="The request's user tag.")] = None,
) -> None:
    """Show which rule a request would match and what the router would do."""
    from policies import Confidences, RemoteTarget

    policy = _load_or_exit(file)
    by_target = {name: confidence for name in policy.targets if policy.scored(name)}
    for given in confidence_of or []:
        name, _, value = given.partition("=")
        if name not in by_target:
            raise typer.BadParameter(
                f"'{name}' is not a target the scorer predicts", param_hint="--confidence-of"
            )
        try:
            by_target[name] = float(value)
        except ValueError as exc:
            raise typer.BadParameter(f"'{given}': not TARGET=P", param_hint="--confidence-of") from exc
    prices = {}
    if any(rule.action == "pick" for rule in policy.rules):
        from router.targets import ANSWERERS

        for name, target in policy.targets.items():
            if isinstance(target, RemoteTarget):  # priced as the router prices it: a price list may apply
                prices[name] = ANSWERERS[target.kind](name, target).price
            else:
                prices[name] = 0.0 if target.cost is None else target.cost.blended

    async def fixed() -> Confidences:
        return Confidences(confidence, by_target)

    decision = asyncio.run(decide(policy, RequestFacts(model, user), fixed, prices=prices))
    index = decision.rule_index
    when = policy.rules[index].when.model_dump(exclude_none=True) or "always"
    action = decision.action + (f" {decision.target}" if decision.target else "")
    typer.echo(f"rule {index} '{decision.rule}' matches (when: {when})")
    typer.echo(f"action: {action} (x-router-decision: {decision.outcome})")
    if decision.message:
        typer.echo(f"message: {decision.message}")
    if decision.confidence is None:
        typer.echo("(this rule does not need a confidence: the request would not be scored)")
