"""The dashboard pages and their JSON twins, in process (fake packages, embedded sqlite):
every page renders, user strings are escaped, the JSON twin has the same data.

The real-process, real-browser versions are in test_service_e2e.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from registry.testing import make_package

EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from drift.service.app import create_app
    from drift.service.checks import CheckSettings
    from drift.service.monitor import Monitor
    from registry.api import connect

    base = tmp_path_factory.mktemp("pages")
    reg = connect(f"sqlite:///{base / 'home' / 'registry.db'}", base / "home")
    v1 = reg.register("cs", make_package(base / "a", seed=1), description=EVIL)
    reg.promote(v1.ref, "champion", force=True, reason=EVIL)
    reg.register("cs", make_package(base / "b", seed=2), alias="candidate", tags={"note": EVIL})
    reg.client.update_registered_model("cs", description=EVIL)
    settings = CheckSettings(cohort_ref="phantom", registry_uri=reg.tracking_uri).load()
    monitor = Monitor(reg, settings, poll_s=3600)
    monitor.start = lambda: None  # type: ignore[method-assign] (no worker: pages only)
    with TestClient(create_app(monitor, webhook_secret="s", token="t")) as c:
        yield c


@pytest.mark.parametrize(
    "path", ["/", "/models/cs", "/models/cs/1", "/models/cs/2", "/checks", "/normative/none"]
)
def test_pages_render_and_escape_user_strings(client: Any, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/html")
    assert EVIL not in r.text
    if path in ("/", "/models/cs", "/models/cs/1", "/models/cs/2"):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert "http://" not in r.text.replace("http://testserver", "")  # nothing loaded from elsewhere


def test_json_twins_hold_the_same_data(client: Any) -> None:
    overview = client.get("/api/models").json()
    assert overview["models"][0]["name"] == "cs"
    assert overview["models"][0]["description"] == EVIL  # JSON carries it raw, as data
    assert overview["models"][0]["champion"] == {"version": 1, "verdict": None}
    assert overview["models"][0]["candidate"] == {"version": 2, "verdict": None}
    model = client.get("/api/models/cs").json()
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert model["alias_history"][0]["reason"] == EVIL
    version = client.get("/api/models/cs/2").json()
    assert version["tags"]["note"] == EVIL and len(version["files"]) == 3
    assert client.get("/api/checks").json()["attempts"] == []


def test_unknown_things_are_404_and_bad_names_400(client: Any) -> None:
    assert client.get("/models/nope").status_code == 404
    assert client.get("/api/models/nope").status_code == 404
    assert client.get("/models/cs/9").status_code == 404
    assert client.get("/models/cs/1/report/abc").status_code == 404
    assert client.get("/api/models/%20bad").status_code == 400
