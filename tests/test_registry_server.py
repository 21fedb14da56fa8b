"""The registry at scale: a real PostgreSQL, a real ``mlflow server`` with proxied artifacts in
an S3-compatible store (moto's server), two clients, and eight processes at once.

PostgreSQL comes from Debian's ``postgresql`` package. Without it these tests skip, except
under CI (CI=true), where they fail: .ci/run installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from registry.api import VERDICT_TAG, Registry, connect
from registry.errors import IntegrityError, RegistryError
from registry.lookup import fast_sha256
from registry.manifest import MANIFEST_NAME
from registry.refs import parse_ref
from registry.testing import (
    PostgresServer,
    check_race,
    free_port,
    make_package,
    mlflow_server,
    postgres_bindir,
    postgres_server,
    race,
    zip_package,
)

pytestmark = [pytest.mark.slow]
BUCKET = "cordwatch-artifacts"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} is missing under CI (.ci/run installs it)")
    pytest.skip(f"{what} not installed")


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 with an empty bucket; yields the client environment."""
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        _missing("moto[server] / boto3")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**S3_ENV, "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], **_creds()).create_bucket(
            Bucket=BUCKET
        )
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            yield env
    finally:
        server.stop()


def _creds() -> dict[str, Any]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


def _s3_client(env: dict[str, str]) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=env["MLFLOW_S3_ENDPOINT_URL"], **_creds())


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if postgres_bindir() is None:
        _missing("PostgreSQL (Debian package postgresql)")
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def server(postgres: PostgresServer, s3: dict[str, str]) -> Iterator[str]:
    """``mlflow server`` on PostgreSQL, artifacts proxied to s3://BUCKET/mlflow."""
    with mlflow_server(
        postgres.create_database("mlflow"), f"s3://{BUCKET}/mlflow", workers=2, env=s3
    ) as url:
        yield url


@pytest.fixture()
def client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients of a server need no S3 credentials: the server proxies the artifacts."""
    for key in (*S3_ENV, "MLFLOW_S3_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


@pytest.mark.postgres
def test_two_clients_through_the_server(
    server: str, s3: dict[str, str], tmp_path: Path, client_env: None
) -> None:
    maintainer = connect(server, home=tmp_path / "maintainer")
    ci = connect(server, home=tmp_path / "ci")

    folder = make_package(tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres", folds=("0", "1"))
    release = make_package(tmp_path / "release", folds=("all",), seed=9)
    v1 = maintainer.register("srv", folder, alias="candidate", tags={"task": "sc"})
    v2 = ci.register(
        "srv", zip_package(release, tmp_path / "r.zip"), tags={"parent": "srv@candidate"}
    )
    assert (v1.version, v2.version) == (1, 2) and v2.tags["parent"] == "srv/1"
    assert v1.source.startswith("mlflow-artifacts:/")  # proxied by the server

    # the package really lives in the S3 bucket, byte for byte
    s3c = _s3_client(s3)
    keys = [o["Key"] for o in s3c.list_objects_v2(Bucket=BUCKET)["Contents"]]
    ckpt_keys = [k for k in keys if k.endswith("package/fold_1/checkpoint_final.pth")]
    assert len(ckpt_keys) == 1
    stored = s3c.get_object(Bucket=BUCKET, Key=ckpt_keys[0])["Body"].read()
    assert stored == (folder / "fold_1" / "checkpoint_final.pth").read_bytes()

    assert files_of(ci.pull("srv@candidate")) == files_of(folder)
    assert files_of(maintainer.pull("srv/2")) == files_of(release)
    # the cached pull resolves through the REST API without MLflow, and agrees with it
    assert fast_sha256(ci.settings, parse_ref("srv@candidate")) == (1, v1.sha256)

    ci.set_version_tags("srv/2", {VERDICT_TAG: "pass"})
    assert maintainer.promote("srv/2") is not None
    assert ci.resolve("srv@champion").version == 2
    assert [v.version for v in ci.list_versions("srv")] == [1, 2]
    assert [(e.alias, e.to_version) for e in maintainer.history("srv")] == [
        ("candidate", 1),
        ("champion", 2),
    ]


@pytest.mark.postgres
def test_tampered_object_in_s3_is_refused(
    server: str, s3: dict[str, str], tmp_path: Path, client_env: None
) -> None:
    reg = connect(server, home=tmp_path / "a")
    info = reg.register("srv-tamper", make_package(tmp_path / "p", seed=3))
    prefix = info.source.removeprefix("mlflow-artifacts:/")
    key = f"mlflow/{prefix}/artifacts/package/fold_0/checkpoint_final.pth"
    s3c = _s3_client(s3)
    data = s3c.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3c.put_object(Bucket=BUCKET, Key=key, Body=data[:-1])  # truncated by one byte
    with pytest.raises(IntegrityError, match="truncated") as err:
        connect(server, home=tmp_path / "b").pull("srv-tamper/1")
    assert err.value.path == f"{info.source}/artifacts/package/fold_0/checkpoint_final.pth"


@pytest.mark.postgres
def test_eight_processes_through_the_server(server: str, tmp_path: Path, client_env: None) -> None:
    results = race(server, "srv-race", tmp_path / "race", processes=8)
    check_race(results, server, "srv-race", tmp_path / "reader")


@pytest.mark.postgres
def test_direct_postgres_and_s3_without_a_server(
    postgres: PostgresServer,
    server: str,
    s3: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client may also talk to the database and the bucket itself (here: the server's DB,
    already migrated; the server sees the same versions)."""
    src = make_package(tmp_path / "p", seed=4)
    monkeypatch.delenv("CORDWATCH_ARTIFACT_ROOT", raising=False)
    with pytest.raises(RegistryError, match="CORDWATCH_ARTIFACT_ROOT"):
        connect(postgres.uri("mlflow"), home=tmp_path / "none").register("pg-direct", src)
    monkeypatch.setenv("CORDWATCH_ARTIFACT_ROOT", f"s3://{BUCKET}/direct")
    reg = connect(postgres.uri("mlflow"), home=tmp_path / "direct")
    info = reg.register("pg-direct", src, alias="candidate")
    assert info.source.startswith(f"s3://{BUCKET}/direct/")
    assert files_of(
        connect(postgres.uri("mlflow"), home=tmp_path / "other").pull("pg-direct@candidate")
    ) == files_of(src)
    monkeypatch.delenv("CORDWATCH_ARTIFACT_ROOT")
    via_server: Registry = connect(server, home=tmp_path / "via")
    assert via_server.resolve("pg-direct@candidate").sha256 == info.sha256


