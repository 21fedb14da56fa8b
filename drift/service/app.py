"""The FastAPI application of ``cordwatch serve``: the webhook receiver, the dashboard pages
(Jinja2, autoescaped, no CDN, no script) and their JSON twins under ``/api``.

State-changing endpoints (re-running a check) need ``Authorization: Bearer <token>`` with the
token of ``CORDWATCH_SERVE_TOKEN`` (refused outright when it is not set). Neither the token nor
the webhook secret is ever logged, echoed or rendered.
"""

from __future__ import annotations

import contextlib
import hmac
import urllib.parse
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from drift import __version__
from drift.service import views
from drift.service.monitor import log_event
from drift.service.webhooks import EVENTS, SeenDeliveries, WebhookRefused, verify
from registry.errors import CordwatchError, InputError
from registry.refs import check_model_name

if TYPE_CHECKING:
    import jinja2

    from drift.service.monitor import Monitor

TEMPLATES = Path(__file__).with_name("templates")


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every user string (names, descriptions, tags) is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env


def _when(value: Any) -> str:
    if value in (None, ""):
        return ""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value).replace("T", " ")[:19] + " UTC"


def _pct(factor: Any) -> str:
    return "n/a" if factor is None else f"{(float(factor) - 1) * 100:+.2f} %"


