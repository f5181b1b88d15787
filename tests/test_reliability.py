"""Reliability and security (issue 8): interrupted, fed bad input or attacked, egoattn loses nothing.

1. A training run killed (SIGKILL, or a crash at a random batch) and resumed with --resume ends with
   the same metrics and the same best/last checkpoint tensors as an uninterrupted run - bit for bit on
   the CPU: the loader's randomness is seeded by (seed, epoch, index), Lightning restores weights,
   optimiser, scheduler and loop counters, egoattn's RandomState callback restores the torch / numpy /
   python generators (dropout), and deterministic CPU kernels in one thread repeat exactly.
2. Same seed, same metrics.json: test_training.test_same_seed_gives_the_same_metrics (metrics.json
   holds no timings; metrics.csv's `seconds` column is the only run-time-dependent value).
3. `prepare` and `protect` killed mid-way and rerun finish the job with the outputs of an
   uninterrupted run; every clip / checkpoint a reader can open is complete right after a kill; two
   concurrent `prepare` runs on one output do not corrupt it (the lock).
4. A corpus of bad inputs (CORPUS below): each a clear error naming the file and the problem, or a
   documented acceptance; no file that existed before the failing call is lost or changed.
5. Loading never executes code: checkpoints (weights_only), YAML (safe loader), manifest paths.
6. A 2-process CPU DDP run with one rank killed fails within seconds and resumes (slow).
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import pytest

import paths
import torch
import yaml

from egoattn.data.clipstore import ClipReader
from egoattn.data.dataset import ClipDataset, EgoDataModule
from egoattn.data.manifest import ClipRecord, read_classes, read_manifest, resolve_inside, write_classes, write_manifest
from egoattn.data.prepare import PrepareOptions, finished_record, prepare_dataset
from egoattn.data.samplers import UniformSampler
from egoattn.data.sources import SourceWarning
from egoattn.errors import BadInputError, ConfigError, EgoattnError, OutputError
from egoattn.training.config import apply_overrides, load_recipe
from egoattn.training.run import AtomicCheckpointIO, load_init_weights, load_run, read_checkpoint, train
from egoattn.training.task import ActionRecognitionTask

from test_bad_input import (  # the fixture builders of the existing bad-input tests
    _segments, case_beyond_end, case_end_before_start, case_missing_flow_frame, case_no_decodable_frame,
    case_not_a_video, case_too_short, case_truncated, case_unknown_label, case_zero_byte, small_video,
)
from test_dataset import CLASSES as CLIP_CLASSES, RAW, write_clip
from test_prepare import make_gtea, make_synthetic
from test_training import CLASSES, TINY, make_dataset
from test_video import _faststart_mp4

REAL = paths.REAL
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# TINY with dropout and a per-epoch lr schedule, so that a resume must restore the random state and
# the scheduler: 4 epochs of 3 batches.
RESUME = [t for t in TINY if not t.startswith(("train.epochs", "model.options.dropout"))] + [
    "train.epochs=4", "model.options.dropout=0.5", "optim.per_epoch_gamma=0.5"]


def _seed() -> int:
    """A fresh seed per session (printed, and fixed with EGOATTN_TEST_SEED) for the kill moments."""
    return int(os.environ.get("EGOATTN_TEST_SEED", int.from_bytes(os.urandom(4), "little")))


SEED = _seed()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "egoattn.cli", *args]


def sets(overrides: list[str]) -> list[str]:
    return [a for s in overrides for a in ("--set", s)]


def start(args: list[str], log: Path) -> subprocess.Popen:
    """A process in its own session (so it and its workers can be killed together); stderr to `log`
    (a file, not a pipe: a full pipe would stall the process before the moment we wait for)."""
    with log.open("w") as f:
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=f, env=ENV, start_new_session=True)
    p.log = log  # type: ignore[attr-defined]
    return p


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the process we started and its children (DataLoader / prepare workers)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def wait_for(predicate: Callable[[], bool], p: subprocess.Popen, timeout: float = 300.0) -> None:
    t0 = time.monotonic()
    while not predicate():
        if p.poll() is not None:
            raise AssertionError(f"process ended (rc {p.returncode}) before the condition held: "
                                 f"{p.log.read_text()[-2000:]}")  # type: ignore[attr-defined]
        if time.monotonic() - t0 > timeout:
            kill_group(p)
            raise AssertionError("timed out")
        time.sleep(0.02)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def no_seconds(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_run(a: Path, b: Path) -> None:
    """Same metrics.json, same metrics.csv (but seconds), same tensors in best.ckpt and last.ckpt."""
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())
    assert no_seconds(read_csv(a / "metrics.csv")) == no_seconds(read_csv(b / "metrics.csv"))
    for name in ("best", "last"):
        x, y = (read_checkpoint(r / "checkpoints" / f"{name}.ckpt") for r in (a, b))
        assert x["epoch"] == y["epoch"] and x["global_step"] == y["global_step"], name
        assert x["state_dict"].keys() == y["state_dict"].keys()
        for k in x["state_dict"]:
            assert torch.equal(x["state_dict"][k], y["state_dict"][k]), (name, k)  # bit for bit
        sx, sy = x["optimizer_states"][0]["state"], y["optimizer_states"][0]["state"]
        assert sx.keys() == sy.keys()
        for i in sx:
            assert all(torch.equal(sx[i][k], sy[i][k]) for k in sx[i]), (name, "optimizer", i)
        assert x["lr_schedulers"] == y["lr_schedulers"], name


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def reference_run(data, tmp_path_factory) -> Path:
    """The uninterrupted 4-epoch run every interrupted one is compared with."""
    return train("cpu_egornn", data=data, out=tmp_path_factory.mktemp("runs") / "reference", overrides=RESUME)


# ==================================================================================================
# 1. Training: interrupted and resumed = uninterrupted
# ==================================================================================================

def test_reference_run_uses_dropout_and_a_schedule(reference_run) -> None:
    """Guard: without dropout and a schedule the resume tests below could not fail."""
    rows = read_csv(reference_run / "metrics.csv")
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
    saved = yaml.safe_load((reference_run / "config.yaml").read_text())
    assert saved["model"]["options"]["dropout"] == 0.5
    summary = json.loads((reference_run / "metrics.json").read_text())
    assert not [k for k in summary if "second" in k or "time" in k]  # comparable across runs


def test_crash_at_a_random_batch_then_resume_equals_uninterrupted(reference_run, data, tmp_path, monkeypatch) -> None:
    rng = random.Random(SEED)
    epoch, batch = rng.randint(1, 3), rng.randint(0, 2)  # after the first checkpoint; 3 batches per epoch
    print(f"seed {SEED}: crash in epoch {epoch + 1}, batch {batch}")

    def crash(self, b, batch_idx):
        if self.current_epoch == epoch and batch_idx == batch:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(ActionRecognitionTask, "on_train_batch_start", crash, raising=False)
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train("cpu_egornn", data=data, out=out, overrides=RESUME)
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == epoch - 1
    monkeypatch.undo()
    train("cpu_egornn", data=data, out=out, overrides=RESUME, resume=True)
    assert_same_run(reference_run, out)


def test_run_killed_before_its_first_checkpoint_starts_again_on_resume(reference_run, data, tmp_path) -> None:
    """A SIGKILL skips train's clean-up; what it leaves (config, classes, a metrics row) must not block --resume."""
    out = tmp_path / "early"
    out.mkdir()
    for name in ("config.yaml", "classes.txt"):
        shutil.copy(reference_run / name, out / name)
    (out / "tb").mkdir()
    rows = (reference_run / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join(rows[:2]) + "\n")  # the row of an epoch whose checkpoint was not written
    with pytest.raises(BadInputError, match="not empty"):
        train("cpu_egornn", data=data, out=out, overrides=RESUME)
    train("cpu_egornn", data=data, out=out, overrides=RESUME, resume=True)
    assert_same_run(reference_run, out)


