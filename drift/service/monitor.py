"""The service's worker: webhook events and a reconciliation poll feed one queue of model
names; one thread turns each into the check its candidate needs (see :mod:`.checks`).

The queue in memory only says "look at this model soon"; what must be checked is always
recomputed from the registry (the candidate alias, the champion, the verdict tags, the
attempt experiments), so losing the queue (a restart, a lost delivery) loses nothing: the
next poll finds the same work. Logs are one JSON object per line and per event.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from drift.service.checks import CheckSettings, CheckStore, execute
from drift.service.follow import FollowSettings, follow_champion

if TYPE_CHECKING:
    from registry.api import Registry

LOGGER = "cordwatch.service"


class JsonLineFormatter(logging.Formatter):
    """``{"ts": ..., "event": ..., **fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc, default=str, sort_keys=False)


def setup_logging(stream: Any = None) -> logging.Logger:
    """The service logger: JSON lines on stderr (uvicorn's own loggers are left alone)."""
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, "_cordwatch", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonLineFormatter())
        handler._cordwatch = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def log_event(event: str, **fields: Any) -> None:
    """One structured log line (never pass secrets or headers here)."""
    logging.getLogger(LOGGER).info(event, extra={"fields": fields})


def log_warning(event: str, **fields: Any) -> None:
    """One structured warning line."""
    logging.getLogger(LOGGER).warning(event, extra={"fields": fields})


@dataclass
class Pending:
    model: str
    trigger: str
    since: float
    force: bool = False


@dataclass
class Monitor:
    """Queue + worker thread + poll timer."""

    reg: Registry
    settings: CheckSettings
    poll_s: float = 30.0
    follow: FollowSettings = field(default_factory=FollowSettings)
    store: CheckStore = field(init=False)
    stop: threading.Event = field(default_factory=threading.Event)
    pending: dict[str, Pending] = field(default_factory=dict)
    current: dict[str, Any] | None = None
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))
    last_poll: float | None = None
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.store = CheckStore(self.reg, self.settings)

    # -- intake -----------------------------------------------------------------------------
    def enqueue(self, model: str, trigger: str, *, force: bool = False) -> None:
        """Look at ``model`` soon (coalesced: one pending entry per model)."""
        with self._cv:
            old = self.pending.get(model)
            self.pending[model] = Pending(
                model, trigger if old is None else old.trigger, time.time(),
                force or (old is not None and old.force),
            )  # fmt: skip
            self._cv.notify_all()
        log_event("queued", model=model, trigger=trigger)

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cordwatch-worker", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, grace_s: float = 30.0) -> bool:
        """Stop taking work; a running check stops at its next stage (nothing recorded) or,
        when it is already recording, finishes. Returns True when the worker ended in time;
        otherwise the process may exit: the attempt is resumed by the next service."""
        self.stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is None:
            return True
        self._thread.join(grace_s)
        return not self._thread.is_alive()

    def _next(self, next_poll: float) -> list[Pending] | None:
        with self._cv:
            while not self.stop.is_set() and not self.pending and time.time() < next_poll:
                self._cv.wait(min(1.0, max(0.0, next_poll - time.time())))
            if self.stop.is_set():
                return None
            items = list(self.pending.values())
            self.pending.clear()
            return items

    def _loop(self) -> None:
        next_poll = time.time()
        while not self.stop.is_set():
            items = self._next(next_poll)
            if items is None:
                break
            if time.time() >= next_poll:
                next_poll = time.time() + self.poll_s
                items.extend(self._poll_items(items))
            for item in items:
                if self.stop.is_set():
                    break
                try:
                    self.reconcile(item.model, item.trigger, force=item.force)
                except Exception as err:  # the registry was unreachable, etc.: next poll
                    log_warning("error", model=item.model, error=_short(err))

    def _poll_items(self, already: list[Pending]) -> list[Pending]:
        self.last_poll = time.time()
        names = {p.model for p in already}
        found: list[str] = []
        token = None
        try:
            while True:
                page = self.reg.client.search_registered_models(max_results=1000, page_token=token)
                found.extend(m.name for m in page)
                token = page.token
                if not token:
                    break
        except Exception as err:
            log_warning("poll-failed", error=_short(err))
            return []
        return [Pending(name, "poll", time.time()) for name in found if name not in names]

    # -- one model --------------------------------------------------------------------------
    def reconcile(self, model: str, trigger: str, *, force: bool = False) -> str | None:
        """Check ``model``'s candidate if its key has no verdict (and let the normative
        databases follow its champion); returns the attempt's end state, or None when there
        was no check to run."""
        if self.follow.databases:
            try:
                follow_champion(self.reg, model, self.follow, self.settings, log_event)
            except Exception as err:
                log_warning("normative-error", model=model, error=_short(err))
        target = self.store.target(model)
        if target is None:
            return None
        attempt = self.store.claim(target, trigger, force=force)
        if attempt is None:
            return None
        info = {"key": attempt.key, "attempt": attempt.number, "model": model,
                "candidate": target.candidate.ref, "baseline": target.baseline.ref,
                "trigger": trigger, "started": time.time()}  # fmt: skip
        log_event("claimed", **{k: v for k, v in info.items() if k != "started"})
        self.current = info
        try:
            outcome = execute(self.store, target, attempt, stop=self.stop, log=log_event)
        finally:
            self.current = None
        self.recent.appendleft({**info, "state": outcome.state, "verdict": outcome.verdict,
                                "error": outcome.error, "finished": time.time()})  # fmt: skip
        return outcome.state

    def queue_view(self) -> list[dict[str, Any]]:
        with self._cv:
            return [
                {"model": p.model, "trigger": p.trigger, "since": p.since, "force": p.force}
                for p in self.pending.values()
            ]


def _short(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]
