"""`egoattn protect` on a prepared dataset: a protected copy with the same manifest, lossless PNG frames
within eps of the originals, other modalities byte-identical, resume, and `egoattn evaluate` on the copy."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tinyrun
from egoattn.data.clipstore import ClipReader, ClipWriter
from egoattn.data.manifest import ClipRecord, read_manifest, write_classes, write_manifest
from egoattn.errors import BadInputError, ConfigError
from egoattn.privacy import protect as protect_module
from egoattn.privacy.pfgsm import ImageClassifier
from egoattn.privacy.protect import make_options, protect

CLASSES = ["take_cup", "open_box"]
H, W, N = 48, 64, 5  # frame size, frames per clip
EPS = 4  # grey levels


def make_prepared(root: Path) -> list[ClipRecord]:
    """2 subjects x 2 classes x 1 clip with every modality a prepared clip can hold."""
    rng = np.random.default_rng(0)
    records = []
    yy, xx = np.mgrid[0:H, 0:W]
    for s in ("S1", "S2"):
        for k, label in enumerate(CLASSES):
            clip_id = f"{s}_{label}"
            base = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1) % 256
            rgb = np.stack([np.roll(base, 3 * t + 7 * k, axis=1) for t in range(N)]).astype(np.int64)
            rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
            with ClipWriter(root / "clips" / f"{clip_id}.zip", clip_id, fps=10.0) as w:
                w.add_rgb(rgb)
                w.add_flow("flow", rng.integers(0, 255, (N - 1, H, W, 2), dtype=np.uint8), 20.0, "dis")
                w.add_flow("warp", rng.integers(0, 255, (N - 1, H, W, 2), dtype=np.uint8), 20.0, "dis")
                w.add_gray("motion", rng.integers(0, 255, (N, H, W), dtype=np.uint8))
                w.add_gray("mask", (rng.random((N, H, W)) > 0.5).astype(np.uint8))
                w.add_array("keypoints", rng.random((N, 21, 3)).astype(np.float32))
                w.add_json("privacy", [[[1.0, 2.0, 10.0, 12.0]] for _ in range(N)])
                verb, noun = label.split("_")
                rec = ClipRecord(clip_id, f"clips/{clip_id}.zip", label, verb, noun, s, 0, N, 10.0, N)
                w.meta["record"] = dataclasses.asdict(rec)
                records.append(rec)
    write_classes(root / "classes.txt", CLASSES)
    write_manifest(root / "manifest.csv", records)
    (root / "prepare.json").write_text(json.dumps({"options": {"short_side": 0}}))
    (root / "skipped.csv").write_text("path,problem\n")
    return records


def tiny_classifier() -> ImageClassifier:
    """A random linear classifier over the pixels (10 classes): fast, and like any linear model
    sensitive to small L-infinity perturbations, so P-FGSM can succeed within a few grey levels."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * H * W, 10))
    with torch.no_grad():
        model[1].weight.mul_(5.0)  # confident: top-1 probabilities of about 0.4 to 0.9, private sets of 2-3
    return ImageClassifier(model.eval().requires_grad_(False), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                           [f"c{i}" for i in range(10)], input_size=(H, W), name="tiny linear test model")


OPTIONS = dict(eps=EPS / 255, max_iter=20, sigma=0.9, batch_size=2, seed=1)


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    base = tmp_path_factory.mktemp("protect_dataset")
    make_prepared(base / "data")
    report = protect(base / "data", base / "out", classifier=tiny_classifier(), options=make_options(**OPTIONS))
    return base / "data", base / "out", report


def test_clipstore_png_rgb_is_lossless_and_jpeg_stays_the_default(tmp_path: Path) -> None:
    frames = np.random.default_rng(1).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    with ClipWriter(tmp_path / "png.zip", "a", fps=5.0, rgb_format="png") as w:
        w.add_rgb(frames)
    with ClipWriter(tmp_path / "jpg.zip", "b", fps=5.0) as w:
        w.add_rgb(frames)
    png, jpg = ClipReader(tmp_path / "png.zip"), ClipReader(tmp_path / "jpg.zip")
    assert np.array_equal(png.read_rgb([2, 0, 1]), frames[[2, 0, 1]])  # bit-exact
    assert png.meta["rgb_format"] == "png" and "rgb_format" not in jpg.meta  # old clips read as before
    assert zipfile.ZipFile(tmp_path / "jpg.zip").namelist()[1] == "rgb/000000.jpg"
    assert "rgb/000002.png" in zipfile.ZipFile(tmp_path / "png.zip").namelist()
    assert np.abs(jpg.read_rgb([0]).astype(int) - frames[:1]).max() > 10  # JPEG of noise is lossy
    with pytest.raises(ValueError, match="rgb_format"):
        ClipWriter(tmp_path / "x.zip", "c", fps=5.0, rgb_format="bmp")


