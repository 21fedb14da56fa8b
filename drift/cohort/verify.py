"""Verification of a cohort's files against its manifest (sha256 and size of every file)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drift.cohort.manifest import Cohort, CohortFile, CohortItem, Status
from registry.errors import IntegrityError
from registry.fsutil import sha256_file


@dataclass(frozen=True)
class FileCheck:
    """The state of one manifest file under a root."""

    path: str
    kind: str
    subject: str
    contrast: str
    status: Status
    expected_sha256: str
    expected_size: int | None
    actual_sha256: str | None = None
    actual_size: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def describe(self) -> str:
        """One line: ``changed  <path>: <detail>``."""
        return f"{self.status:<8} {self.path}" + (f": {self.detail}" if self.detail else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "subject": self.subject,
            "contrast": self.contrast,
            "status": self.status,
            "detail": self.detail,
            "expected_sha256": self.expected_sha256,
            "expected_size": self.expected_size,
            "actual_sha256": self.actual_sha256,
            "actual_size": self.actual_size,
        }


@dataclass(frozen=True)
class VerifyReport:
    """Every file of a cohort checked under one root (pure data; the CLI formats it)."""

    cohort: str
    manifest: Path
    manifest_sha256: str
    root: Path
    checks: tuple[FileCheck, ...]
    generated: bool = field(default=False)  # a generated cohort (delete the root to rebuild)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> tuple[FileCheck, ...]:
        return tuple(c for c in self.checks if not c.ok)

    @property
    def counts(self) -> dict[str, int]:
        """Files per status (every status present, zero when none)."""
        counts = {"ok": 0, "missing": 0, "changed": 0, "unreadable": 0}
        for check in self.checks:
            counts[check.status] += 1
        return counts

    def summary_line(self) -> str:
        c = self.counts
        line = (
            f"{len(self.checks)} files: {c['ok']} ok, {c['missing']} missing, "
            f"{c['changed']} changed"
        )
        return line + (f", {c['unreadable']} unreadable" if c["unreadable"] else "")

    def raise_for_problems(self) -> None:
        """Raise :class:`IntegrityError` naming the manifest unless every file is ok."""
        problems = self.problems
        if not problems:
            return
        first = problems[0]
        hint = f"; delete {self.root} to regenerate it" if self.generated else ""
        raise IntegrityError(
            f"{len(problems)} of {len(self.checks)} cohort files missing or changed under "
            f"{self.root} (first: {first.path} {first.status}){hint}",
            self.manifest,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "cohort": self.cohort,
            "manifest": str(self.manifest),
            "manifest_sha256": self.manifest_sha256,
            "root": str(self.root),
            "ok": self.ok,
            "counts": self.counts,
            "problems": [c.to_dict() for c in self.problems],
            "files": [c.to_dict() for c in self.checks],
        }


def _owners(cohort: Cohort) -> dict[str, tuple[CohortFile, CohortItem]]:
    owners: dict[str, tuple[CohortFile, CohortItem]] = {}
    for item in cohort.items:
        for f in item.files():
            owners.setdefault(f.path, (f, item))
    return owners


def _check_file(root: Path, f: CohortFile, item: CohortItem) -> FileCheck:
    def result(status: Status, detail: str = "", **actual: Any) -> FileCheck:
        return FileCheck(
            path=f.path,
            kind=f.kind,
            subject=item.subject,
            contrast=item.contrast,
            status=status,
            expected_sha256=f.sha256,
            expected_size=f.size,
            detail=detail,
            **actual,
        )

    target = f.locate(root)
    try:
        if not target.is_file():
            if target.is_symlink():
                return result("missing", "broken link (git-annex content not fetched?)")
            return result("missing", "not a file" if target.exists() else "")
        size = target.stat().st_size
        if f.size is not None and size != f.size:
            return result("changed", f"size {size} != {f.size} bytes", actual_size=size)
        digest = sha256_file(target)
    except OSError as err:
        return result("unreadable", err.strerror or str(err))
    if digest != f.sha256:
        return result(
            "changed",
            f"sha256 {digest[:12]}... != {f.sha256[:12]}...",
            actual_sha256=digest,
            actual_size=size,
        )
    return result("ok", actual_sha256=digest, actual_size=size)


def verify_cohort(
    cohort: Cohort,
    root: str | Path,
    *,
    on_file: Callable[[FileCheck], None] | None = None,
    workers: int = 4,
) -> VerifyReport:
    """Check every distinct file of ``cohort`` under ``root``: ok, missing, changed, unreadable.

    ``changed`` means a different size (when the manifest records one; the file is then not
    hashed) or a different sha256. Never raises for file problems; the report says what is
    wrong (:meth:`VerifyReport.raise_for_problems` turns it into an error). ``on_file`` is
    called once per file, in manifest order (a progress bar); files are hashed by
    ``workers`` threads (hashlib releases the GIL).
    """
    root = Path(root)
    owners = list(_owners(cohort).values())
    checks: list[FileCheck] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for check in pool.map(lambda pair: _check_file(root, *pair), owners):
            checks.append(check)
            if on_file is not None:
                on_file(check)
    return VerifyReport(
        cohort=cohort.name,
        manifest=cohort.manifest,
        manifest_sha256=cohort.manifest_sha256,
        root=root,
        checks=tuple(checks),
        generated=cohort.is_generated,
    )


# --------------------------------------------------------------------------------------------
# Writing manifests (maintainers: how the shipped ones are made)
# --------------------------------------------------------------------------------------------
