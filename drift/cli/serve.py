"""``cordwatch serve``: the monitoring service (webhooks + poll -> exactly-once drift checks,
and the dashboard). The service itself lives in :mod:`drift.service`; this only parses,
builds and runs it under uvicorn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from drift.cli.common import REGISTRY_HELP, command, quiet_mlflow
from drift.cohort.engine import SCHEDULER_HELP
from registry.errors import InputError

if TYPE_CHECKING:
    from registry.api import Registry

SECRET_ENV = "CORDWATCH_WEBHOOK_SECRET"
TOKEN_ENV = "CORDWATCH_SERVE_TOKEN"
WEBHOOK_NAME = "cordwatch-serve"


@command
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default loopback)."),
    port: int = typer.Option(8050, "--port", help="Port to listen on."),
    registry: str | None = typer.Option(None, "--registry", metavar="URI", help=REGISTRY_HELP),
    cohort: str = typer.Option(
        "phantom",
        "--cohort",
        metavar="MANIFEST",
        help="Frozen cohort manifest the checks run on (path or shipped name).",
    ),
    root: Path | None = typer.Option(
        None,
        "--root",
        metavar="DIR",
        help="Cohort root (default: generated phantom cohort, else $CORDWATCH_COHORT_ROOT).",
    ),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        metavar="FILE",
        help="Gate policy YAML (default: reference_data/policy.yaml).",
    ),
    device: str = typer.Option(
        "auto", "--device", help="Inference device: auto (cuda when present), cpu or cuda."
    ),
    poll_seconds: float = typer.Option(
        30.0,
        "--poll-seconds",
        min=0.5,
        help="Reconciliation poll: every candidate without a verdict for its key is checked.",
    ),
    max_attempts: int = typer.Option(
        3, "--max-attempts", min=1, help="Failed attempts per check before it is given up."
    ),
    register_webhook: bool = typer.Option(
        False,
        "--register-webhook",
        help=f"Create (or update) the MLflow webhook pointing here, signed with ${SECRET_ENV} "
        "(needs an mlflow server on a SQL store).",
    ),
    webhook_url: str | None = typer.Option(
        None,
        "--webhook-url",
        metavar="URL",
        help="URL MLflow should call (behind a reverse proxy); default http://HOST:PORT/hooks/mlflow.",
    ),
    normative: list[str] = typer.Option(
        [],
        "--normative",
        metavar="NAME",
        help="Normative database that follows its model's champion: when a version becomes "
        "champion (promotable under its verdict's policy), NAME gets its next version for it "
        "(repeatable).",
    ),
    normative_mode: str = typer.Option(
        "rescale",
        "--normative-mode",
        help="How a following database is updated: rescale (from the promotion's drift "
        "result) or recompute (segment the --cohort with the new champion).",
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", metavar="local[:N]|tcp://HOST:PORT", help=SCHEDULER_HELP
    ),
) -> None:
    """Run the monitoring service: MLflow webhooks and a poll gate every new candidate once
    per (candidate, baseline, cohort, policy), and a dashboard shows every version's
    morphometry over time. Stops gracefully on SIGTERM / Ctrl-C.

    Secrets come from the environment only: CORDWATCH_WEBHOOK_SECRET (webhook signatures)
    and CORDWATCH_SERVE_TOKEN (needed to re-run a check).
    """
    import uvicorn

    from drift.service.app import create_app
    from drift.service.checks import CheckSettings
    from drift.service.follow import FollowSettings
    from drift.service.monitor import Monitor, log_event, setup_logging
    from registry.api import connect

    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, not {device!r}")
    if scheduler is not None:
        from drift.cohort.engine import parse_scheduler

        parse_scheduler(scheduler)  # a bad --scheduler fails at start-up, not at each check
    if normative_mode not in ("rescale", "recompute"):
        raise InputError(f"--normative-mode must be rescale or recompute, not {normative_mode!r}")
    quiet_mlflow()
    setup_logging()
    secret = os.environ.get(SECRET_ENV) or None
    token = os.environ.get(TOKEN_ENV) or None
    settings = CheckSettings(
        cohort_ref=cohort,
        root=root,
        policy_path=policy,
        device=device,
        registry_uri=registry,
        scheduler=scheduler,
        max_attempts=max_attempts,
    ).load()
    reg = connect(registry)
    if register_webhook:
        if not secret:
            raise InputError(f"--register-webhook needs ${SECRET_ENV} (the signing secret)")
        url = webhook_url or f"http://{host}:{port}/hooks/mlflow"
        ensure_webhook(reg, url, secret)
        log_event("webhook-registered", url=url)
    follow = FollowSettings(tuple(normative), normative_mode)
    monitor = Monitor(reg, settings, poll_s=poll_seconds, follow=follow)
    app = create_app(monitor, webhook_secret=secret, token=token)
    log_event(
        "listening",
        url=f"http://{host}:{port}",
        cohort=cohort,
        cohort_sha256=settings.cohort_sha256,
        policy_sha256=settings.policy_sha256,
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False,
        timeout_graceful_shutdown=10,
    )  # fmt: skip
    uvicorn.Server(config).run()


def ensure_webhook(reg: Registry, url: str, secret: str) -> str:
    """The id of the MLflow webhook calling ``url`` with our events, created or updated."""
    from drift.service.webhooks import EVENTS

    client = reg.client
    for hook in client.list_webhooks(max_results=1000):
        if hook.url == url:
            client.update_webhook(hook.webhook_id, events=[*EVENTS], secret=secret,
                                  status="ACTIVE")  # fmt: skip
            return str(hook.webhook_id)
    hook = client.create_webhook(WEBHOOK_NAME, url, [*EVENTS], secret=secret,
                                 description="cordwatch serve: drift checks")  # fmt: skip
    return str(hook.webhook_id)
