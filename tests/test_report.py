"""drift.gate.report: self-contained HTML, Markdown summary, figures, numeric version order."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg
from PIL import Image

from drift.gate import figures_light, report
from drift.gate.policy import DriftResult, drift_result
from registry.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tables(
    scale_c4: float = 1.0, n_subjects: int = 10, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two contrasts x C2..T1 x 4 slices; candidate = baseline x 1 % noise, area C4 scaled."""
    rng = np.random.default_rng(seed)
    rows = [
        (f"sub-{s:02d}", c, lev, (20 - lev) * 4 + k)
        for s in range(n_subjects)
        for c in ("T1w", "T2w")
        for lev in range(2, 9)
        for k in range(4)
    ]
    base = pd.DataFrame(rows, columns=["subject", "contrast", "level", "slice"])
    size = np.exp(rng.normal(0, 0.1, n_subjects))[base["subject"].str[4:].astype(int)]
    base["area"] = 75.0 * size * np.exp(rng.normal(0, 0.02, len(base)))
    base["diameter_AP"] = 8.0 * np.sqrt(size)
    base["diameter_RL"] = 12.0 * np.sqrt(size)
    cand = base.copy()
    cand["area"] *= np.exp(rng.normal(0, 0.003, len(base))) * np.where(
        base["level"] == 4, scale_c4, 1.0
    )
    return base, cand


@pytest.fixture(scope="module")
def failing() -> tuple[DriftResult, pd.DataFrame, pd.DataFrame]:
    base, cand = tables(scale_c4=0.97)
    res = drift_result(base, cand, provenance={"baseline": "demo@1", "candidate": "demo@2"})
    assert res.verdict == "fail"
    return res, base, cand


HISTORY = pd.DataFrame(
    {
        "version": ["v10", "v2", "v9", "v1"] * 2,
        "level": [3] * 4 + ["C4"] * 4,
        "area": [70.0, 72.0, 71.0, 73.0, 80.0, 82.0, 81.0, 83.0],
    }
)


def test_history_is_ordered_by_version_number_not_text() -> None:
    h = report.history_order(HISTORY)
    assert h["version"].tolist() == ["v1", "v1", "v2", "v2", "v9", "v9", "v10", "v10"]
    assert h["level_name"].tolist()[:2] == ["C3", "C4"]
    ints = pd.DataFrame({"version": [10, 2, 1], "level": 3, "area": [1.0, 2.0, 3.0]})
    assert report.history_order(ints)["version_number"].tolist() == [1, 2, 10]
    with pytest.raises(InputError, match="'beta' is not a version number"):
        report.history_order(pd.DataFrame({"version": ["beta"], "level": [3], "area": [1.0]}))
    with pytest.raises(InputError, match="missing column"):
        report.history_order(HISTORY.drop(columns="area"))


def test_history_figure_puts_v10_after_v2() -> None:
    fig = report.figure_history(HISTORY)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["v1", "v2", "v9", "v10"]
    # The C3 line visits the versions in that order: 73, 72, 71, 70, on a numeric version
    # axis (issue 13: x is the version number, not the rank).
    c3 = next(line for line in ax.get_lines() if line.get_label() == "C3")
    assert list(c3.get_xdata()) == [1, 2, 9, 10]
    assert list(c3.get_ydata()) == [73.0, 72.0, 71.0, 70.0]


