"""`egoattn explain`: clip choice, overlay files, attention scores against masks (known answers for the
centre prior), side-by-side comparison, video input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egoattn.data.clipstore import ClipWriter
import tinyrun
from egoattn.data.manifest import ClipRecord, write_classes, write_manifest
from egoattn.data.video import probe_video, write_video
from egoattn.errors import BadInputError
from egoattn.explain.explain import explain_run, select_clips

CLASSES = ["take_cup", "open_box", "pour_water"]
H, W = 64, 80
# Where each class's active object is: centred, off-centre (top left), the whole frame.
MASK_BOXES = {"take_cup": (24, 40, 32, 48), "open_box": (4, 20, 16, 32), "pour_water": (0, H, 0, W)}


def make_tiny_run(run_dir: Path, **kwargs) -> Path:
    return tinyrun.make_tiny_run(run_dir, CLASSES, **kwargs)


def make_prepared(root: Path, subjects=("S1", "S2"), per_class: int = 2, n: int = 10, masks: bool = True,
                  keypoints: bool = False) -> list[ClipRecord]:
    rng = np.random.default_rng(0)
    records = []
    for s in subjects:
        for label in CLASSES:
            for k in range(per_class):
                clip_id = f"{s}_{label}_{k}"
                rgb = rng.integers(0, 255, (n, H, W, 3), dtype=np.uint8)
                y0, y1, x0, x1 = MASK_BOXES[label]
                mask = np.zeros((n, H, W), np.uint8)
                mask[:, y0:y1, x0:x1] = 1
                rgb[:, y0:y1, x0:x1] = (255, 40, 40)
                with ClipWriter(root / "clips" / f"{clip_id}.zip", clip_id, fps=10.0) as w:
                    w.add_rgb(rgb)
                    if masks:
                        w.add_gray("mask", mask)
                    if keypoints:  # a 21-joint hand inside the object's box, x, y, visibility
                        hand = np.ones((n, 21, 3), np.float32)
                        hand[..., 0] = rng.uniform(x0, x1, (n, 21))
                        hand[..., 1] = rng.uniform(y0, y1, (n, 21))
                        w.add_array("keypoints", hand)
                verb, noun = label.split("_")
                records.append(ClipRecord(clip_id, f"clips/{clip_id}.zip", label, verb, noun, s, 0, n, 10.0, n))
    write_classes(root / "classes.txt", CLASSES)
    write_manifest(root / "manifest.csv", records)
    return records


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("explain")
    make_prepared(base / "prepared")
    return make_tiny_run(base / "run"), base / "prepared"


def test_select_clips_one_per_class_first() -> None:
    recs = [ClipRecord(f"S2_{c}_{k}", "", label, "", "", "S2", 0, 1, 1.0, 1)
            for c, label in enumerate(["b", "a", "c"]) for k in (1, 0)]
    chosen = [r.clip_id for r in select_clips(recs, ["a", "b", "c"], 5)]
    assert chosen == ["S2_1_0", "S2_0_0", "S2_2_0", "S2_0_1", "S2_1_1"]
    assert [r.clip_id for r in select_clips(recs, ["a", "b", "c"], 2)] == ["S2_1_0", "S2_0_0"]
    assert len(select_clips(recs, ["a", "b", "c"], 99)) == 6


def test_explain_dataset_like_the_demo(setup: tuple[Path, Path], tmp_path: Path) -> None:
    run, prepared = setup
    out = tmp_path / "attention"
    result = explain_run(run, prepared, split="gtea61", out=out, num_clips=4)  # the demo's call
    ids = [c["clip_id"] for c in result["clips"]]
    assert ids == ["S2_take_cup_0", "S2_open_box_0", "S2_pour_water_0", "S2_open_box_1"]
    for clip_id in ids:
        png = np.asarray(Image.open(out / f"{clip_id}.png"))
        assert png.shape == (4 * 224 + 3 * 2, 2 * 224 + 2, 3)  # 4 frames x [frame, attention]
        gif = Image.open(out / f"{clip_id}.gif")
        assert gif.n_frames == 4 and gif.size == (450, 224)
        info = probe_video(out / f"{clip_id}.mp4")
        assert (info.num_frames, info.width, info.height) == (4, 450, 224)
    assert result["clips"][0]["true"] == "take_cup"
    assert result["clips"][0]["predictions"]["run"]["label"] in CLASSES

    scores = json.loads((out / "attention_scores.json").read_text())
    assert scores["clips"] == 6 and scores["split"] == "gtea61"  # every S2 clip, not only the drawn ones
    prior = scores["centre_prior"]
    # Known answers: the centred object contains the prior's peak, the top-left one does not, and a
    # whole-frame mask holds all of the mass.
    assert prior["per_class"]["take_cup"]["pointing_game"] == 1.0
    assert prior["per_class"]["open_box"]["pointing_game"] == 0.0
    assert prior["per_class"]["pour_water"] == {"pointing_game": 1.0, "mass_inside": pytest.approx(1.0), "frames": 8}
    assert prior["overall"]["frames"] == 24 and prior["overall"]["pointing_game"] == pytest.approx(2 / 3)
    assert 0 < prior["per_class"]["take_cup"]["mass_inside"] < prior["per_class"]["pour_water"]["mass_inside"]
    model = scores["models"]["run"]
    assert model["attention"] and model["overall"]["frames"] == 24
    per_class = model["per_class"]
    assert per_class["pour_water"]["pointing_game"] == 1.0 and per_class["pour_water"]["mass_inside"] == pytest.approx(1.0)
    mean_pg = sum(v["pointing_game"] * v["frames"] for v in per_class.values()) / 24
    assert model["overall"]["pointing_game"] == pytest.approx(mean_pg)
    md = (out / "attention_scores.md").read_text()
    assert "| **overall** | 24 |" in md and "centre prior pointing" in md and "| open_box | 8 |" in md
    assert (out / "explain.json").is_file()


@pytest.mark.parametrize("model", ["pose_parts", "pose_separable"])
def test_pose_models_are_explained_and_scored(model: str, tmp_path: Path) -> None:
    """The pose-driven models read keypoints: explain loads them and scores their spatial maps."""
    import torch

    from egoattn.models.registry import create_model
    from egoattn.training.config import validate_recipe

    prepared = tmp_path / "prepared"
    make_prepared(prepared, keypoints=True)
    options = {"backbone": "resnet18", "weights": "none", "pose_hidden": 8, "pose_layers": 2, "attention_hidden": 4}
    if model == "pose_separable":
        options.update(num_frames=4, input_size=64)
    recipe = validate_recipe({"name": "tiny_pose", "model": {"name": model, "options": options},
                              "data": {"modalities": ["rgb", "keypoints"], "num_frames": 4, "size": 64,
                                       "resize": 72}}, "test")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    state = create_model(model, len(CLASSES), **options).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()},
                "hyper_parameters": {"recipe": recipe.model_dump(mode="json"), "classes": CLASSES}},
               run / "checkpoints" / "best.ckpt")
    write_classes(run / "classes.txt", CLASSES)
    result = explain_run(run, prepared, split="gtea61", out=tmp_path / "attention", num_clips=1)
    scored = result["scores"]["models"]["run"]
    assert scored["attention"] and scored["overall"]["frames"] == 24  # 6 S2 clips x 4 frames
    # a whole-frame object holds all of any map
    assert scored["per_class"]["pour_water"]["mass_inside"] == pytest.approx(1.0)
    assert (tmp_path / "attention" / f"{result['clips'][0]['clip_id']}.png").is_file()


def test_compare_side_by_side(setup: tuple[Path, Path], tmp_path: Path) -> None:
    run, prepared = setup
    other = tmp_path / "other" / "run"
    other.parent.mkdir()
    shutil.copytree(run, other)
    result = explain_run(run, prepared, split="gtea61", out=tmp_path / "cmp", num_clips=1, compare=other)
    png = np.asarray(Image.open(tmp_path / "cmp" / "S2_take_cup_0.png"))
    assert png.shape == (4 * 224 + 3 * 2, 3 * 224 + 2 * 2, 3)  # frame, model A, model B
    for r in range(4):  # same weights: same overlays below the label bands
        a = png[r * 226 + 30: r * 226 + 224, 226:450].astype(int)
        b = png[r * 226 + 30: r * 226 + 224, 452:676].astype(int)
        assert np.array_equal(a, b)
        assert np.abs(a - png[r * 226 + 30: r * 226 + 224, :224]).mean() > 5  # the heat map changes the frame
    models = result["scores"]["models"]
    assert list(models) == ["A:run", "B:run"]
    assert models["A:run"]["overall"] == models["B:run"]["overall"]


def test_dataset_without_masks_and_video_input(setup: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = setup
    make_prepared(tmp_path / "nomask", subjects=("S2",), per_class=1, masks=False)
    result = explain_run(run, tmp_path / "nomask", split="all", out=tmp_path / "o1", num_clips=2)
    assert result["scores"] is None and not (tmp_path / "o1" / "attention_scores.json").exists()
    assert len(result["clips"]) == 2

    video = tmp_path / "clip.mp4"
    write_video(video, np.random.default_rng(1).integers(0, 255, (20, 96, 128, 3), dtype=np.uint8), fps=10.0)
    result = explain_run(run, video, num_clips=1)
    out = run / "explain-clip"
    assert result["out"] == str(out) and result["clips"][0]["true"] is None
    assert Image.open(out / "clip.gif").n_frames == 4 and (out / "clip.mp4").is_file()


def test_bad_inputs(setup: tuple[Path, Path], tmp_path: Path) -> None:
    run, prepared = setup
    with pytest.raises(BadInputError, match="no manifest.csv"):
        explain_run(run, tmp_path)
    with pytest.raises(BadInputError, match="not found"):
        explain_run(run, tmp_path / "nothing.mp4")
    with pytest.raises(BadInputError, match="unknown split"):
        explain_run(run, prepared, split="nosuch", out=tmp_path / "x")
