"""Webhook verification against MLflow's own signing function, and the service's refusals.

The signatures here are made by ``mlflow.webhooks.delivery._generate_hmac_signature`` (what
``mlflow server`` sends), so a change in MLflow's scheme fails these tests.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from drift.service.webhooks import (
    DELIVERY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SeenDeliveries,
    WebhookRefused,
    signature,
    verify,
)

SECRET = "s3cret-for-tests-only"


def envelope(event: str = "model_version_alias.created", **data: str) -> str:
    entity, action = event.rsplit(".", 1)
    return json.dumps(
        {"entity": entity, "action": action, "timestamp": "2026-12-02T18:00:00+00:00",
         "data": data or {"name": "cs", "alias": "candidate", "version": "2"}}
    )  # fmt: skip


def signed(payload: str, *, secret: str = SECRET, stamp: int | None = None) -> dict[str, str]:
    delivery_id = str(uuid.uuid4())
    ts = str(int(time.time()) if stamp is None else stamp)
    return {
        "Content-Type": "application/json",
        DELIVERY_ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: ts,
        SIGNATURE_HEADER: _generate_hmac_signature(secret, delivery_id, ts, payload),
    }


def test_our_signature_is_mlflows() -> None:
    assert signature(SECRET, "id-1", "1700000000", '{"a": 1}') == _generate_hmac_signature(
        SECRET, "id-1", "1700000000", '{"a": 1}'
    )


def test_a_delivery_signed_by_mlflow_verifies() -> None:
    payload = envelope()
    delivery = verify(SECRET, signed(payload), payload.encode())
    assert delivery.event == "model_version_alias.created"
    assert delivery.model == "cs"
    assert delivery.data["alias"] == "candidate"


@pytest.mark.parametrize(
    "case", ["wrong secret", "body changed", "id changed", "stamp changed", "no signature"]
)
def test_bad_signatures_are_refused_with_401(case: str) -> None:
    payload = envelope()
    headers = signed(payload, secret="other" if case == "wrong secret" else SECRET)
    body = payload.encode()
    if case == "body changed":
        body = envelope(name="evil").encode()
    elif case == "id changed":
        headers[DELIVERY_ID_HEADER] = str(uuid.uuid4())
    elif case == "stamp changed":
        headers[TIMESTAMP_HEADER] = str(int(headers[TIMESTAMP_HEADER]) + 1)
    elif case == "no signature":
        del headers[SIGNATURE_HEADER]
    with pytest.raises(WebhookRefused) as err:
        verify(SECRET, headers, body)
    assert err.value.status == 401


def test_stale_and_future_timestamps_are_refused() -> None:
    payload = envelope()
    now = time.time()
    for offset in (-301, 301):
        headers = signed(payload, stamp=int(now) + offset)
        with pytest.raises(WebhookRefused) as err:
            verify(SECRET, headers, payload.encode(), now=now)
        assert err.value.status == 400 and "stale" in err.value.reason
    # inside the window: accepted
    verify(SECRET, signed(payload, stamp=int(now) - 299), payload.encode(), now=now)


def test_no_configured_secret_refuses_everything() -> None:
    payload = envelope()
    with pytest.raises(WebhookRefused) as err:
        verify("", signed(payload), payload.encode())
    assert err.value.status == 401


def test_seen_deliveries_remember_within_ttl_and_forget_after() -> None:
    seen = SeenDeliveries(ttl_s=10)
    assert seen.first_time("a", now=0)
    assert not seen.first_time("a", now=5)
    assert seen.first_time("b", now=6)
    assert seen.first_time("a", now=20)  # expired (and a replay that old is stale anyway)


def test_seen_deliveries_on_disk_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "deliveries.sqlite"
    assert SeenDeliveries(ttl_s=600, path=path).first_time("a", now=1000)
    again = SeenDeliveries(ttl_s=600, path=path)  # a restarted service
    assert not again.first_time("a", now=1100)
    assert again.first_time("b", now=1100)
    assert again.first_time("a", now=1700)  # expired


# -- the endpoints, in process (the real-process tests are in test_service_e2e.py) ----------


@pytest.fixture()
def client(cordwatch_home: Path, monkeypatch: pytest.MonkeyPatch):
    from fastapi.testclient import TestClient

    from drift.service.app import create_app
    from drift.service.checks import CheckSettings
    from drift.service.monitor import Monitor
    from registry.api import connect

    reg = connect(None, cordwatch_home)
    reg.client  # noqa: B018 (initialise the sqlite store once, before any thread)
    monitor = Monitor(reg, CheckSettings(cohort_ref="phantom").load(), poll_s=3600)
    monitor.start = lambda: None  # type: ignore[method-assign] (no worker in these tests)
    app = create_app(monitor, webhook_secret=SECRET, token="tok-123")
    with TestClient(app) as c:
        yield c, monitor


def test_endpoint_queues_once_and_refuses_bad_deliveries(client) -> None:
    c, monitor = client
    payload = envelope()
    headers = signed(payload)
    r = c.post("/hooks/mlflow", content=payload, headers=headers)
    assert r.status_code == 200 and r.json() == {"status": "queued"}
    assert [p["model"] for p in monitor.queue_view()] == ["cs"]
    monitor.pending.clear()
    replay = c.post("/hooks/mlflow", content=payload, headers=headers)
    assert replay.status_code == 200 and replay.json() == {"status": "duplicate"}
    bad = dict(signed(payload), **{SIGNATURE_HEADER: "v1,AAAA"})
    assert c.post("/hooks/mlflow", content=payload, headers=bad).status_code == 401
    stale = signed(payload, stamp=int(time.time()) - 600)
    assert c.post("/hooks/mlflow", content=payload, headers=stale).status_code == 400
    assert monitor.queue_view() == []
    other = envelope("model_version_tag.set", name="cs", version="1", key="k", value="v")
    r = c.post("/hooks/mlflow", content=other, headers=signed(other))
    assert r.json() == {"status": "ignored"} and monitor.queue_view() == []


def test_rerun_needs_the_token(client) -> None:
    c, _ = client
    assert c.post("/api/checks/cs/rerun").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert c.post("/api/checks/cs/rerun", headers=wrong).status_code == 401
    ok = c.post("/api/checks/cs/rerun", headers={"Authorization": "Bearer tok-123"})
    assert ok.status_code == 404  # authorised; the model does not exist
    assert c.get("/healthz").status_code in (200, 503)