def _report_figures(res: DriftResult, base: pd.DataFrame, cand: pd.DataFrame) -> dict[str, Any]:
    return {
        "scaling_levels": report.figure_scaling_levels(res),
        "slice_profile": report.figure_slice_profile(res),
        "bland_altman": report.figure_bland_altman(res, "area"),
        "by_contrast": report.figure_by_contrast(base, cand, "area"),
        "history": report.figure_history(HISTORY, highlight={"baseline": 2, "candidate": 10}),
    }


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_figure_texts_are_drawn_inside_apart_and_off_the_data(failing) -> None:
    # The figures' words are drawn by Pillow (figures_light), not matplotlib: every text
    # lies inside the image, none on another, and no tick label, axis label or legend
    # entry on a data area (issue 13: legends that hide nothing).
    res, base, cand = failing
    for name, fig in _report_figures(res, base, cand).items():
        boxes = figures_light.text_boxes(fig)
        width, height = fig.bbox.width, fig.bbox.height
        for _, text, box in boxes:
            assert box[0] >= 0 and box[1] >= 0, (name, text)
            assert box[2] <= width and box[3] <= height, (name, text)
        for i, (_, text, box) in enumerate(boxes):
            for _, other, box2 in boxes[i + 1 :]:
                assert not _overlap(box, box2), (name, text, other)
        data = [(b.x0, height - b.y1, b.x1, height - b.y0) for b in (ax.bbox for ax in fig.axes)]
        for role, text, box in boxes:
            if role != "text":
                assert not any(_overlap(box, d) for d in data), (name, role, text)
        # What is drawn is where text_boxes says: dark pixels in every box.
        png = np.asarray(Image.open(io.BytesIO(report.figure_png(fig))).convert("L"))
        for role, text, box in boxes:
            x0, y0, x1, y1 = (round(v) for v in box)
            assert png[y0:y1, x0:x1].min() < 100, (name, role, text)
    texts = {
        name: [t for _, t, _ in figures_light.text_boxes(fig)]
        for name, fig in _report_figures(res, base, cand).items()
    }
    # Units in the axis labels, every legend entry, the history's versions in number order.
    assert "area (mm²)\nsubject level means" in texts["by_contrast"]
    assert "candidate - baseline (mm²)" in texts["bland_altman"]
    assert "scaling factor (unitless)\ncandidate / baseline, 95 % CI" in texts["scaling_levels"]
    assert {"pass", "fail", "within ±warn margin", "fail margin"} <= set(texts["scaling_levels"])
    assert {"baseline", "candidate", "median (dot), IQR (thick), range (thin)"} <= set(
        texts["by_contrast"]
    )
    hist = texts["history"]
    assert [t for t in hist if t.startswith("v")] == ["v1", "v2", "v9", "v10"]
    assert {"level", "C3", "C4", "baseline v2", "candidate v10"} <= set(hist)


def test_figures_create_no_matplotlib_ticks(failing) -> None:
    # A matplotlib Tick is five artists (~4 ms each to make and draw, most of the report's
    # time before figures_light): encoding makes none beyond the one per axis that
    # matplotlib creates with the axes; the tick labels are still matplotlib's.
    res, base, cand = failing
    for name, fig in _report_figures(res, base, cand).items():
        report.figure_png(fig)
        for ax in fig.axes:
            assert len(ax.xaxis.majorTicks) <= 1 and len(ax.yaxis.majorTicks) <= 1, name
    assert report.figure_png(report.figure_history(HISTORY)).startswith(PNG_MAGIC)


def test_write_report_files(tmp_path: Path, failing) -> None:
    res, base, cand = failing
    out = tmp_path / "report"
    paths = report.write_report(
        res, out, baseline_table=base, candidate_table=cand, history=HISTORY
    )
    assert {"html", "markdown", "json"} <= set(paths)
    figs = {k: p for k, p in paths.items() if k.startswith("figure:")}
    assert set(figs) == {
        "figure:scaling_levels",
        "figure:slice_profile",
        "figure:bland_altman:area",
        "figure:by_contrast:area",
        "figure:history:area",
    }
    for p in paths.values():
        assert p.is_file() and p.parent.is_relative_to(out)
    for p in figs.values():
        data = p.read_bytes()
        assert data.startswith(PNG_MAGIC)
        h, w, _ = mpimg.imread(io.BytesIO(data)).shape
        assert w >= 300 and h >= 200
    # No temp files left behind.
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    doc = json.loads(paths["json"].read_text())
    assert doc == json.loads(json.dumps(res.to_dict()))