@pytest.mark.slow  # three interpreter starts of `egoattn train`: about a minute
def test_sigkilled_train_resumes_to_the_same_result(reference_run, data, tmp_path) -> None:
    rng = random.Random(SEED)
    for attempt in range(3):
        out = tmp_path / f"killed{attempt}"
        p = start(cli("train", "cpu_egornn", "--data", str(data), "--out", str(out), *sets(RESUME)),
                  tmp_path / f"train{attempt}.log")
        wait_for(lambda: (out / "checkpoints" / "last.ckpt").exists(), p)
        delay = rng.uniform(0.0, 1.5) / (attempt + 1)
        time.sleep(delay)
        killed = p.poll() is None
        kill_group(p)
        if killed:
            break
    assert killed, "the run always finished before the kill"
    print(f"seed {SEED}: SIGKILL {delay:.2f} s after the first checkpoint (attempt {attempt + 1})")
    # right after the kill: every checkpoint a reader can open is complete
    ckpts = sorted((out / "checkpoints").glob("[!.]*.ckpt"))
    assert {c.name for c in ckpts} <= {"best.ckpt", "last.ckpt"} and ckpts
    done = read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"]
    for c in ckpts:
        read_checkpoint(c)
    result = subprocess.run(cli("train", "cpu_egornn", "--data", str(data), "--out", str(out), "--resume",
                                *sets(RESUME)), capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Restored all states" in result.stderr
    print(f"killed after epoch {done + 1} was saved; resumed")
    assert not list((out / "checkpoints").glob(".*"))  # a temporary left by a kill is removed on resume
    assert_same_run(reference_run, out)


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch) -> None:
    """A save that dies half-way leaves the previous checkpoint intact and no file a reader could open."""
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, path)
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:100])  # half-written, then the process is gone
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
    loaded = io.load_checkpoint(path)
    assert loaded["epoch"] == 0 and torch.equal(loaded["state_dict"]["w"], torch.ones(3))


# ==================================================================================================
# 3. prepare / protect killed and rerun; concurrent prepare
# ==================================================================================================

def _prepare_source(root: Path) -> Path:
    subjects = {f"S{i}": ["close_jam", "open_jam", "take_bread"] for i in range(1, 9)}
    return make_gtea(root, subjects=subjects, n=12)  # 24 clips


PREPARE_ARGS = ["--format", "gtea61", "--short-side", "96", "--flow", "farneback", "--recompute-flow"]


def _clips_complete(clips: Path) -> list[Path]:
    """The clip zips a reader can open (not hidden); each must be complete: CRCs and frame counts."""
    zips = sorted(clips.glob("[!.]*.zip"))
    for z in zips:
        with zipfile.ZipFile(z) as zf:
            assert zf.testzip() is None, z
        assert finished_record(z) is not None, z
    return zips