def _num(value: Any, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(float(value), spec)


def _status_of(err: CordwatchError) -> int:
    if isinstance(err, InputError):
        return 400
    return 404 if "not found" in err.message.lower() else 502


def create_app(
    monitor: Monitor,
    *,
    webhook_secret: str | None,
    token: str | None,
    shutdown_grace_s: float = 30.0,
) -> FastAPI:
    """The service app around a (not yet started) :class:`Monitor`; the lifespan starts the
    worker and, on SIGTERM (uvicorn), stops it gracefully."""
    env = _environment()
    reg = monitor.reg
    seen = SeenDeliveries(path=reg.settings.home / "service" / "deliveries.sqlite")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        monitor.start()
        log_event("service-started", registry=reg.settings.redacted_uri,
                  webhooks=bool(webhook_secret), token=bool(token),
                  poll_seconds=monitor.poll_s)  # fmt: skip
        yield
        log_event("shutdown", running=(monitor.current or {}).get("key"))
        clean = monitor.shutdown(shutdown_grace_s)
        log_event("service-stopped", clean=clean)

    app = FastAPI(
        title="cordwatch",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN: the schema alone is served
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )

    def page(template: str, code: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(version=__version__, **context)
        return HTMLResponse(html, status_code=code)

    def wants_json(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(CordwatchError)
    async def cordwatch_error(request: Request, err: CordwatchError) -> Response:
        status = _status_of(err)
        if wants_json(request):
            return JSONResponse({"error": str(err)}, status_code=status)
        return page("error.html", status, message=str(err), status=status)

    def mlflow_guard(fn: Callable[[], Any]) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return fn()
        except MlflowException as err:
            if err.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise CordwatchError(f"not found: {err.message.splitlines()[0]}") from err
            raise CordwatchError(err.message.splitlines()[0][:300]) from err

    def authorised(request: Request, given: str | None = None) -> int | None:
        """None when the request carries the service token, else the HTTP status to answer."""
        if not token:
            return 403  # state changes are disabled without a configured token
        if given is None:
            auth = request.headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return 401
        return None

    # -- operations -------------------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> JSONResponse:
        ok = monitor.alive
        return JSONResponse(
            {"status": "ok" if ok else "worker stopped", "version": __version__,
             "worker_alive": ok, "last_poll": monitor.last_poll},
            status_code=200 if ok else 503,
        )  # fmt: skip

    # -- webhooks ---------------------------------------------------------------------------
    @app.post("/hooks/mlflow")
    async def mlflow_hook(request: Request) -> JSONResponse:
        body = await request.body()
        delivery_id = request.headers.get("x-mlflow-delivery-id", "")[:80]
        try:
            delivery = verify(webhook_secret or "", request.headers, body)
        except WebhookRefused as err:
            log_event("refused", delivery_id=delivery_id, status=err.status, reason=err.reason)
            return JSONResponse({"error": err.reason}, status_code=err.status)
        fields = {"delivery_id": delivery.delivery_id, "hook": delivery.event,
                  "model": delivery.model}  # fmt: skip
        if not seen.first_time(delivery.delivery_id):
            log_event("duplicate", **fields)
            return JSONResponse({"status": "duplicate"})
        log_event("received", **fields)
        if delivery.event not in EVENTS or not delivery.model:
            return JSONResponse({"status": "ignored"})
        monitor.enqueue(delivery.model, f"webhook:{delivery.event}")
        return JSONResponse({"status": "queued"})

    # -- pages and their JSON twins ---------------------------------------------------------
    @app.get("/api/models")
    def api_models() -> dict[str, Any]:
        return dict(mlflow_guard(lambda: views.overview(reg, monitor)))

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return page("index.html", data=mlflow_guard(lambda: views.overview(reg, monitor)))

    @app.get("/api/models/{name}")
    def api_model(name: str) -> dict[str, Any]:
        check_model_name(name)
        return dict(mlflow_guard(lambda: views.model_page(reg, name)))

    @app.get("/models/{name}", response_class=HTMLResponse)
    def model(name: str) -> HTMLResponse:
        check_model_name(name)
        data = mlflow_guard(lambda: views.model_page(reg, name))
        return page("model.html", data=data, figure=views.csa_figure_png(data["csa_history"]))

    @app.get("/api/models/{name}/{version}")
    def api_version(name: str, version: int) -> dict[str, Any]:
        check_model_name(name)
        return dict(mlflow_guard(lambda: views.version_page(reg, name, version)))

    @app.get("/models/{name}/{version}", response_class=HTMLResponse)
    def version_view(name: str, version: int) -> HTMLResponse:
        check_model_name(name)
        return page(
            "version.html", data=mlflow_guard(lambda: views.version_page(reg, name, version))
        )

    @app.get("/models/{name}/{version}/report/{run_id}", response_class=HTMLResponse)
    def report(name: str, version: int, run_id: str) -> Response:
        check_model_name(name)
        runs = mlflow_guard(lambda: views.drift_runs(reg, f"{name}/{version}"))
        if run_id not in {r["run_id"] for r in runs}:
            raise CordwatchError(f"not found: drift run {run_id} of {name}/{version}")
        html = views.report_html(reg, run_id)
        if html is None:
            raise CordwatchError(f"not found: report of drift run {run_id}")
        # The report is our own self-contained HTML (escaped by drift.gate.report); it may
        # not run scripts or load anything from elsewhere.
        csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    @app.get("/api/checks")
    def api_checks() -> dict[str, Any]:
        return dict(mlflow_guard(lambda: views.checks_page(monitor)))

    @app.get("/checks", response_class=HTMLResponse)
    def checks(request: Request) -> HTMLResponse:
        note = request.query_params.get("note", "")[:200]
        return page("checks.html", data=mlflow_guard(lambda: views.checks_page(monitor)), note=note)

    @app.get("/api/normative/{name}")
    def api_normative(name: str) -> dict[str, Any]:
        return dict(mlflow_guard(lambda: views.normative_page(reg, name)))

    @app.get("/normative/{name}", response_class=HTMLResponse)
    def normative(name: str) -> HTMLResponse:
        return page("normative.html", data=mlflow_guard(lambda: views.normative_page(reg, name)))

    # -- state changes (token) --------------------------------------------------------------
    def rerun(name: str) -> tuple[int, dict[str, Any]]:
        check_model_name(name)
        target = mlflow_guard(lambda: monitor.store.target(name))
        if target is None:
            return 409, {"error": f"{name} has no candidate and champion to compare"}
        verdict = monitor.store.verdict_for(target)
        if verdict is not None:
            return 409, {"error": f"{target.candidate.ref} already has verdict {verdict} "
                                  "for this key", "key": target.key.digest}  # fmt: skip
        monitor.enqueue(name, "manual", force=True)
        return 202, {"status": "queued", "key": target.key.digest}

    @app.post("/api/checks/{name}/rerun")
    def api_rerun(name: str, request: Request) -> JSONResponse:
        refused = authorised(request)
        if refused is not None:
            log_event("refused", action="rerun", model=name, status=refused)
            return JSONResponse({"error": "a valid service token is needed"}, status_code=refused)
        status, doc = rerun(name)
        return JSONResponse(doc, status_code=status)

    @app.post("/checks/rerun")
    async def form_rerun(request: Request) -> Response:
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        name = (form.get("model") or [""])[0]
        refused = authorised(request, (form.get("token") or [""])[0])
        if refused is not None:
            log_event("refused", action="rerun", model=name[:200], status=refused)
            return page("error.html", refused, message="a valid service token is needed",
                        status=refused)  # fmt: skip
        _status, doc = rerun(name)
        note = doc.get("error") or f"re-run of {name} queued"
        query = urllib.parse.urlencode({"note": note})
        return RedirectResponse(f"/checks?{query}", status_code=303)

    return app