def test_html_is_self_contained(tmp_path: Path, failing) -> None:
    res, base, cand = failing
    paths = report.write_report(res, tmp_path, baseline_table=base, candidate_table=cand)
    page = paths["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    # Every image is inline; no external script, stylesheet, font or image.
    srcs = re.findall(r"""src=['"]([^'"]*)""", page)
    assert len(srcs) == 4 and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1]).startswith(PNG_MAGIC)
    assert not re.search(r"""(href|src)=['"]?(https?:|//|/)""", page)
    assert "<script" not in page and "<link" not in page
    assert "class='verdict fail'" in page
    assert re.search(r"area C4: scaling 0\.9[67]\d\d outside ±1\.0 %", page)
    assert "demo@2" in page  # provenance


def test_markdown_summary_verdict_first(failing) -> None:
    res, _, _ = failing
    md = report.markdown_summary(res, {"run": "ci-42"})
    lines = md.splitlines()
    assert lines[0] == "## cordwatch drift: ❌ FAIL"
    assert lines[2].startswith("**Verdict: fail** — 1 failing")
    fail_at = lines.index("### Failing conditions")
    assert re.match(
        r"- area C4: scaling 0\.9[67]\d\d outside ±1\.0 % \(TOST p=1 >= 0\.05\)$",
        lines[fail_at + 2],
    )
    table = [ln for ln in lines if ln.startswith("| area |")]
    assert [ln.split("|")[2].strip() for ln in table] == ["C2", "C3", "C4", "C5", "C6", "C7", "T1"]
    c4 = next(ln for ln in table if "| C4 |" in ln)
    assert c4.rstrip().endswith("| fail |")
    assert "`ci-42`" in md and "`demo@1`" in md


def test_passing_summary(tmp_path: Path) -> None:
    base, cand = tables()
    res = drift_result(base, cand)
    md = report.markdown_summary(res)
    assert md.splitlines()[0] == "## cordwatch drift: ✅ PASS"
    assert "### Failing conditions" not in md


def test_nothing_written_when_rendering_fails(tmp_path: Path, failing) -> None:
    res, base, cand = failing
    out = tmp_path / "never"
    bad_history = HISTORY.assign(version=["x"] * len(HISTORY))
    with pytest.raises(InputError):
        report.write_report(
            res, out, baseline_table=base, candidate_table=cand, history=bad_history
        )
    assert not out.exists()