def test_embedded_sqlite_with_s3_artifacts(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORDWATCH_ARTIFACT_ROOT", f"s3://{BUCKET}/embedded")
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    src = make_package(tmp_path / "p", folds=("0", "1"), seed=5)
    info = connect(uri, home=tmp_path / "a").register("s3-embedded", src)
    assert info.source.startswith(f"s3://{BUCKET}/embedded/")
    assert not (tmp_path / "artifacts").exists()
    assert files_of(connect(uri, home=tmp_path / "b").pull("s3-embedded/1")) == files_of(src)


@pytest.mark.filterwarnings("ignore:starlette.middleware.wsgi is deprecated")
def test_basic_auth_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mlflow server --app-name basic-auth``: users need credentials; readers cannot write."""
    try:
        import flask_wtf  # noqa: F401 (the basic-auth app needs it: mlflow[auth])
    except ImportError:
        _missing("Flask-WTF (mlflow[auth])")
    ini = tmp_path / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{tmp_path / 'auth.db'}\n"
        "admin_username = admin\n"
        "admin_password = admin-Secret-1\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # one PBKDF2 check per user and minute instead of per request (see docs/registry.md)
        "auth_cache_ttl_seconds = 60\n"
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only"}
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with mlflow_server(
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        (tmp_path / "artifacts").as_uri(),
        workers=1,
        env=env,
        extra_args=["--app-name", "basic-auth"],
    ) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-Secret-1")
        import mlflow.server

        auth = mlflow.server.get_app_client("basic-auth", tracking_uri=url)
        auth.create_user("reader", "reader-Secret-1")
        auth.create_user("ci", "ci-Secret-12345")
        src = make_package(tmp_path / "p", seed=6)
        admin = connect(url, home=tmp_path / "admin")
        info = admin.register("auth-sc", src, alias="candidate")
        admin.promote(info.ref, "champion", force=True, reason="test: first champion")

        # a plain user may create a model of its own, and write to another one once granted
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "ci-Secret-12345")
        ci = connect(url, home=tmp_path / "ci")
        assert ci.register("auth-ci", src, alias="candidate").version == 1
        with pytest.raises(RegistryError, match=r"(?i)permission"):
            ci.register("auth-sc", src)
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # the auth client reads these
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "admin-Secret-1")
        experiment = ci.client.get_experiment_by_name("cordwatch-models/auth-sc").experiment_id
        auth.grant_user_permission("ci", "registered_model", "auth-sc", "EDIT")
        auth.grant_user_permission("ci", "experiment", experiment, "EDIT")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ci")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "ci-Secret-12345")
        assert ci.register("auth-sc", src).version == 2

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reader")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "reader-Secret-1")
        reader = connect(url, home=tmp_path / "reader")
        assert files_of(reader.pull("auth-sc@champion")) == files_of(src)
        # the cached pull's REST lookup sends the same credentials
        assert fast_sha256(reader.settings, parse_ref("auth-sc@champion")) == (1, info.sha256)
        with pytest.raises(RegistryError, match=r"(?i)permission"):
            reader.register("auth-sc", src)

        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        anonymous = connect(url, home=tmp_path / "anon")
        assert fast_sha256(anonymous.settings, parse_ref("auth-sc@champion")) is None
        with pytest.raises(RegistryError, match=r"(?i)unauthenticated|401|credentials"):
            anonymous.resolve("auth-sc@champion")
