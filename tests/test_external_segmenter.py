"""External segmenters (``cordwatch-segmenter.yaml``): registered, hashed, run per image with a
timeout, output checked, failures recorded per image; gated against an nnU-Net champion.

The segmenter is a small Python script written by the test: on phantom images it takes the
bright CSF ring of each axial slice (T2w), fills it and keeps what is inside (the cord); image
names select its failure modes (non-zero exit, hang, wrong grid, values out of [0, 1]).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from drift.cli.main import app
from drift.cohort import external
from drift.cohort.inference import segment_cohort
from drift.cohort.manifest import PhantomRecipe, write_phantom_manifest
from registry.api import connect
from registry.errors import InputError, IntegrityError
from registry.fsutil import sha256_file
from registry.package import validate_package

MODELS = Path(__file__).resolve().parents[1] / "models" / "demo"
runner = CliRunner()

SCRIPT = textwrap.dedent(
    '''
    """Threshold segmenter: the inside of the bright CSF ring, per axial slice."""
    import sys
    import time
    from pathlib import Path

    image, output = sys.argv[1], sys.argv[2]
    name = Path(image).name
    if "fail" in name or "sub-phantom03" in name:
        print("segment.py: cannot find the cord", file=sys.stderr)
        sys.exit(3)
    if "hang" in name:
        time.sleep(120)

    import nibabel as nib
    import numpy as np
    from scipy import ndimage
    img = nib.load(image)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.max() > 800:  # a phantom T2w: cord ~400, CSF ~1000, tissue ~300
        csf = data > 700
        canal = np.stack(
            [ndimage.binary_fill_holes(csf[:, :, k]) for k in range(data.shape[2])], axis=2
        )
        seg = canal & ~csf
        labels, n = ndimage.label(seg)
        if n > 1:
            seg = labels == (np.bincount(labels.ravel())[1:].argmax() + 1)
    else:
        seg = data > 0.5
    seg = seg.astype(np.float32)
    affine = img.affine
    if "grid" in name:
        seg = seg[:-1]
    if "range" in name:
        seg = seg * 2
    nib.save(nib.Nifti1Image(seg, affine), output)
    '''
)


def segmenter_package(
    dest: Path, timeout_s: float = 60, command: str | None = None, files: list | None = None
) -> Path:
    dest.mkdir(parents=True)
    (dest / "segment.py").write_text(SCRIPT)
    spec = {
        "format": "cordwatch-segmenter/1",
        "name": "csf-ring-threshold",
        "command": command or "{python} {package}/segment.py {image} {output}",
        "files": ["segment.py"] if files is None else files,
        "timeout_s": timeout_s,
        "output": "binary",
    }
    (dest / "cordwatch-segmenter.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return dest


def cli(home: Path, *args: str) -> tuple[int, str, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORDWATCH_HOME", str(home))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _image(path: Path, shape=(12, 10, 6), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0, 1, size=shape).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, 1.0, 2.0, 1.0])), path)
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"command": "{python} {package}/segment.py {image}"}, "no {output} placeholder"),
        ({"command": "run {image} {output} {secret}"}, "placeholder {secret} unknown"),
        ({"files": ["absent.py"]}, "'absent.py' is not a file inside the package"),
        ({"files": ["../segment.py"]}, "not a file inside the package"),
        ({"timeout_s": 0}, "timeout_s must be a positive number"),
        ({"output": "labels"}, "output must be soft or binary"),
        ({"format": "other/2"}, "format must be 'cordwatch-segmenter/1'"),
        ({"shell": True}, "unknown key(s) shell"),
    ],
)
def test_bad_segmenter_specs_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    pkg = segmenter_package(tmp_path / "seg")
    spec = json.loads((pkg / "cordwatch-segmenter.yaml").read_text()) | change
    (pkg / "cordwatch-segmenter.yaml").write_text(json.dumps(spec))
    with pytest.raises(InputError) as err:
        validate_package(pkg)
    assert message in str(err.value)
    assert err.value.path == str(pkg / "cordwatch-segmenter.yaml")
    code, out, stderr = cli(tmp_path / "home", "models", "register", "ext", str(pkg))
    assert code == 2 and out == "" and len(stderr.strip().splitlines()) == 1


def test_timeout_kills_the_command_and_the_cohort_goes_on(tmp_path: Path) -> None:
    pkg = segmenter_package(
        tmp_path / "seg",
        timeout_s=1,
        command="{python} -c 'import time; time.sleep(60)' {image} {output}",
        files=[],
    )
    images = [
        (f"sub-0{i}/T2w", _image(tmp_path / f"sub-0{i}_T2w.nii.gz", seed=i), None) for i in (1, 2)
    ]
    results = segment_cohort(pkg, "d" * 64, images, tmp_path / "cache", progress=False)
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("segmenter timed out after 1 s" in (r.error or "") for r in results)
    assert all(r.seconds < 20 for r in results)


@pytest.mark.slow  # five runs of a script importing nibabel and scipy: slow on a loaded machine
def test_segmenter_is_registered_hashed_and_run_with_failures_per_image(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pkg = segmenter_package(tmp_path / "seg", timeout_s=30)
    code, out, err = cli(home, "models", "register", "ext", str(pkg), "--alias", "candidate")
    assert code == 0, err
    code, out, err = cli(home, "models", "show", "ext@candidate", "--json")
    shown = json.loads(out)
    assert shown["package"]["format"] == "external-segmenter"
    assert json.loads(shown["package"]["segmenter"]["command"]) == [
        "{python}",
        "{package}/segment.py",
        "{image}",
        "{output}",
    ]
    assert shown["package"]["segmenter"]["timeout_s"] == "30"
    assert {f["path"] for f in shown["files"]} == {"cordwatch-segmenter.yaml", "segment.py"}

    reg = connect(None, home)
    info = reg.resolve("ext@candidate", manifest=True)
    assert info.manifest is not None
    manifest = {f.path: f.sha256 for f in info.manifest.files}
    package = reg.pull(info.ref)
    names = ["ok", "fail", "hang", "grid", "range"]
    images = []
    for i, name in enumerate(names):
        path = _image(tmp_path / "cohort" / f"sub-{name}_T2w.nii.gz", seed=i)
        images.append((f"sub-{name}/T2w", path, sha256_file(path)))
    before = {p: p.read_bytes() for _k, p, _s in images}

    results = segment_cohort(
        package, info.sha256, images, tmp_path / "cache", progress=False, package_manifest=manifest
    )
    by = {r.key.split("/")[0].removeprefix("sub-"): r for r in results}
    assert by["ok"].status == "ok"
    seg = np.asarray(nib.load(by["ok"].seg_path).dataobj)
    data = np.asarray(nib.load(images[0][1]).dataobj)
    assert np.array_equal(seg, (data > 0.5).astype(np.uint8))
    assert "exited with status 3: segment.py: cannot find the cord" in by["fail"].error
    assert "timed out after 30 s" in by["hang"].error
    assert by["hang"].seconds < 60  # killed, not waited for
    assert "wrong grid: shape (11, 10, 6), image (12, 10, 6)" in by["grid"].error
    assert "values 0..2 outside [0, 1]" in by["range"].error
    assert all(by[n].error.startswith(str(tmp_path / "cohort")) for n in names[1:])
    assert {p: p.read_bytes() for _k, p, _s in images} == before  # inputs untouched
    meta = json.loads(by["ok"].seg_path.with_suffix("").with_suffix(".json").read_text())
    assert meta["settings"]["pipeline"]["kind"] == "external-segmenter"
    assert meta["settings"]["pipeline"]["command"][1] == "{package}/segment.py"

    again = segment_cohort(
        package,
        info.sha256,
        images[:1],
        tmp_path / "cache",
        progress=False,
        package_manifest=manifest,
    )
    assert again[0].cached

    # A script changed after registration is refused before it runs: the cohort stops.
    copy = tmp_path / "tampered"
    reg.pull(info.ref, copy)
    (copy / "segment.py").write_text(SCRIPT + "\nimport os\n")
    fresh = [(k, p, s) for k, p, s in images[:1]]
    with pytest.raises(IntegrityError, match=r"segment\.py: sha256"):
        segment_cohort(
            copy, info.sha256, fresh, tmp_path / "cache2", progress=False, package_manifest=manifest
        )


def test_missing_executable_is_an_image_failure(tmp_path: Path) -> None:
    pkg = segmenter_package(
        tmp_path / "seg", command="no-such-segmenter-binary -i {image} -o {output}", files=[]
    )
    image = _image(tmp_path / "sub-01_T2w.nii.gz")
    results = segment_cohort(
        pkg, "c" * 64, [("sub-01/T2w", image, None)], tmp_path / "cache", progress=False
    )
    assert results[0].status == "failed"
    assert "cannot start" in (results[0].error or "")
    assert external.settings_for_package(pkg).python == ""  # no {python}: no interpreter pinned


@pytest.mark.slow
def test_external_segmenter_gated_against_nnunet_champion(tmp_path: Path) -> None:
    home = tmp_path / "home"
    manifest = write_phantom_manifest(
        tmp_path / "cohorts",
        name="phantom-ext",
        recipe=PhantomRecipe(n_subjects=4, seed=3, contrasts=("T2w",)),
    )
    policy = tmp_path / "policy.yaml"
    default = (Path(__file__).resolve().parents[1] / "reference_data" / "policy.yaml").read_text()
    assert "\nmin_subjects: 5\n" in default
    policy.write_text(default.replace("\nmin_subjects: 5\n", "\nmin_subjects: 3\n"))
    reg = connect(None, home)
    champion = reg.register("cs", MODELS / "demo-good")
    reg.promote(champion.ref, "champion", force=True, reason="test: nnU-Net champion")
    code, _out, err = cli(
        home,
        "models",
        "register",
        "cs",
        str(segmenter_package(tmp_path / "seg")),
        "--alias",
        "candidate",
    )
    assert code == 0, err
    result_path = tmp_path / "result.json"
    code, _out, err = cli(
        home,
        "drift",
        "check",
        "cs@candidate",
        "--baseline",
        "cs@champion",
        "--cohort",
        str(manifest),
        "--no-progress",
        "--policy",
        str(policy),
        "--json",
        str(result_path),
    )
    assert code in (0, 1), err  # a verdict, either way
    result = json.loads(result_path.read_text())
    failures = result["provenance"]["failures"]
    assert failures["baseline"] == []
    assert [f["subject"] for f in failures["candidate"]] == ["sub-phantom03"]
    assert "exited with status 3" in failures["candidate"][0]["error"]
    tags = reg.resolve("cs@candidate").tags
    assert tags["cordwatch.package.format"] == "external-segmenter"
    assert tags["cordwatch.drift.verdict"] in ("pass", "warn", "fail")


def test_soft_segmenter_output_is_kept_soft(tmp_path: Path) -> None:
    pkg = segmenter_package(
        tmp_path / "seg",
        command="{python} {package}/soft.py {image} {output}",
        files=["soft.py"],
    )
    (pkg / "soft.py").write_text(
        "import sys\nimport nibabel as nib\nimport numpy as np\n"
        "img = nib.load(sys.argv[1])\n"
        "data = np.asarray(img.dataobj, dtype=np.float32)\n"
        "nib.save(nib.Nifti1Image((data > 0.5) * np.float32(0.3), img.affine), sys.argv[2])\n"
    )
    spec = json.loads((pkg / "cordwatch-segmenter.yaml").read_text()) | {"output": "soft"}
    (pkg / "cordwatch-segmenter.yaml").write_text(json.dumps(spec))
    image = _image(tmp_path / "sub-01_T2w.nii.gz")
    [res] = segment_cohort(
        pkg, "e" * 64, [("sub-01/T2w", image, None)], tmp_path / "c", progress=False
    )
    assert res.status == "ok", res.error
    seg = np.asarray(nib.load(res.seg_path).dataobj)
    assert seg.dtype == np.float32 and np.isclose(seg.max(), 0.3)  # partial volume kept