def test_write_json_is_strict_json(tmp_path: Path) -> None:
    base, cand = tables(n_subjects=6)
    res = drift_result(base, cand)
    path = report.write_json(res, tmp_path / "r.json", provenance={"extra": Path("/x")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    doc = json.loads(text)
    assert doc["verdict"] == res.verdict and doc["provenance"]["extra"] == "/x"


def test_floating_point_noise_is_ties_and_ba_has_a_sensible_scale() -> None:
    # A re-saved candidate: the same values up to summation-order noise (~1e-15 relative).
    base, _ = tables(n_subjects=12)
    noise = np.random.default_rng(3).normal(0, 1e-15, len(base))
    cand = base.assign(area=base["area"] * (1 + noise))
    res = drift_result(base, cand)
    area = res.comparison.levels[res.comparison.levels["metric"] == "area"]
    assert (area["wilcoxon_p"] == 1.0).all()  # ties, not p = 0.3-0.7 from noise
    assert (area["ba_bias"] == 0).all() and (area["ba_loa_high"] == 0).all()
    fig = report.figure_bland_altman(res, "area")
    lo, hi = fig.axes[0].get_ylim()
    # Never scaled to the noise: at least half the ±1 % fail margin of a ~75 mm² cord.
    assert hi > 0.3 and lo < -0.3


def test_identical_weights_are_said_first(tmp_path: Path) -> None:
    base, _ = tables(n_subjects=6)
    sha = "ab" * 32
    prov = {
        "baseline": {"ref": "cordseg/1", "sha256": sha, "aliases": ["champion"]},
        "candidate": {"ref": "cordseg/2", "sha256": sha, "aliases": ["candidate"]},
        "identical_weights": True,
    }
    res = drift_result(base, base.copy(), provenance=prov)
    assert res.verdict == "pass"
    lv = res.comparison.levels
    assert (lv["scaling_factor"] == 1.0).all() and (lv["ba_bias"] == 0).all()
    page = report.html_report(res, {})
    assert "Identical weights" in page.split("id='attention'")[0]
    md = report.markdown_summary(res)
    assert "**Identical weights**" in md
    assert "promotable: the verdict is pass; run: `cordwatch models promote cordseg/2`" in md


def test_first_screen_names_versions_cohort_policy_next_and_dice() -> None:
    base, cand = tables(scale_c4=0.97)
    dice = pd.DataFrame(
        [
            (f"sub-{s:02d}", c, v, 0.9)
            for s in range(10)
            for c in ("T1w", "T2w")
            for v in ("baseline", "candidate")
        ],
        columns=["subject", "contrast", "version", "dice"],
    )
    prov = {
        "baseline": {
            "ref": "cordseg/2",
            "sha256": "a" * 64,
            "aliases": ["champion"],
            "registered_by": "alice",
            "created": "2026-12-01T10:00:00+00:00",
            "description": "the <b>champion</b>",
        },
        "candidate": {
            "ref": "cordseg/4",
            "sha256": "b" * 64,
            "aliases": ["candidate"],
            "registered_by": "bob",
            "created": "2026-12-02T09:30:00+00:00",
            "description": "re-train | seed 2",
        },
        "cohort": {"cohort": "phantom", "cohort_manifest_sha256": "c" * 64},
    }
    res = drift_result(base, cand, dice=dice, provenance=prov)
    page = report.html_report(res, {})
    first = page.split("id='attention'")[0]
    for text in (
        "cordseg/4",
        "cordseg/2",
        "champion",
        "bbbbbbbbbbbb",
        "bob, 2026-12-02 09:30 UTC",
        "phantom: 10 subjects x 2 contrasts",
        "cccccccccccc",
        "area ±1 % fail",
        "not promotable because 1 gate condition(s) fail",
        "0.900",
    ):
        assert text in first, text
    assert "the &lt;b&gt;champion&lt;/b&gt;" in first  # autoescaped
    # Passing conditions are collapsed; the failing one is grouped under its metric.
    attention, passing = page.split("id='attention'")[1].split("<details id='passing'>", 1)
    assert "area C4: scaling" in attention and "coverage" not in attention
    assert "41 passing condition(s)" in passing
    assert page.index("id='glossary'") > page.index("id='figures'")
    md = report.markdown_summary(res)
    assert "| candidate | `cordseg/4` | candidate | `bbbbbbbbbbbb` |" in md
    assert "re-train \\| seed 2" in md and "the &lt;b>champion&lt;/b>" in md


def test_warn_is_not_promotable_by_default() -> None:
    base, cand = tables(scale_c4=0.9935, n_subjects=12)
    prov = {
        "candidate": {"ref": "cordseg/3", "sha256": "b" * 64},
        "baseline": {"ref": "cordseg/2", "sha256": "a" * 64},
    }
    res = drift_result(base, cand, provenance=prov)
    assert res.verdict == "warn" and res.exit_code == 0
    nxt = report.next_step(res, "cordseg/3")
    assert not nxt["promotable"]
    assert "the verdict is warn" in nxt["text"] and "promotes only pass" in nxt["text"]
    assert nxt["command"] == 'cordwatch models promote cordseg/3 --force --reason "..."'


def test_markdown_escapes_user_strings() -> None:
    base, cand = tables(n_subjects=6)
    prov = {"candidate": {"ref": "x/2", "description": "<img src=x onerror=alert(1)>"}}
    md = report.markdown_summary(drift_result(base, cand, provenance=prov))
    # Outside code spans (where nothing is HTML) every "<" is escaped.
    outside = re.sub(r"`[^`\n]*`", "", md)
    assert "<img" not in outside and "&lt;img src=x" in outside


def test_qc_targets_and_images(tmp_path: Path, failing) -> None:
    from drift.gate import qc

    res, base, cand = failing
    targets = qc.qc_targets(res, per_level=2)
    failing_c4 = [t for t in targets if t.reason == "failing level"]
    assert [t.level for t in failing_c4] == [4, 4]  # the two largest changes at C4
    subj = res.comparison.subjects
    c4 = subj[(subj["metric"] == "area") & (subj["level"] == 4)]
    largest = c4.assign(a=c4["log_ratio"].abs()).nlargest(2, "a")["subject"].tolist()
    assert [t.subject for t in failing_c4] == largest
    # An axial slice with two contours: a disc and a 3 % larger disc.
    yy, xx = np.mgrid[:40, :40]
    r2 = (xx - 20.0) ** 2 + (yy - 20.0) ** 2
    b = np.repeat((r2 < 25)[:, :, None], 5, axis=2).astype(float)
    c = np.repeat((r2 < 26.5)[:, :, None], 5, axis=2).astype(float)
    z = qc.worst_slice(b, c, np.array([3, 3, 4, 4, 5]), 4)
    assert z == 2
    png = qc.qc_image(
        np.random.default_rng(0).random((40, 40, 5)),
        b,
        c,
        z,
        title="t",
        labels={"baseline": "cs/1", "candidate": "cs/2"},
    )
    assert png.startswith(PNG_MAGIC)
    paths = report.write_report(
        res,
        tmp_path,
        baseline_table=base,
        candidate_table=cand,
        qc={"C4_sub-01_T2w": ("sub-01 T2w, C4, slice 2", png)},
    )
    assert paths["qc:C4_sub-01_T2w"].read_bytes() == png
    page = paths["html"].read_text()
    assert "id='qc'" in page and "sub-01 T2w, C4, slice 2" in page
    assert "[sub-01 T2w, C4, slice 2](qc/C4_sub-01_T2w.png)" in paths["markdown"].read_text()


def test_docs_api_examples() -> None:
    import doctest

    api = Path(__file__).resolve().parents[1] / "docs" / "api.md"
    res = doctest.testfile(str(api), module_relative=False, optionflags=doctest.ELLIPSIS)
    assert res.attempted > 20 and res.failed == 0


@pytest.mark.slow
def test_qc_images_from_phantom_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nibabel as nib
    from scipy import ndimage

    from drift.cohort.evaluate import measure_cohort
    from drift.cohort.manifest import PhantomRecipe, load_cohort, write_phantom_manifest
    from drift.cohort.roots import ensure_root
    from drift.gate import qc

    monkeypatch.setenv("CORDWATCH_HOME", str(tmp_path / "home"))
    recipe = PhantomRecipe(n_subjects=5, seed=3, contrasts=("T2w",))
    cohort = load_cohort(write_phantom_manifest(tmp_path / "c", name="qc-small", recipe=recipe))
    root = ensure_root(cohort, None)
    paths: dict[str, dict[str, Path]] = {"baseline": {}, "candidate": {}}
    for it in cohort.items:  # the candidate dilates sub-phantom01's cord by one voxel
        img = nib.load(it.gt_seg.locate(root))
        seg = np.asarray(img.dataobj) > 0.5
        grown = ndimage.binary_dilation(seg) if it.subject.endswith("01") else seg
        for role, data in (("baseline", seg), ("candidate", grown)):
            p = tmp_path / f"{it.subject}_{role}.nii.gz"
            nib.save(nib.Nifti1Image(data.astype(np.uint8), img.affine), p)
            paths[role][f"{it.subject}/{it.contrast}"] = p
    tables = {
        role: measure_cohort(
            cohort.items, root, {tuple(k.split("/")): v for k, v in found.items()}
        ).table
        for role, found in paths.items()
    }
    res = drift_result(tables["baseline"], tables["candidate"])
    assert res.verdict == "fail"
    images = qc.qc_images(res, cohort, root, paths, labels={"baseline": "cs/1"})
    c4 = images["C4_sub-phantom01_T2w"]
    assert c4[0].startswith("sub-phantom01 T2w, C4, slice ") and "failing level" in c4[0]
    assert c4[1].startswith(PNG_MAGIC)
    # Only the subject that changed is shown for the failing levels.
    assert {k.split("_")[1] for k in images} == {"sub-phantom01"}
