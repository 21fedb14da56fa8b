"""MLflow model-registry webhooks, received: signature, freshness and replay checks.

MLflow (``mlflow/webhooks/delivery.py``, 3.17) signs each delivery with the webhook's secret::

    X-MLflow-Delivery-Id: <uuid4>
    X-MLflow-Timestamp:   <unix seconds>
    X-MLflow-Signature:   v1,<base64(HMAC-SHA256(secret, "{delivery_id}.{timestamp}.{payload}"))>

where ``payload`` is the request body exactly as sent (``json.dumps`` of the envelope
``{entity, action, timestamp, data}``). Verification recomputes the HMAC over the raw body
and compares in constant time; a timestamp more than :data:`TOLERANCE_S` away from now is
refused (replay protection); a delivery id already seen is acknowledged and ignored (MLflow
retries a delivery on 5xx, and an attacker could replay a captured one inside the window).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
TOLERANCE_S = 300
#: The events that can change which check a model needs.
EVENTS: tuple[Literal["model_version.created"], Literal["model_version_alias.created"]] = (
    "model_version.created",
    "model_version_alias.created",
)


class WebhookRefused(Exception):
    """A delivery that must not be acted on; ``status`` is the HTTP answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    """A verified delivery: who sent what about which model."""

    delivery_id: str
    timestamp: int
    event: str  # "<entity>.<action>", e.g. "model_version_alias.created"
    data: dict[str, Any]

    @property
    def model(self) -> str | None:
        name = self.data.get("name")
        return str(name) if name else None


def signature(secret: str, delivery_id: str, timestamp: str, payload: str) -> str:
    """``v1,<base64 HMAC-SHA256>`` as MLflow computes it (for tests and for tools)."""
    content = f"{delivery_id}.{timestamp}.{payload}".encode()
    digest = hmac.new(secret.encode("utf-8"), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def _header(headers: Mapping[str, str], name: str) -> str:
    # Starlette's Headers are case-insensitive; a plain dict from a test may not be.
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return (value or "").strip()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> Delivery:
    """The verified delivery of ``body``; WebhookRefused (401 signature, 400 otherwise).

    The signature is checked before anything else is trusted (the timestamp is part of the
    signed content, so a forged fresh timestamp fails the signature, not the clock check).
    """
    delivery_id = _header(headers, DELIVERY_ID_HEADER)
    stamp = _header(headers, TIMESTAMP_HEADER)
    given = _header(headers, SIGNATURE_HEADER)
    if not secret:
        raise WebhookRefused(401, "webhook secret not configured (CORDWATCH_WEBHOOK_SECRET)")
    if not (delivery_id and stamp and given):
        raise WebhookRefused(401, "missing signature, timestamp or delivery id header")
    try:
        payload = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRefused(400, "body is not UTF-8") from None
    expected = signature(secret, delivery_id, stamp, payload)
    # Standard Webhooks allows several space-separated signatures ("v1,a v1,b").
    if not any(hmac.compare_digest(expected, sig) for sig in given.split()):
        raise WebhookRefused(401, "bad signature")
    if not stamp.isdigit():
        raise WebhookRefused(400, "malformed timestamp")
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance_s:
        raise WebhookRefused(400, f"stale timestamp (more than {tolerance_s} s from now)")
    try:
        envelope = json.loads(payload)
        event = f"{envelope['entity']}.{envelope['action']}"
        data = envelope.get("data") or {}
    except (ValueError, KeyError, TypeError):
        raise WebhookRefused(400, "not an MLflow webhook envelope") from None
    if not isinstance(data, dict):
        raise WebhookRefused(400, "not an MLflow webhook envelope")
    return Delivery(delivery_id, int(stamp), event, data)


class SeenDeliveries:
    """Delivery ids seen in the last ``ttl_s`` seconds (longer than the freshness window, so
    a replay is either stale or remembered). Thread-safe. With ``path``, kept in a small
    sqlite file (``INSERT OR IGNORE`` on a primary key), so a restarted service, or a second
    one on the same host, still knows them; else in memory, bounded."""

    def __init__(
        self, ttl_s: float = 2 * TOLERANCE_S, max_size: int = 100_000, path: Path | None = None
    ) -> None:
        self._ttl = ttl_s
        self._max = max_size
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                path, timeout=10, isolation_level=None, check_same_thread=False
            )
            self._db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, at REAL)")

    def first_time(self, delivery_id: str, now: float | None = None) -> bool:
        """True the first time ``delivery_id`` is offered (and remembers it)."""
        if self._db is not None:
            wall = time.time() if now is None else now
            with self._lock:
                self._db.execute("DELETE FROM seen WHERE at < ?", (wall - self._ttl,))
                cur = self._db.execute(
                    "INSERT OR IGNORE INTO seen (id, at) VALUES (?, ?)", (delivery_id, wall)
                )
                return cur.rowcount == 1
        current = time.monotonic() if now is None else now
        with self._lock:
            while self._seen:
                oldest, when = next(iter(self._seen.items()))
                if current - when <= self._ttl and len(self._seen) < self._max:
                    break
                del self._seen[oldest]
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = current
            return True