def test_copy_has_the_same_manifest_and_untouched_modalities(protected) -> None:
    data, out, report = protected
    for name in ("manifest.csv", "classes.txt", "prepare.json", "skipped.csv"):
        assert (out / name).read_bytes() == (data / name).read_bytes(), name
    ids = [r.clip_id for r in read_manifest(out / "manifest.csv")]
    assert ids == list(report["items"]) and len(ids) == 4
    for rec in read_manifest(data / "manifest.csv"):
        with zipfile.ZipFile(data / rec.path) as a, zipfile.ZipFile(out / rec.path) as b:
            old, new = set(a.namelist()), set(b.namelist())
            rgb_jpg = {f"rgb/{i:06d}.jpg" for i in range(N)}
            assert rgb_jpg <= old and new == (old - rgb_jpg) | {f"rgb/{i:06d}.png" for i in range(N)}
            others = sorted(old - rgb_jpg - {"meta.json"})
            assert len(others) == 2 * 2 * (N - 1) + 2 * N + 2  # flow, warp x/y; motion, mask; keypoints, privacy
            for name in others:
                assert a.read(name) == b.read(name), name
            meta_a, meta_b = json.loads(a.read("meta.json")), json.loads(b.read("meta.json"))
        assert meta_b.pop("rgb_format") == "png"
        assert meta_b.pop("privacy_protection")["target"] == report["items"][rec.clip_id]["target"]
        assert meta_b == meta_a
    from egoattn.data.check import check_dataset

    assert check_dataset(out) == []


def test_frames_within_eps_and_protected_as_reported(protected) -> None:
    data, out, report = protected
    clf = tiny_classifier()
    flags = []
    for rec in read_manifest(data / "manifest.csv"):
        entry = report["items"][rec.clip_id]
        orig = ClipReader(data / rec.path).read_rgb(range(N))  # what the loader sees (JPEG decoded)
        prot = ClipReader(out / rec.path).read_rgb(range(N))
        diff = np.abs(prot.astype(int) - orig.astype(int))
        assert diff.max() <= EPS and diff.max() >= 1
        assert entry["kind"] == "clip" and entry["frames"] == N and (entry["height"], entry["width"]) == (H, W)
        assert {f["target"] for f in entry["per_frame"]} == {entry["target"]}  # one target per clip
        assert entry["private_set_size"] == len(entry["private_ids"])  # 10 classes: the whole set is listed
        assert entry["target"] not in entry["private_ids"]
        with torch.no_grad():
            probs = clf(torch.from_numpy(prot).permute(0, 3, 1, 2).float() / 255).softmax(1)
        for f, p in zip(entry["per_frame"], probs):
            top1 = int(p.argmax())
            assert top1 == f["top1_after"] and p[top1] == pytest.approx(f["conf_after"], abs=1e-5)
            assert f["protected"] == (top1 not in entry["private_ids"])
            if f["iterations"] < OPTIONS["max_iter"]:  # stopped early: the stop criterion holds on the stored frame
                assert float(p[entry["target"]]) > 0.99
            flags.append(f["protected"])
    agg = report["aggregate"]
    assert agg["clips"] == 4 and agg["units"] == 4 * N and agg["protected_units"] == sum(flags)
    print(f"\ntiny linear model, eps {EPS}/255, 20 iterations: {sum(flags)}/{len(flags)} frames protected, "
          f"mean PSNR {agg['mean_psnr']:.2f} dB")
    assert agg["protection_rate"] >= 0.9 and agg["mean_psnr"] > 35
    saved = json.loads((out / "report.json").read_text())
    assert saved["aggregate"] == agg
    assert "| S1_take_cup | clip, 5 frames |" in (out / "report.md").read_text()


