"""``cordwatch serve`` end to end, with real processes on 127.0.0.1: a real ``mlflow server``
(sqlite back end, webhooks allowed to http/loopback in this test only) delivering signed
webhooks to a real ``cordwatch serve`` (uvicorn), the committed demo models, and a small
phantom cohort (3 subjects x T2w; policy min_subjects 3). Nobody calls ``drift check``.

- webhook: demo-biased registered as candidate against demo-good as champion gets verdict
  ``fail`` on the version, on /models/NAME and /api/models/NAME;
- poll alone (no webhook, no secret), two replicas polling every second: the same, checked
  once;
- exactly-once: webhook + poll + a replayed delivery + SIGKILL and restart mid-check give one
  drift run and one verdict for the key;
- refusals (bad signature 401, stale timestamp 400, missing/wrong token 401) and no secret
  in any log line or page;
- the dashboard in Debian's chromium (tests/browser.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.webhooks.delivery import _generate_hmac_signature

from drift.cohort.manifest import PhantomRecipe, write_phantom_manifest
from registry.api import VERDICT_TAG, Registry, connect
from registry.testing import free_port, mlflow_server

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models" / "demo"
SECRET = "whsec-e2e-" + uuid.uuid4().hex
TOKEN = "tok-e2e-" + uuid.uuid4().hex
WEBHOOK_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",  # see a webhook registered after the first event
}


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float, service: Service | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        if service is not None and not service.running:
            break
        time.sleep(0.3)
    tail = service.log_text()[-4000:] if service is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n--- service log ---\n{tail}")


class Service:
    """One ``cordwatch serve`` process (restartable on the same port), logging to a file."""

    def __init__(self, base: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / f"{name}.log"
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120) -> Service:
        cmd = [sys.executable, "-m", "drift.cli.main", "serve", "--host", "127.0.0.1",
               "--port", str(self.port), *self.args]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for("/healthz", lambda: self.get("/healthz")[0] == 200, timeout, self)
        except BaseException:
            self.kill()
            raise
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and "event" in doc:
                    out.append(doc)
        return out

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str]:  # fmt: skip
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=headers or {})  # fmt: skip
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except OSError:
            return 0, ""

    def get(self, path: str) -> tuple[int, str]:
        return self.request("GET", path)

    def json(self, path: str) -> Any:
        status, text = self.get(path)
        assert status == 200, (path, status, text[:500])
        return json.loads(text)

    def deliver(
        self,
        event: str,
        data: dict[str, str],
        *,
        secret: str = SECRET,
        stamp: int | None = None,
        delivery_id: str | None = None,
    ) -> tuple[int, str]:
        """POST a delivery signed exactly as ``mlflow server`` signs it."""
        entity, action = event.rsplit(".", 1)
        payload = json.dumps({"entity": entity, "action": action,
                              "timestamp": "2026-12-02T00:00:00+00:00", "data": data})  # fmt: skip
        delivery_id = delivery_id or str(uuid.uuid4())
        ts = str(int(time.time()) if stamp is None else stamp)
        headers = {
            "Content-Type": "application/json",
            "X-MLflow-Delivery-Id": delivery_id,
            "X-MLflow-Timestamp": ts,
            "X-MLflow-Signature": _generate_hmac_signature(secret, delivery_id, ts, payload),
        }
        return self.request("POST", "/hooks/mlflow", payload.encode(), headers)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("service")
    cohorts = {
        seed: write_phantom_manifest(
            base / "cohorts",
            name=f"phantom-svc{seed}",
            recipe=PhantomRecipe(n_subjects=3, seed=seed, contrasts=("T2w",)),
        )
        for seed in (3,)
    }
    policy = yaml.safe_load((REPO / "reference_data" / "policy.yaml").read_text())
    policy["min_subjects"] = 3
    policy_path = base / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CORDWATCH_"))}
    with mlflow_server(f"sqlite:///{base / 'mlflow.db'}", str(base / "artifacts"), workers=1,
                       env=WEBHOOK_ENV) as url:  # fmt: skip
        reg = connect(url, home=base / "client")
        yield {
            "base": base,
            "url": url,
            "reg": reg,
            "cohorts": cohorts,
            "policy": policy_path,
            "env": {
                **env,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "CORDWATCH_HOME": str(base / "serve-home"),
                "CORDWATCH_TORCH_THREADS": "2",
                "CORDWATCH_WEBHOOK_SECRET": SECRET,
                "CORDWATCH_SERVE_TOKEN": TOKEN,
            },
        }


def serve(world: dict[str, Any], name: str, *extra: str, seed: int = 3,
          env: dict[str, str] | None = None) -> Service:  # fmt: skip
    args = ["--registry", world["url"], "--cohort", str(world["cohorts"][seed]),
            "--policy", str(world["policy"]), "--device", "cpu", *extra]  # fmt: skip
    return Service(world["base"], name, args, env or world["env"])


def register_pair(
    reg: Registry, name: str, description: str = "", champion: str = "demo-good"
) -> None:
    good = reg.register(name, MODELS / champion, description=description or None)
    reg.promote(good.ref, "champion", force=True, reason="test: first champion")
    reg.register(name, MODELS / "demo-biased", alias="candidate")


def drift_runs(reg: Registry, ref: str) -> list[Any]:
    exp = reg.client.get_experiment_by_name("cordwatch-drift")
    if exp is None:
        return []
    return reg.client.search_runs([exp.experiment_id], f"tags.`cordwatch.candidate` = '{ref}'")


def verdict(reg: Registry, ref: str) -> str | None:
    return reg.resolve(ref).tags.get(VERDICT_TAG)


def finished_events(service: Service, ref: str) -> list[dict[str, Any]]:
    return [e for e in service.events() if e["event"] == "finished" and e["candidate"] == ref]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and TOKEN not in text


@pytest.fixture(scope="module")
def hooked(world: dict[str, Any]) -> Iterator[Service]:
    """A service with webhooks and no effective poll (one at start-up, before any model)."""
    svc = serve(world, "hooked", "--poll-seconds", "3600", "--register-webhook").start()
    yield svc
    svc.stop()


def test_webhook_gates_the_candidate(world: dict[str, Any], hooked: Service) -> None:
    reg: Registry = world["reg"]
    register_pair(reg, "wh", description="<script>alert(1)</script>")
    reg.client.update_registered_model("wh", description="<script>alert(1)</script> model")
    wait_for("the check to finish", lambda: finished_events(hooked, "wh/2"), 900, hooked)
    assert verdict(reg, "wh/2") == "fail"
    events = hooked.events()
    received = [e for e in events if e["event"] == "received" and e.get("model") == "wh"]
    assert {e["hook"] for e in received} >= {"model_version_alias.created"}
    claimed = [e for e in events if e["event"] == "claimed"]
    assert len(claimed) == 1 and claimed[0]["trigger"].startswith("webhook:")
    assert claimed[0]["candidate"] == "wh/2" and claimed[0]["baseline"] == "wh/1"
    finished = [e for e in events if e["event"] == "finished"]
    assert finished[0]["verdict"] == "fail" and finished[0]["key"] == claimed[0]["key"]
    assert len(drift_runs(reg, "wh/2")) == 1
    api = hooked.json("/api/models/wh")
    by_version = {v["version"]: v for v in api["versions"]}
    assert by_version[2]["verdict"] == "fail" and by_version[2]["baseline"] == "wh/1"
    assert all(s["scaling_factor"] > 1.01 for s in by_version[2]["area"].values() if s["gated"])
    status, html = hooked.get("/models/wh")
    assert status == 200 and "verdict-fail" in html and 'id="csa-history"' in html
    overview = hooked.json("/api/models")
    row = next(m for m in overview["models"] if m["name"] == "wh")
    assert row["candidate"] == {"version": 2, "verdict": "fail"}


def test_refusals_escaping_and_no_secret_anywhere(world: dict[str, Any], hooked: Service) -> None:
    data = {"name": "wh", "alias": "candidate", "version": "2"}
    event = "model_version_alias.created"
    assert hooked.deliver(event, data, secret="not-the-secret")[0] == 401
    assert hooked.deliver(event, data, stamp=int(time.time()) - 3600)[0] == 400
    replay_id = str(uuid.uuid4())
    assert json.loads(hooked.deliver(event, data, delivery_id=replay_id)[1]) == {"status": "queued"}
    again = hooked.deliver(event, data, delivery_id=replay_id)
    assert again[0] == 200 and json.loads(again[1]) == {"status": "duplicate"}
    assert hooked.request("POST", "/api/checks/wh/rerun")[0] == 401
    wrong = {"Authorization": "Bearer " + TOKEN[:-1]}
    assert hooked.request("POST", "/api/checks/wh/rerun", headers=wrong)[0] == 401
    ok = hooked.request(
        "POST", "/api/checks/wh/rerun", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert ok[0] == 409 and "already has verdict fail" in ok[1]  # exactly once, even by hand
    # The description <script>alert(1)</script> is escaped on every page that shows it.
    pages = [hooked.get(p)[1] for p in ("/", "/models/wh", "/models/wh/1", "/checks",
                                        "/api/models", "/api/checks", "/healthz")]  # fmt: skip
    for html in pages[:3]:
        assert "<script>alert(1)</script>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    time.sleep(1.0)  # let the worker handle the replayed delivery before reading the log
    assert len(drift_runs(world["reg"], "wh/2")) == 1
    assert_no_secret(hooked.log_text(), *pages)


def test_poll_alone_gates_the_candidate_with_two_replicas(world: dict[str, Any]) -> None:
    reg: Registry = world["reg"]
    for hook in reg.client.list_webhooks():
        reg.client.delete_webhook(hook.webhook_id)
    env = {k: v for k, v in world["env"].items() if k != "CORDWATCH_WEBHOOK_SECRET"}
    replicas = [serve(world, f"polled{i}", "--poll-seconds", "1", env=env) for i in (1, 2)]
    try:
        for svc in replicas:
            svc.start()
        register_pair(reg, "pl")
        wait_for("the check to finish",
                 lambda: any(finished_events(svc, "pl/2") for svc in replicas), 900)  # fmt: skip
        time.sleep(4)  # more polls on both replicas: nothing runs again
        assert verdict(reg, "pl/2") == "fail"
        claimed = [e for svc in replicas for e in svc.events() if e["event"] == "claimed"]
        assert [e["trigger"] for e in claimed] == ["poll"]  # one replica, once
        assert not [e for svc in replicas for e in svc.events() if e["event"] == "received"]
        assert len(drift_runs(reg, "pl/2")) == 1
        for svc in replicas:  # both show it
            api = svc.json("/api/models/pl")
            assert {v["version"]: v["verdict"] for v in api["versions"]} == {1: None, 2: "fail"}
            status, html = svc.get("/models/pl")
            assert status == 200 and "verdict-fail" in html
        # With no secret configured, every delivery is refused.
        svc = replicas[0]
        assert svc.deliver("model_version.created", {"name": "pl", "version": "2"})[0] == 401
        for svc in replicas:
            assert_no_secret(svc.log_text())
    finally:
        for svc in replicas:
            svc.stop()


def test_exactly_once_through_webhook_poll_replay_and_sigkill(world: dict[str, Any]) -> None:
    reg: Registry = world["reg"]
    # demo-good-seed2 as champion: its segmentations are not cached yet, so the check is
    # still inferring the baseline when killed (demo-biased's morphometry is reused).
    svc = serve(world, "killed", "--poll-seconds", "2", "--register-webhook").start()
    try:
        register_pair(reg, "ex", champion="demo-good-seed2")
        data = {"name": "ex", "alias": "candidate", "version": "2"}
        replay_id = str(uuid.uuid4())
        assert svc.deliver("model_version_alias.created", data, delivery_id=replay_id)[0] == 200

        def inferring() -> bool:
            attempts = svc.json("/api/checks")["attempts"]
            return any(a["candidate"] == "ex/2" and a["state"] == "running"
                       and ("baseline" in (a["stage"] or "") or "candidate" in (a["stage"] or ""))
                       for a in attempts)  # fmt: skip

        wait_for("the check to be inferring", inferring, 600, svc)
        svc.kill()  # SIGKILL mid-check
        assert verdict(reg, "ex/2") is None and drift_runs(reg, "ex/2") == []
        svc.start()
        # the same delivery again (replayed after the restart: still known) and a new one
        replayed = svc.deliver("model_version_alias.created", data, delivery_id=replay_id)
        assert replayed[0] == 200 and json.loads(replayed[1]) == {"status": "duplicate"}
        svc.deliver("model_version.created", {"name": "ex", "version": "2"})
        wait_for("the check to finish", lambda: finished_events(svc, "ex/2"), 900, svc)
        time.sleep(6)  # a few more polls and the queued deliveries: nothing runs again
        assert verdict(reg, "ex/2") == "fail"
        runs = drift_runs(reg, "ex/2")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        attempts = [a for a in svc.json("/api/checks")["attempts"] if a["candidate"] == "ex/2"]
        states = sorted(a["state"] for a in attempts)
        assert states == ["abandoned", "done"], attempts
        assert len({a["key"] for a in attempts}) == 1
        finished = [e for e in svc.events() if e["event"] == "finished"]
        assert [e["candidate"] for e in finished] == ["ex/2"]
    finally:
        code = svc.stop()
    # graceful SIGTERM: the worker stopped in time, then the CLI's SIGTERM exit code 143
    assert code == 143
    stopped = [e for e in svc.events() if e["event"] == "service-stopped"]
    assert stopped[-1]["clean"] is True
    assert_no_secret(svc.log_text())


def test_dashboard_in_a_real_browser(world: dict[str, Any], hooked: Service) -> None:
    from tests.browser import chromium

    with chromium() as browser:
        browser.open(hooked.url + "/")
        assert "wh" in browser.driver.find_element("id", "models").text
        browser.screenshot("index")
        browser.driver.find_element("link text", "wh").click()
        browser.wait_for_path("/models/wh")
        figure = browser.driver.find_element("id", "csa-history")
        assert figure.is_displayed() and browser.image_loaded(figure)
        assert "fail" in browser.driver.find_element("id", "versions").text
        browser.screenshot("model")
        browser.driver.find_element("link text", "v2").click()
        browser.wait_for_path("/models/wh/2")
        assert "fail" in browser.driver.find_element("tag name", "h1").text
        browser.screenshot("version")
        browser.open(hooked.url + "/checks")
        browser.screenshot("checks")
        assert browser.console_errors() == []
        assert not browser.has_alert()


def test_a_normative_database_follows_the_champion(world: dict[str, Any], tmp_path: Path) -> None:
    from drift.normative.layout import write_synthetic_db
    from drift.normative.store import import_db, list_databases

    reg: Registry = world["reg"]
    good = reg.register("nm", MODELS / "demo-good")
    reg.promote(good.ref, "champion", force=True, reason="test: first champion")
    import_db(write_synthetic_db(tmp_path / "hc", n_subjects=6), "hc-nm", "nm/1", registry=reg)
    env = {k: v for k, v in world["env"].items() if k != "CORDWATCH_WEBHOOK_SECRET"}
    svc = serve(world, "follow", "--poll-seconds", "1", "--normative", "hc-nm", env=env).start()

    def followed() -> list[Any]:
        return [v for v in list_databases(registry=reg) if v.name == "hc-nm" and v.version > 1]

    try:
        reg.register("nm", MODELS / "demo-good", alias="candidate")  # same weights: pass
        wait_for("the check to finish", lambda: finished_events(svc, "nm/2"), 900, svc)
        assert verdict(reg, "nm/2") == "pass"
        time.sleep(2)
        assert followed() == []  # a candidate's pass moves nothing: only a promotion does
        reg.promote("nm/2", "champion", reason="test: through the gate")
        [new] = wait_for("hc-nm/2", followed, 300, svc)
        assert (new.kind, new.model, new.parent) == ("rescale", "nm/2", 1)
        time.sleep(3)  # more polls: exactly one new version
        assert len(followed()) == 1
        updated = [e for e in svc.events() if e["event"] == "normative-updated"]
        assert [e["version"] for e in updated] == ["hc-nm/2"]
        status, html = svc.get("/normative/hc-nm")
        assert status == 200 and "nm/2" in html and "rescale" in html
        assert any(r["state"] == "done" for r in svc.json("/api/checks")["normative"])
    finally:
        svc.stop()
