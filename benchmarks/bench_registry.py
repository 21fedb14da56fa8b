"""Registry timings: register and pull of a 64 MiB package, embedded and via a server, and
the cached pull from the command line.

    .venv/bin/python benchmarks/bench_registry.py [--size-mb 64] [--repeat 5] [--no-server]

Prints one JSON document (medians, min, max in seconds). "Embedded" is the default sqlite
store with a local artifact folder; "server" is ``mlflow server`` on a throw-away PostgreSQL
with proxied artifacts in a local folder (both on this machine, over 127.0.0.1). Each
register/pull is timed in-process (MLflow already imported); a first-time pull uses a fresh
CORDWATCH_HOME each time. The cached pull is also timed as a new process (``python -c`` with
the ``models`` command group, and the full ``cordwatch`` entry point) against ``python -c
pass``: the difference is the cost beyond Python start-up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from registry.api import Registry, connect
from registry.testing import make_package, mlflow_server, postgres_bindir, postgres_server

REPO = Path(__file__).resolve().parents[1]


def summary(times: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(times), 3),
        "min": round(min(times), 3),
        "max": round(max(times), 3),
        "n": len(times),
    }


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def process_time(code: list[str], env: dict[str, str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(code, env=env, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def bench_backend(uri: str | None, package: Path, work: Path, repeat: int) -> dict[str, Any]:
    home = work / "home"
    reg: Registry = connect(uri, home=home)
    uri = reg.tracking_uri  # explicit from here on: other homes must see the same registry
    reg.register("bench", package)  # warm-up: store creation, experiment, model
    versions: list[int] = []
    reg_times = timed(lambda: versions.append(reg.register("bench", package).version), repeat)
    homes = iter(range(10_000))
    ref = f"bench/{versions[-1]}"
    pull_times = timed(lambda: connect(uri, home=work / f"pull{next(homes)}").pull(ref), repeat)
    reg.pull(ref)
    cached = timed(lambda: reg.pull(ref), repeat * 2)

    env = {**os.environ, "CORDWATCH_HOME": str(home), "PYTHONPATH": str(REPO)}
    flag = ["--registry", uri]
    group = "from drift.cli.models import models_app; models_app()"
    bare = process_time([sys.executable, "-c", "pass"], env, repeat * 2)
    group_cli = process_time([sys.executable, "-c", group, *flag, "pull", ref], env, repeat * 2)
    entry = [str(Path(sys.executable).with_name("cordwatch")), "models", *flag, "pull", ref]
    full_cli = process_time(entry, env, repeat * 2)
    return {
        "register": summary(reg_times),
        "pull (download + verify, fresh cache)": summary(pull_times),
        "cached pull in-process": summary(cached),
        "python -c pass": summary(bare),
        "cached pull, models group (new process)": summary(group_cli),
        "cached pull, cordwatch entry point (new process)": summary(full_cli),
        "overhead beyond python start (models group, median)": round(
            statistics.median(group_cli) - statistics.median(bare), 3
        ),
    }


@contextlib.contextmanager
def server(work: Path) -> Iterator[str]:
    with postgres_server() as pg:
        db = pg.create_database("bench")
        with mlflow_server(db, (work / "server-artifacts").as_uri(), workers=2) as url:
            yield url


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=64, help="checkpoint size in MiB")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per timing")
    parser.add_argument("--no-server", action="store_true", help="skip the PostgreSQL server")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        work = Path(tmp)
        package = make_package(work / "pkg", folds=("0",), size=args.size_mb << 20, seed=1)
        results: dict[str, Any] = {
            "package_bytes": sum(p.stat().st_size for p in package.rglob("*") if p.is_file()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
            "embedded sqlite": bench_backend(None, package, work / "embedded", args.repeat),
        }
        if not args.no_server and postgres_bindir() is not None:
            with server(work) as url:
                results["mlflow server + PostgreSQL"] = bench_backend(
                    url, package, work / "server", args.repeat
                )
        results["load_average_after"] = os.getloadavg()
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