def test_resume_after_interruption_redoes_nothing_finished(protected, tmp_path: Path, monkeypatch) -> None:
    data, reference_out, reference = protected
    out = tmp_path / "out"
    real = protect_module.protect_clip
    calls: list[str] = []

    def interrupted(clf, clip_id, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while protecting the third clip
        calls.append(clip_id)
        return real(clf, clip_id, *args, **kwargs)

    monkeypatch.setattr(protect_module, "protect_clip", interrupted)
    with pytest.raises(KeyboardInterrupt):
        protect(data, out, classifier=tiny_classifier(), options=make_options(**OPTIONS))
    assert not (out / "manifest.csv").exists() and not (out / ".protect.lock").exists()
    assert list(json.loads((out / "report.json").read_text())["items"]) == calls
    stamps = {c: (out / "clips" / f"{c}.zip").stat().st_mtime_ns for c in calls}

    calls.clear()
    monkeypatch.setattr(protect_module, "protect_clip", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    report = protect(data, out, classifier=tiny_classifier(), options=make_options(**OPTIONS))
    assert calls == ["S2_take_cup", "S2_open_box"]
    assert {c: (out / "clips" / f"{c}.zip").stat().st_mtime_ns for c in stamps} == stamps
    # the resumed copy is the uninterrupted one: same targets, same frames
    assert (out / "manifest.csv").read_bytes() == (data / "manifest.csv").read_bytes()
    for clip_id, entry in report["items"].items():
        assert entry["target"] == reference["items"][clip_id]["target"]
        a = ClipReader(out / "clips" / f"{clip_id}.zip").read_rgb(range(N))
        b = ClipReader(reference_out / "clips" / f"{clip_id}.zip").read_rgb(range(N))
        assert np.array_equal(a, b)

    with pytest.raises(ConfigError, match="different options"):
        protect(data, out, classifier=tiny_classifier(), options=make_options(**{**OPTIONS, "eps": 5 / 255}))
    (out / ".protect.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    with pytest.raises(BadInputError, match="another `egoattn protect`"):
        protect(data, out, classifier=tiny_classifier(), options=make_options(**OPTIONS))
    with pytest.raises(ConfigError, match="another folder"):
        protect(data, data, classifier=tiny_classifier(), options=make_options(**OPTIONS))


def test_evaluate_runs_on_the_protected_copy(protected, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from egoattn.cli import app
    from egoattn.evaluation.evaluate import evaluate_run

    data, out, _ = protected
    run = tinyrun.make_tiny_run(tmp_path / "run", CLASSES)
    # no attack step: the copy holds the JPEG-decoded frames losslessly, so evaluation is identical
    same = tmp_path / "same"
    protect(data, same, classifier=tiny_classifier(), options=make_options(**{**OPTIONS, "max_iter": 0}))
    m_orig = evaluate_run(run, data, out=tmp_path / "e_orig")
    m_same = evaluate_run(run, same, out=tmp_path / "e_same")
    assert m_orig["num_samples"] == m_same["num_samples"] == 2  # the gtea61 test subject S2
    predictions = [(tmp_path / e / "predictions.csv").read_text() for e in ("e_orig", "e_same")]
    assert predictions[0] == predictions[1]

    res = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(out), "--out", str(tmp_path / "e_prot")])
    assert res.exit_code == 0, res.output
    m_prot = json.loads((tmp_path / "e_prot" / "metrics.json").read_text())
    assert m_prot["num_samples"] == 2 and m_prot["data"] == str(out)
    rows = (tmp_path / "e_prot" / "predictions.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["S2_take_cup", "S2_open_box"]


def test_cli_protects_a_dataset_with_the_bundled_classifier(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from egoattn.cli import app

    make_prepared(tmp_path / "data")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["protect", str(tmp_path / "data"), str(out), "--max-iter", "1", "--eps", "2",
                                   "--batch-size", "5"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert report["aggregate"]["clips"] == 4 and report["aggregate"]["units"] == 4 * N
    assert all(f["iterations"] <= 1 for e in report["items"].values() for f in e["per_frame"])
    prot = ClipReader(out / "clips" / "S1_open_box.zip").read_rgb(range(N))
    orig = ClipReader(tmp_path / "data" / "clips" / "S1_open_box.zip").read_rgb(range(N))
    assert np.abs(prot.astype(int) - orig.astype(int)).max() <= 1  # one step of one grey level
    print(f"\nbundled classifier, 1 step: {report['aggregate']['protected_units']}/{4 * N} frames protected")