def test_sigkilled_prepare_reruns_to_the_same_dataset(tmp_path) -> None:
    src = _prepare_source(tmp_path / "src")
    ref = tmp_path / "ref"
    r = subprocess.run(cli("prepare", str(src), str(ref), *PREPARE_ARGS, "--workers", "1"), capture_output=True,
                       text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    total = len(read_manifest(ref / "manifest.csv"))
    assert total == 24
    rng = random.Random(SEED + 1)
    out = tmp_path / "out"
    interruptions = 0
    for attempt in range(4):
        p = start(cli("prepare", str(src), str(out), *PREPARE_ARGS, "--workers", "2"), tmp_path / "prepare.log")
        target = len(list((out / "clips").glob("[!.]*.zip"))) + 1 if (out / "clips").is_dir() else 1
        wait_for(lambda: (out / "clips").is_dir() and len(list((out / "clips").glob("[!.]*.zip"))) >= target, p)
        time.sleep(rng.uniform(0.0, 0.3))
        running = p.poll() is None
        kill_group(p)
        interruptions += running
        done = _clips_complete(out / "clips")  # right after the kill
        print(f"seed {SEED}: kill {attempt + 1}: {'killed' if running else 'finished'} with {len(done)} of {total} "
              f"clips, {len(list((out / 'clips').glob('.*')))} temporary file(s) left")
        if not running or len(done) == total:
            break
        assert not (out / "manifest.csv").exists() or read_manifest(out / "manifest.csv")
    assert interruptions >= 1, "every run finished before it could be killed"
    r = subprocess.run(cli("prepare", str(src), str(out), *PREPARE_ARGS, "--workers", "2"), capture_output=True,
                       text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((out / "prepare.json").read_text())
    assert info["prepared"] + info["already_done"] == total and info["already_done"] > 0
    assert (out / "manifest.csv").read_text() == (ref / "manifest.csv").read_text()
    assert (out / "classes.txt").read_text() == (ref / "classes.txt").read_text()
    assert len(_clips_complete(out / "clips")) == total
    for rec in read_manifest(ref / "manifest.csv"):  # the same frames as the uninterrupted run
        a, b = ClipReader(ref / rec.path), ClipReader(out / rec.path)
        assert a.meta["modalities"] == b.meta["modalities"]
        assert np.array_equal(a.read_rgb(range(a.num_frames)), b.read_rgb(range(b.num_frames)))
        assert np.array_equal(a.read_gray("motion", range(a.num_frames)), b.read_gray("motion", range(b.num_frames)))


def test_two_concurrent_prepares_do_not_corrupt_the_output(tmp_path) -> None:
    src = _prepare_source(tmp_path / "src")
    out = tmp_path / "out"
    a = start(cli("prepare", str(src), str(out), *PREPARE_ARGS, "--workers", "1"), tmp_path / "a.log")
    wait_for(lambda: (out / ".prepare.lock").exists(), a)
    # Paused while it holds the lock, so the second one meets a live writer however busy the machine
    # is (on a loaded machine the second one's start-up used to outlast the whole first run).
    os.killpg(a.pid, signal.SIGSTOP)
    try:
        first_running = a.poll() is None
        b = subprocess.run(cli("prepare", str(src), str(out), *PREPARE_ARGS, "--workers", "1"), capture_output=True,
                           text=True, env=ENV, timeout=600)
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    a.wait(timeout=600)
    assert a.returncode == 0, a.log.read_text()[-2000:]
    assert first_running, "the first prepare ended before the second one started"
    assert b.returncode == 2 and "another `egoattn prepare` is writing this dataset" in b.stderr
    assert not (out / ".prepare.lock").exists()
    assert len(read_manifest(out / "manifest.csv")) == 24 and len(_clips_complete(out / "clips")) == 24
    # the refused one, run again, finds everything done
    again = subprocess.run(cli("prepare", str(src), str(out), *PREPARE_ARGS, "--workers", "1"), capture_output=True,
                           text=True, env=ENV, timeout=600)
    assert again.returncode == 0
    info = json.loads((out / "prepare.json").read_text())
    assert (info["prepared"], info["already_done"]) == (0, 24)


needs_real_images = pytest.mark.skipif(not (REAL / "images" / "bird.png").is_file(), reason="no real sample images")


@needs_real_images
@pytest.mark.slow  # three protect runs of the bundled classifier: about 40 s
def test_sigkilled_protect_reruns_to_the_same_outputs(tmp_path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    img = cv2.imread(str(REAL / "images" / "bird.png"))
    for i in range(5):
        cv2.imwrite(str(src / f"img{i}.png"), cv2.resize(np.roll(img, 9 * i, axis=1), (64, 48)))
    args = ["--max-iter", "4", "--batch-size", "1"]
    ref = tmp_path / "ref"
    r = subprocess.run(cli("protect", str(src), str(ref), *args), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    p = start(cli("protect", str(src), str(out), *args), tmp_path / "protect.log")
    wait_for(lambda: (out / "report.json").exists(), p)
    time.sleep(random.Random(SEED + 2).uniform(0.0, 1.5))
    running = p.poll() is None
    kill_group(p)
    report = json.loads((out / "report.json").read_text())  # complete JSON right after the kill
    for entry in report["items"].values():
        assert cv2.imread(str(out / entry["output"])) is not None
    for png in out.glob("[!.]*.png"):
        assert cv2.imread(str(png)) is not None, png
    print(f"seed {SEED}: protect {'killed' if running else 'finished'} with {len(report['items'])} of 5 images")
    r = subprocess.run(cli("protect", str(src), str(out), *args), capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = json.loads((ref / "report.json").read_text()), json.loads((out / "report.json").read_text())
    assert list(a["items"]) == list(b["items"]) and a["aggregate"] == b["aggregate"]
    for name in a["items"]:
        out_name = a["items"][name]["output"]
        assert np.array_equal(cv2.imread(str(ref / out_name)), cv2.imread(str(out / out_name))), name


# ==================================================================================================
# 4. The bad-input corpus
# ==================================================================================================

@dataclass
class Case:
    run: Callable[[], Any]
    error: type[Exception] | None  # None: a documented acceptance, checked by `check`
    path: str = ""  # must appear in the message
    problem: str = ""  # regex on the message
    check: Callable[[Any], None] | None = None


class Ctx:
    """What a case builder may use: lazily built module fixtures and monkeypatch."""

    def __init__(self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
        self.request, self.monkeypatch = request, monkeypatch

    def fixture(self, name: str) -> Any:
        return self.request.getfixturevalue(name)


def _prepared(builder: Callable[[Path], tuple]) -> Callable[[Path, Ctx], Case]:
    """A source case of test_bad_input's shape (source, options, bad path, problem): the good clip is
    prepared first (skip_bad), then a run without skip_bad must stop at the bad one, keeping it."""

    def build(tmp: Path, ctx: Ctx) -> Case:
        source, extra, bad, problem = builder(tmp)
        options = dict(short_side=32, flow="none", workers=1, progress=False, **extra)
        out = tmp / "out"
        first = prepare_dataset(source, out, PrepareOptions(skip_bad=True, **options))
        assert first.prepared == 1 and len(first.bad) == 1
        return Case(lambda: prepare_dataset(source, out, PrepareOptions(**options)), BadInputError, str(bad), problem)

    return build


# --- source files (prepare) ----------------------------------------------------------------------

def src_png_named_mp4(tmp):
    small_video(tmp / "src" / "good" / "ok.mp4")
    bad = tmp / "src" / "bad" / "photo.mp4"
    bad.parent.mkdir(parents=True)
    cv2.imwrite(str(tmp / "photo.png"), np.full((48, 64, 3), 90, np.uint8))
    shutil.copy(tmp / "photo.png", bad)  # an image with a video's name decodes as one frame
    return tmp / "src", {"format": "videos"}, bad, r"clip has 1 frame\(s\); at least 2 are needed"


def src_truncated_mp4(tmp):
    small_video(tmp / "src" / "good" / "ok.mp4")
    (tmp / "src" / "bad").mkdir(parents=True)
    _faststart_mp4(tmp / "whole.mp4")
    bad = tmp / "src" / "bad" / "cut.mp4"
    data = (tmp / "whole.mp4").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return tmp / "src", {"format": "videos"}, bad, r"truncated"


def src_negative_start(tmp):
    src, extra, csv_path = _segments(tmp, "long.mp4,-2,4,take_cup,S1\n")
    return src, extra, f"{csv_path}:3", "segment start -2 is negative"


def src_empty_label(tmp):
    src, extra, csv_path = _segments(tmp, "long.mp4,4,8,,S1\n")
    return src, extra, f"{csv_path}:3", "empty label"


def src_segment_escapes_root(tmp):
    small_video(tmp / "outside.mp4")
    src, extra, csv_path = _segments(tmp, "../outside.mp4,0,4,take_cup,S1\n")
    return src, extra, f"{csv_path}:3", r"\.\./outside\.mp4: path escapes the source folder"


def src_extra_flow_frames(tmp):
    root = make_gtea(tmp / "src", subjects={"S1": ["open_jam", "take_bread"]})
    fx = root / "flow_x_processed" / "S1" / "take_bread" / "1"
    fy = root / "flow_y_processed" / "S1" / "take_bread" / "1"
    for i in (5, 6):
        shutil.copy(fx / "flow_x_00001.png", fx / f"flow_x_{i:05d}.png")
        shutil.copy(fy / "flow_y_00001.png", fy / f"flow_y_{i:05d}.png")
    return root, {"format": "gtea61"}, fx, r"extra flow frames: 6 flow images for 5 rgb frames \(expected 4\)"


def src_unreadable_frame(tmp):
    root = make_gtea(tmp / "src", subjects={"S1": ["open_jam", "take_bread"]})
    bad = root / "processed_frames2" / "S1" / "take_bread" / "1" / "rgb" / "rgb0003.png"
    bad.write_bytes(b"")
    return root, {"format": "gtea61"}, bad, "unreadable image"


def src_frame_size_differs(tmp):
    root = make_gtea(tmp / "src", subjects={"S1": ["open_jam", "take_bread"]})
    bad = root / "processed_frames2" / "S1" / "take_bread" / "1" / "rgb" / "rgb0004.png"
    cv2.imwrite(str(bad), np.zeros((30, 40, 3), np.uint8))
    return root, {"format": "gtea61"}, bad, r"frame size 40x30 differs from the clip's 64x48"


def src_synthetic_path_escapes(tmp):
    root = make_synthetic(tmp / "src")
    shutil.copy(root / "videos" / "c1.mp4", tmp / "c1.mp4")
    rows = read_manifest(root / "manifest.csv")
    rows[1] = ClipRecord(**{**rows[1].__dict__, "path": "../c1.mp4"})
    write_manifest(root / "manifest.csv", rows)
    return (root, {"format": "synthetic"}, f"{root / 'manifest.csv'}: clip 'c1'",
            r"\.\./c1\.mp4: path escapes the source folder")


def src_synthetic_clip_id_with_slash(tmp):
    root = make_synthetic(tmp / "src")
    rows = read_manifest(root / "manifest.csv")
    rows[1] = ClipRecord(**{**rows[1].__dict__, "clip_id": "../../evil"})
    write_manifest(root / "manifest.csv", rows)
    return (root, {"format": "synthetic"}, f"{root / 'manifest.csv'}: clip '../../evil'",
            r"clip id '\.\./\.\./evil' is not a plain file name")


def src_motion_maps_missing(tmp: Path, ctx: Ctx) -> Case:
    """Documented: a missing motion map is filled from the nearest frame, with a SourceWarning."""
    root = make_gtea(tmp / "src", subjects={"S1": ["open_jam"]})
    (root / "processed_frames2" / "S1" / "open_jam" / "1" / "mmaps" / "map0003.png").unlink()

    def run():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = prepare_dataset(root, tmp / "out", PrepareOptions(format="gtea61", short_side=32, flow="none",
                                                                       workers=1, progress=False))
        return report, caught

    def check(result):
        report, caught = result
        assert report.prepared == 1
        assert any(issubclass(w.category, SourceWarning) and "1 motion maps missing" in str(w.message) for w in caught)
        clip = ClipReader(tmp / "out" / report.records[0].path)
        assert clip.has("motion") and len(clip.read_gray("motion", range(clip.num_frames))) == clip.num_frames

    return Case(run, None, check=check)


def src_comma_and_unicode_class_folders(tmp: Path, ctx: Ctx) -> Case:
    """Documented: folder names become class names; a comma becomes '+', unicode letters stay."""
    root = make_gtea(tmp / "src", subjects={"S1": ["stir_spoon,cup", "öffnen_glas"], "S2": ["öffnen_glas"]})

    def check(report):
        assert read_classes(tmp / "out" / "classes.txt") == ["stir_spoon+cup", "öffnen_glas"]
        assert {r.label for r in report.records} == {"stir_spoon+cup", "öffnen_glas"}

    return Case(lambda: prepare_dataset(root, tmp / "out", PrepareOptions(format="gtea61", short_side=32, flow="none",
                                                                           workers=1, progress=False)),
                None, check=check)


def out_read_only(tmp: Path, ctx: Ctx) -> Case:
    """The clips folder turns read-only (EACCES) after an earlier run: stop naming the clip, keep the rest."""
    root = make_gtea(tmp / "src", subjects={"S1": ["open_jam", "take_bread"]})
    out = tmp / "out"
    prepare_dataset(root, out, PrepareOptions(format="gtea61", short_side=32, flow="none", workers=1, progress=False))
    make_gtea(root, subjects={"S2": ["open_jam"]})  # one more clip to prepare

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    def run():
        ctx.monkeypatch.setattr("egoattn.fileio.tempfile.mkstemp", refuse)
        with pytest.raises(OutputError):  # not a bad input: --skip-bad does not skip it
            prepare_dataset(root, out, PrepareOptions(format="gtea61", short_side=32, flow="none", workers=1,
                                                      progress=False, skip_bad=True))
        prepare_dataset(root, out, PrepareOptions(format="gtea61", short_side=32, flow="none", workers=1,
                                                  progress=False))

    return Case(run, OutputError, str(out / "clips" / "S2_open_jam_1.zip"), "cannot write the file: Permission denied")


# --- prepared dataset and loader -----------------------------------------------------------------

def _clip_root(tmp: Path, n: int = 10, kinds=("flow", "motion")) -> Path:
    write_clip(tmp / "clips" / "a.zip", "a", n, kinds=kinds)
    write_classes(tmp / "classes.txt", CLIP_CLASSES)
    write_manifest(tmp / "manifest.csv", [ClipRecord("a", "clips/a.zip", "open_jam", "open", "jam", "S1", 0, n, 10.0, n)])
    return tmp


def _one_clip(root: Path, modalities, num_frames: int):
    rec = read_manifest(root / "manifest.csv")[0]
    return lambda: ClipDataset(root, [rec], CLIP_CLASSES, modalities, UniformSampler(num_frames), RAW, train=False)[0]


def clip_too_short(tmp, ctx):
    root = _clip_root(tmp, n=6)
    return Case(_one_clip(root, ("rgb",), 8), BadInputError, str(root / "clips" / "a.zip"),
                "clip has 6 frames, the uniform sampler needs 8")


def clip_motion_count_differs(tmp, ctx):
    root = _clip_root(tmp, n=6)
    path = root / "clips" / "a.zip"
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n != "motion/000002.png"}
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return Case(_one_clip(root, ("rgb", "motion"), 6), BadInputError, str(path), r"missing member 'motion/000002.png'")


def clip_missing_flow(tmp, ctx):
    root = _clip_root(tmp, kinds=("motion",))
    return Case(_one_clip(root, ("flow",), 4), BadInputError, str(root / "clips" / "a.zip"),
                r"clip has no 'flow' modality")


def clip_truncated_zip(tmp, ctx):
    root = _clip_root(tmp)
    path = root / "clips" / "a.zip"
    path.write_bytes(path.read_bytes()[:2000])
    return Case(_one_clip(root, ("rgb",), 4), BadInputError, str(path), "corrupt prepared clip")


def _datamodule(root: Path) -> None:
    EgoDataModule(root, split="all", val="test").setup()


def _manifest_case(tmp, rows: str, problem: str, line: int = 3) -> Case:
    root = _clip_root(tmp)
    (root / "manifest.csv").write_text((root / "manifest.csv").read_text() + rows)
    return Case(lambda: _datamodule(root), BadInputError, f"{root / 'manifest.csv'}:{line}",
                problem)


def manifest_unknown_label(tmp, ctx):
    return _manifest_case(tmp, "b,clips/b.zip,eat_cake,eat,cake,S1,0,10,10.0,10\n", "label 'eat_cake' is not in classes.txt")


def manifest_duplicate_clip_id(tmp, ctx):
    return _manifest_case(tmp, "a,clips/a.zip,open_jam,open,jam,S2,0,10,10.0,10\n", "duplicate clip_id 'a'")


def manifest_malformed_row(tmp, ctx):
    return _manifest_case(tmp, "b,clips/b.zip,open_jam,open,jam,S1,0,ten,10.0,10\n", "malformed row")


def manifest_path_escapes(tmp, ctx):
    root = _clip_root(tmp)
    (root / "manifest.csv").write_text((root / "manifest.csv").read_text().replace("clips/a.zip", "../a.zip"))
    return Case(lambda: _datamodule(root), BadInputError, "../a.zip",
                "path escapes the dataset root")


def _classes_case(tmp, text: str, problem: str) -> Case:
    root = _clip_root(tmp)
    (root / "classes.txt").write_text(text, encoding="utf-8")
    return Case(lambda: _datamodule(root), BadInputError, str(root / "classes.txt"), problem)


def classes_duplicate(tmp, ctx):
    return _classes_case(tmp, "open_jam\nclose_jam\nopen_jam\n", "duplicate class name 'open_jam' at line 3")


def classes_empty(tmp, ctx):
    return _classes_case(tmp, "\n  \n", "no classes listed")


def classes_comma(tmp, ctx):
    return _classes_case(tmp, "open_jam\nstir_spoon,cup\n", "class name 'stir_spoon,cup' contains whitespace, a comma")


# --- checkpoints and recipes ---------------------------------------------------------------------

def _run_copy(tmp: Path, ctx: Ctx) -> Path:
    run = tmp / "run"
    shutil.copytree(ctx.fixture("reference_run"), run)
    return run


def ckpt_garbage(tmp, ctx):
    run = _run_copy(tmp, ctx)
    (run / "checkpoints" / "best.ckpt").write_bytes(os.urandom(4096))
    return Case(lambda: load_run(run), BadInputError, str(run / "checkpoints" / "best.ckpt"), "not a readable checkpoint")


def ckpt_truncated(tmp, ctx):
    run = _run_copy(tmp, ctx)
    path = run / "checkpoints" / "best.ckpt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return Case(lambda: load_run(run), BadInputError, str(path), "not a readable checkpoint")


def ckpt_other_model(tmp, ctx):
    run = _run_copy(tmp, ctx)
    recipe = apply_overrides(load_recipe("cpu_flow"), [f"init.from_run={{'': {str(run)!r}}}"])
    model = ActionRecognitionTask(recipe, CLASSES).model
    return Case(lambda: load_init_weights(model, recipe, CLASSES), BadInputError, str(run / "checkpoints" / "best.ckpt"),
                "checkpoint is a 'egornn' model, this recipe builds 'flow'")


def ckpt_other_class_count(tmp, ctx):
    run = _run_copy(tmp, ctx)
    recipe = apply_overrides(load_recipe("cpu_egornn"), [*TINY, f"init.from_run={{'': {str(run)!r}}}"])
    four = [*CLASSES, "close_jar"]
    model = ActionRecognitionTask(recipe, four).model
    return Case(lambda: load_init_weights(model, recipe, four), BadInputError, str(run / "checkpoints" / "best.ckpt"),
                "checkpoint has 3 classes, the dataset has 4")


def resume_other_model(tmp, ctx):
    run, data = _run_copy(tmp, ctx), ctx.fixture("data")
    return Case(lambda: train("cpu_frame_average", data=data, out=run, resume=True), BadInputError,
                str(run / "checkpoints" / "last.ckpt"), "checkpoint of a 'egornn' model with 3 classes; the recipe "
                                                        "builds 'frame_average'")


def _recipe_file(tmp: Path, change: dict) -> Path:
    recipe = yaml.safe_load((Path(__file__).parents[1] / "src/egoattn/recipes/cpu_egornn.yaml").read_text())
    for key, value in change.items():
        section, name = key.split(".")
        recipe[section][name] = value
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def config_unknown_key(tmp, ctx):
    path = _recipe_file(tmp, {"optim.lrate": 0.1})
    return Case(lambda: load_recipe(path), ConfigError, str(path), "unknown key 'optim.lrate'")


def config_wrong_type(tmp, ctx):
    path = _recipe_file(tmp, {"data.num_frames": "many"})
    return Case(lambda: load_recipe(path), ConfigError, str(path), "data.num_frames: Input should be a valid integer")


def config_not_a_mapping(tmp, ctx):
    path = tmp / "recipe.yaml"
    path.write_text("- just\n- a list\n")
    return Case(lambda: load_recipe(path), ConfigError, str(path), "a recipe must be a mapping")


def checkpoint_disk_full(tmp, ctx):
    """ENOSPC while saving epoch 2's checkpoints: an OutputError naming the file; epoch 1's stay."""
    calls = {"n": 0}
    real_save = torch.save

    def full(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 saved best + last
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    out, data = tmp / "full", ctx.fixture("data")

    def run():
        ctx.monkeypatch.setattr(torch, "save", full)
        try:
            train("cpu_egornn", data=data, out=out, overrides=[*TINY, "train.epochs=2"])
        finally:
            ctx.monkeypatch.undo()
            last = read_checkpoint(out / "checkpoints" / "last.ckpt")
            assert last["epoch"] == 0 and [r["epoch"] for r in read_csv(out / "metrics.csv")][0] == "1"
            assert not list((out / "checkpoints").glob(".*"))

    return Case(run, OutputError, str(out / "checkpoints"), r"(best|last)\.ckpt: cannot write the file: No space left")


def nan_loss(tmp, ctx):
    """The NaN case of test_training, kept in the corpus: stop with a message, keep the last good checkpoint."""
    out, data = tmp / "nan", ctx.fixture("data")
    original = ActionRecognitionTask.total_loss

    def nan_in_second_epoch(self, losses):
        loss = original(self, losses)
        return loss * float("nan") if self.current_epoch == 1 else loss

    def run():
        ctx.monkeypatch.setattr(ActionRecognitionTask, "total_loss", nan_in_second_epoch)
        try:
            train("cpu_egornn", data=data, out=out, overrides=[*TINY, "train.epochs=2"])
        finally:
            last = read_checkpoint(out / "checkpoints" / "last.ckpt")
            assert last["epoch"] == 0
            assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())

    return Case(run, EgoattnError, str(out / "checkpoints"), r"loss became NaN/inf in epoch 2")


def protect_unreadable_image(tmp, ctx):
    from egoattn.privacy.protect import read_image

    bad = tmp / "b.png"
    bad.write_bytes(b"\x89PNG not really")
    return Case(lambda: read_image(bad), BadInputError, str(bad), "not a readable image")


CORPUS: dict[str, Callable[[Path, Ctx], Case]] = {
    # videos and source layouts (prepare); builders shared with test_bad_input.py
    "zero-byte video": _prepared(case_zero_byte),
    "truncated AVI": _prepared(case_truncated),
    "truncated MP4 (index first)": _prepared(src_truncated_mp4),
    "text file named .mp4": _prepared(case_not_a_video),
    "image file named .mp4": _prepared(src_png_named_mp4),
    "video with no decodable frame": _prepared(case_no_decodable_frame),
    "segment shorter than a frame pair": _prepared(case_too_short),
    "segment beyond the video's end": _prepared(case_beyond_end),
    "segment reversed": _prepared(case_end_before_start),
    "segment with negative start": _prepared(src_negative_start),
    "segment with empty label": _prepared(src_empty_label),
    "segment video outside the source": _prepared(src_segment_escapes_root),
    "label not in the class list": _prepared(case_unknown_label),
    "missing flow frame": _prepared(case_missing_flow_frame),
    "extra flow frames": _prepared(src_extra_flow_frames),
    "unreadable frame image": _prepared(src_unreadable_frame),
    "frame of another size": _prepared(src_frame_size_differs),
    "synthetic manifest path outside the source": _prepared(src_synthetic_path_escapes),
    "clip id with a path in it": _prepared(src_synthetic_clip_id_with_slash),
    "motion maps fewer than frames (source)": src_motion_maps_missing,
    "comma / unicode class folder names": src_comma_and_unicode_class_folders,
    "read-only output folder": out_read_only,
    # prepared dataset and loader
    "clip shorter than the frames requested": clip_too_short,
    "motion maps fewer than frames (prepared clip)": clip_motion_count_differs,
    "requested modality missing (flow)": clip_missing_flow,
    "truncated clip zip": clip_truncated_zip,
    "manifest label not in classes.txt": manifest_unknown_label,
    "duplicate clip id in the manifest": manifest_duplicate_clip_id,
    "malformed manifest row": manifest_malformed_row,
    "manifest path outside the dataset": manifest_path_escapes,
    "duplicate class name": classes_duplicate,
    "empty class list": classes_empty,
    "comma in a class name": classes_comma,
    # checkpoints, recipes, training
    "corrupt checkpoint": ckpt_garbage,
    "truncated checkpoint": ckpt_truncated,
    "checkpoint of another model": ckpt_other_model,
    "checkpoint of another class count": ckpt_other_class_count,
    "--resume with another model": resume_other_model,
    "recipe with an unknown key": config_unknown_key,
    "recipe with a wrong type": config_wrong_type,
    "recipe that is not a mapping": config_not_a_mapping,
    "disk full while checkpointing": checkpoint_disk_full,
    "NaN loss": nan_loss,
    "unreadable image (protect)": protect_unreadable_image,
}
OUTCOMES: dict[str, str] = {}
NEEDS_REAL = {"truncated AVI": REAL / "videos" / "test.avi"}


@pytest.mark.parametrize("kind", list(CORPUS))
def test_bad_input_corpus(kind: str, tmp_path: Path, request, monkeypatch) -> None:
    if kind in NEEDS_REAL and not NEEDS_REAL[kind].is_file():
        pytest.skip("real sample video not present")
    case = CORPUS[kind](tmp_path, Ctx(request, monkeypatch))
    before = snapshot(tmp_path)
    if case.error is None:
        case.check(case.run())
        OUTCOMES[kind] = "accepted as documented"
    else:
        with pytest.raises(case.error) as err:
            case.run()
        message = str(err.value)
        assert case.path in message, message
        assert re.search(case.problem, message), message
        OUTCOMES[kind] = f"{type(err.value).__name__}: {message}"
    after = snapshot(tmp_path)
    changed = [str(p) for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"lost or changed: {changed[:5]}"  # nothing produced before is lost


def test_corpus_summary(capsys) -> None:
    """Runs after the corpus (file order): how many kinds were tried and how each ended."""
    assert len(CORPUS) >= 20
    with capsys.disabled():
        print(f"\nbad-input corpus: {len(CORPUS)} kinds, {len(OUTCOMES)} run here "
              f"({sum(v.startswith('accepted') for v in OUTCOMES.values())} documented acceptances)")
        for kind, outcome in OUTCOMES.items():
            print(f"  {kind:48s} {outcome[:150]}")


# ==================================================================================================
# 5. Loading never executes code
# ==================================================================================================

class _Payload:
    """Unpickling this creates the marker file: the kind of file an attacker would ship as a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_would_run_code_is_refused(reference_run, data, tmp_path, monkeypatch) -> None:
    live, marker = tmp_path / "live_marker", tmp_path / "marker"
    torch.save({"state_dict": {}, "x": _Payload(live)}, tmp_path / "live.ckpt")
    torch.load(tmp_path / "live.ckpt", weights_only=False)  # the payload works when loaded unsafely ...
    assert live.exists()
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["payload"] = _Payload(marker)
    for name in ("best", "last"):
        torch.save(ckpt, run / "checkpoints" / f"{name}.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # explicit weights_only=True still wins
    refused = r"refused: the checkpoint holds objects other than tensors.*could run code"
    best, last = run / "checkpoints" / "best.ckpt", run / "checkpoints" / "last.ckpt"
    with pytest.raises(BadInputError, match=refused):
        read_checkpoint(best)
    with pytest.raises(BadInputError, match=refused):
        load_run(run)  # evaluate, predict, explain, export
    recipe = apply_overrides(load_recipe("cpu_egornn"), [*TINY, f"init.from_run={{'': {str(run)!r}}}"])
    with pytest.raises(BadInputError, match=refused):
        load_init_weights(ActionRecognitionTask(recipe, CLASSES).model, recipe, CLASSES)  # train --init
    with pytest.raises(BadInputError, match=refused) as err:
        train("cpu_egornn", data=data, out=run, overrides=RESUME, resume=True)  # train --resume
    assert str(last) in str(err.value)
    with pytest.raises(Exception, match="Unsupported global"):
        AtomicCheckpointIO().load_checkpoint(last)  # what Lightning itself loads through
    assert not marker.exists()  # ... and never ran


def test_yaml_that_would_run_code_is_refused(tmp_path) -> None:
    live, marker = tmp_path / "live_marker", tmp_path / "marker"
    payload = "!!python/object/apply:os.system [\"touch {}\"]"
    yaml.unsafe_load(f"x: {payload.format(live)}")  # the recipe works when loaded unsafely ...
    assert live.exists()
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: {payload.format(marker)}\nmodel: {{name: egornn}}\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: not valid YAML .*python/object/apply"):
        load_recipe(path)
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_overrides(load_recipe("cpu_egornn"), [f"name={payload.format(marker)}"])
    with pytest.raises(BadInputError, match="not valid YAML"):
        from egoattn.fileio import read_yaml

        read_yaml(path)
    assert not marker.exists()  # ... and never ran


def test_manifest_paths_cannot_leave_the_dataset(tmp_path) -> None:
    root = _clip_root(tmp_path / "data")
    outside = tmp_path / "elsewhere" / "b.zip"
    write_clip(outside, "b", 10)
    for bad in ("../elsewhere/b.zip", str(outside), "clips/../../elsewhere/b.zip"):
        records = [ClipRecord("b", bad, "open_jam", "open", "jam", "S1", 0, 10, 10.0, 10)]
        write_manifest(root / "manifest.csv", records)
        with pytest.raises(BadInputError, match=f"{re.escape(bad)}: path escapes the dataset root"):
            _datamodule(root)
    assert resolve_inside(root, "../elsewhere/b.zip", allow_outside=True) == outside.resolve()  # only when asked


def test_prepare_writes_nothing_outside_its_output(tmp_path) -> None:
    """A source manifest naming clip ids with paths and videos outside the source: skipped, nothing escapes."""
    root = make_synthetic(tmp_path / "deep" / "src", clips=("c0", "c1", "c2"))
    rows = read_manifest(root / "manifest.csv")
    rows[1] = ClipRecord(**{**rows[1].__dict__, "clip_id": "../../pwned"})
    shutil.copy(root / "videos" / "c2.mp4", tmp_path / "c2.mp4")
    rows[2] = ClipRecord(**{**rows[2].__dict__, "path": str(tmp_path / "c2.mp4")})  # absolute, outside
    write_manifest(root / "manifest.csv", rows)
    out = tmp_path / "deep" / "out"
    before = {p for p in tmp_path.rglob("*")}
    report = prepare_dataset(root, out, PrepareOptions(format="synthetic", short_side=0, flow="none", workers=1,
                                                       progress=False, skip_bad=True))
    assert [r.clip_id for r in report.records] == ["c0"] and len(report.bad) == 2
    new = {p for p in tmp_path.rglob("*")} - before
    outside = sorted(str(p) for p in new if p != out and out not in p.parents)
    assert not outside, outside


# ==================================================================================================
# 6. DDP: a killed rank fails the run quickly; --resume continues
# ==================================================================================================

def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


@pytest.mark.slow  # two 2-process runs on two cores: about 70 s
def test_ddp_run_with_a_killed_rank_fails_quickly_and_resumes(data, tmp_path) -> None:
    out = tmp_path / "ddp"
    args = cli("train", "cpu_egornn", "--data", str(data), "--out", str(out), "--devices", "2",
               *sets([*TINY, "train.epochs=3"]))
    p = start(args, tmp_path / "ddp.log")
    wait_for(lambda: (out / "checkpoints" / "last.ckpt").exists(), p, timeout=600)
    ranks = [k for k in _children(p.pid) if "egoattn.cli" in Path(f"/proc/{k}/cmdline").read_text()]
    assert len(ranks) == 1, ranks  # Lightning starts rank 1 as a child of rank 0
    time.sleep(random.Random(SEED + 3).uniform(0.0, 0.5))
    os.kill(ranks[0], signal.SIGKILL)
    t0 = time.monotonic()
    try:
        p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        kill_group(p)
        pytest.fail("rank 0 hung after rank 1 was killed")
    waited = time.monotonic() - t0
    print(f"rank 0 exited with {p.returncode} {waited:.1f} s after rank 1 was killed")
    assert p.returncode != 0
    err = p.log.read_text()
    if p.returncode == 2:  # our message (not Lightning's kill of the whole group)
        assert "another DDP process died or stopped answering" in err and "--resume" in err
    read_checkpoint(out / "checkpoints" / "last.ckpt")
    result = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3
