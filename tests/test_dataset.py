"""ClipDataset and EgoDataModule on tiny prepared clips whose pixel values encode frame indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from egoattn.data.clipstore import ClipWriter
from egoattn.data.dataset import ClipDataset, EgoDataModule, EpochSampler, holdout_split, load_prepared
from egoattn.data.manifest import ClipRecord, write_classes, write_manifest
from egoattn.data.samplers import ConsecutiveSampler, FlowStackSampler, UniformSampler, order_class
from egoattn.data.transforms import Compose, Normalize, ToTensorClip, test_transform, train_transform
from egoattn.errors import BadInputError, ConfigError

H, W = 24, 32
CLASSES = ["open_jam", "close_jam", "take_bread"]
GREEN = (4 * np.arange(W)[None, :] + 2 * np.arange(H)[:, None]).astype(np.uint8)
ALL = ("rgb", "flow", "warp", "flow_pair", "motion", "mask", "keypoints", "order")


def rgb_value(i: int) -> int:
    return 20 + 8 * i


def write_clip(path: Path, clip_id: str, n: int, kinds: tuple[str, ...] = ("flow", "warp", "motion", "mask", "keypoints")) -> None:
    """Frame i: rgb channel 0 = 20 + 8i (flat, so JPEG keeps it), green a ramp (so crops differ); flow x = 5i, y = 5i + 2 (warp +1);
    motion = 3i; mask = i % 2; keypoints (i, 2i, 1)."""
    rgb = np.zeros((n, H, W, 3), np.uint8)
    for i in range(n):
        rgb[i, ..., 0], rgb[i, ..., 1], rgb[i, ..., 2] = rgb_value(i), GREEN, 60
    flow = np.zeros((n - 1, H, W, 2), np.uint8)
    for i in range(n - 1):
        flow[i, ..., 0], flow[i, ..., 1] = 5 * i, 5 * i + 2
    with ClipWriter(path, clip_id, fps=10.0) as w:
        w.add_rgb(rgb)
        if "flow" in kinds:
            w.add_flow("flow", flow, 20.0, "test")
        if "warp" in kinds:
            w.add_flow("warp", flow + 1, 20.0, "test")
        if "motion" in kinds:
            w.add_gray("motion", (3 * np.arange(n, dtype=np.uint8))[:, None, None].repeat(H, 1).repeat(W, 2))
        if "mask" in kinds:
            w.add_gray("mask", (np.arange(n, dtype=np.uint8) % 2)[:, None, None].repeat(H, 1).repeat(W, 2))
        if "keypoints" in kinds:
            kp = np.stack([np.arange(n), 2 * np.arange(n), np.ones(n)], -1)[:, None].repeat(2, 1)
            w.add_array("keypoints", kp.astype(np.float32))


def make_dataset(root: Path, per_class_subject: int = 1, n: int = 12, subjects=("S1", "S2", "S3", "S4")) -> list[ClipRecord]:
    records = []
    for s in subjects:
        for c, label in enumerate(CLASSES):
            for k in range(per_class_subject):
                clip_id = f"{s}_{label}_{k}"
                write_clip(root / "clips" / f"{clip_id}.zip", clip_id, n + c)
                verb, noun = label.split("_")
                records.append(ClipRecord(clip_id, f"clips/{clip_id}.zip", label, verb, noun, s, 0, n + c, 10.0, n + c))
    write_classes(root / "classes.txt", CLASSES)
    write_manifest(root / "manifest.csv", records)
    return records


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = tmp_path_factory.mktemp("prepared")
    make_dataset(r)
    return r


RAW = Compose((ToTensorClip(), Normalize()))  # no spatial change: pixel values can be decoded exactly


def raw_u8(x: torch.Tensor) -> np.ndarray:
    """Undo the flow normalisation: back to the stored 8-bit value."""
    return np.round((x.numpy() * 0.226 + 0.449) * 255).astype(int)


def test_item_shapes_and_contents(root: Path) -> None:
    classes, records = load_prepared(root)
    assert classes == CLASSES and len(records) == 12
    ds = ClipDataset(root, records, classes, ALL, UniformSampler(5), RAW,
                     flow_sampler=FlowStackSampler(5, "even", 2), train=False)
    item = ds[1]  # S1_close_jam_0, 13 frames
    rec = records[1]
    assert item["clip_id"] == rec.clip_id and int(item["label"]) == 1 and item["label"].dtype == torch.int64
    idx = item["frame_indices"]
    assert idx.dtype == torch.int64 and idx.tolist() == [0, 2, 4, 7, 9]  # ((13 - 1) * t) // 5
    assert item["rgb"].shape == (5, 3, H, W) and item["rgb"].dtype == torch.float32
    red = item["rgb"][:, 0].mean(dim=(1, 2)).numpy() * 0.229 + 0.485
    np.testing.assert_allclose(red * 255, [rgb_value(i) for i in idx.tolist()], atol=3)
    # flow stacks: 12 flows, starts linspace(0, 7, 2) -> 0, 7; channels x1, y1, x2, y2, ...
    assert item["flow"].shape == item["warp"].shape == (2, 10, H, W)
    flow = raw_u8(item["flow"][:, :, 0, 0])
    expected = [[5 * (s + l) + a * 2 for l in range(5) for a in (0, 1)] for s in (0, 7)]
    assert flow.tolist() == expected
    assert raw_u8(item["warp"][:, :, 0, 0]).tolist() == (np.array(expected) + 1).tolist()
    assert item["flow_pair"].shape == (5, 2, H, W)
    assert raw_u8(item["flow_pair"][:, :, 0, 0]).tolist() == [[5 * i, 5 * i + 2] for i in idx.tolist()]
    assert item["motion"].shape == (5, H, W) and item["motion"][:, 0, 0].tolist() == pytest.approx(
        [3 * i / 255 for i in idx.tolist()])
    assert item["mask"][:, 0, 0].tolist() == [i % 2 for i in idx.tolist()]
    assert item["keypoints"].shape == (5, 2, 3) and item["keypoints"][:, 0].tolist() == [[i, 2 * i, 1] for i in idx.tolist()]
    assert item["order_rgb"].shape == (4, 3, H, W) and item["order_label"].dtype == torch.int64
    order_frames = np.round((item["order_rgb"][:, 0, 0, 0].numpy() * 0.229 + 0.485) * 255 - 20) / 8
    assert order_class(np.argsort(np.argsort(order_frames))) == int(item["order_label"])


def test_flow_pair_clamped_to_last_flow(root: Path) -> None:
    _, records = load_prepared(root)
    ds = ClipDataset(root, records[:1], CLASSES, ("flow_pair",), ConsecutiveSampler(12), RAW, train=False)
    item = ds[0]  # 12 frames, 11 flows: frame 11 uses flow 10
    assert item["frame_indices"].tolist() == list(range(12))
    assert raw_u8(item["flow_pair"][:, 0, 0, 0]).tolist() == [5 * min(i, 10) for i in range(12)]


def test_seeded_randomness(root: Path) -> None:
    _, records = load_prepared(root)
    make = lambda seed: ClipDataset(root, records, CLASSES, ("rgb", "flow", "mask", "order"), UniformSampler(4),  # noqa: E731
                                    train_transform(16, resize=20), seed=seed, train=True)
    a, b = make(0), make(0)
    x, y = a[3], b[3]
    for key in ("rgb", "flow", "mask", "order_rgb"):
        assert torch.equal(x[key], y[key])
    changed = 0
    for epoch in (1, 2, 3):
        b.set_epoch(epoch)
        z = b[3]
        changed += not torch.equal(x["rgb"], z["rgb"])
    assert changed >= 2  # another epoch draws another crop/flip (same crop by chance: 1 in 40)
    b.set_epoch(0)
    assert torch.equal(b[3]["flow"], x["flow"])
    # evaluation mode ignores the epoch
    ev = ClipDataset(root, records, CLASSES, ("rgb",), UniformSampler(4), test_transform(16, 20), train=False)
    first = ev[2]["rgb"]
    ev.set_epoch(5)
    assert torch.equal(ev[2]["rgb"], first)


def _batches(ds: ClipDataset, workers: int, epochs: int) -> list[dict]:
    sampler = EpochSampler(ds, shuffle=True, seed=1)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out.append(next(iter(loader)))
    return out


def test_workers_give_the_same_batches(root: Path) -> None:
    _, records = load_prepared(root)
    make = lambda: ClipDataset(root, records, CLASSES, ("rgb", "flow"), UniformSampler(4),  # noqa: E731
                               train_transform(16, resize=20), seed=7, train=True)
    zero, two = _batches(make(), 0, 2), _batches(make(), 2, 2)
    for a, b in zip(zero, two):
        assert a["clip_id"] == b["clip_id"]
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["flow"], b["flow"])
    assert zero[0]["clip_id"] != zero[1]["clip_id"]  # a new epoch reshuffles ...
    # ... and persistent workers saw the new epoch: same result as a fresh dataset at epoch 1
    fresh = make()
    fresh.set_epoch(1)
    clip_ids = [r.clip_id for r in records]
    first = fresh[clip_ids.index(two[1]["clip_id"][0])]
    assert torch.equal(first["rgb"], two[1]["rgb"][0])


def test_missing_modality_names_the_file(tmp_path: Path) -> None:
    write_clip(tmp_path / "clips" / "a.zip", "a", 10, kinds=("flow",))
    rec = ClipRecord("a", "clips/a.zip", "open_jam", "open", "jam", "S1", 0, 10, 10.0, 10)
    ds = ClipDataset(tmp_path, [rec], CLASSES, ("rgb", "mask"), UniformSampler(4), RAW, train=False)
    with pytest.raises(BadInputError, match=r"a\.zip: clip has no 'mask' modality"):
        ds[0]
    ds = ClipDataset(tmp_path, [rec], CLASSES, ("keypoints",), UniformSampler(4), RAW, train=False)
    with pytest.raises(BadInputError, match=r"a\.zip.*keypoints"):
        ds[0]


def test_short_clip_names_the_file(tmp_path: Path) -> None:
    write_clip(tmp_path / "clips" / "short.zip", "short", 6)
    rec = ClipRecord("short", "clips/short.zip", "open_jam", "open", "jam", "S1", 0, 6, 10.0, 6)
    ds = ClipDataset(tmp_path, [rec], CLASSES, ("rgb",), UniformSampler(8), RAW, train=False)
    with pytest.raises(BadInputError, match=r"short\.zip: clip has 6 frames, the uniform sampler needs 8"):
        ds[0]
    ds = ClipDataset(tmp_path, [rec], CLASSES, ("flow",), UniformSampler(4), RAW,
                     flow_sampler=FlowStackSampler(10, "centre"), train=False)
    with pytest.raises(BadInputError, match=r"short\.zip: clip has 5 flow frames"):
        ds[0]
    ds = ClipDataset(tmp_path, [rec], CLASSES, ("rgb",), UniformSampler(8, short_clip="repeat"), RAW, train=False)
    assert ds[0]["frame_indices"].tolist() == [0, 0, 1, 1, 2, 3, 3, 4]  # (5 * t) // 8
    # A flow-only clip reads no frames, so the frame sampler's length does not apply; in training as in
    # testing the stacks are where the flow sampler puts them, and flow and warp are one draw.
    ds = ClipDataset(tmp_path, [rec], CLASSES, ("flow",), UniformSampler(8), RAW,
                     flow_sampler=FlowStackSampler(3, "centre"), train=False)
    assert tuple(ds[0]["flow"].shape[:2]) == (1, 6) and ds[0]["frame_indices"].tolist() == [1, 2, 3]
    write_clip(tmp_path / "clips" / "both.zip", "both", 12, kinds=("flow", "warp"))
    both = ClipRecord("both", "clips/both.zip", "open_jam", "open", "jam", "S1", 0, 12, 10.0, 12)
    for seed in range(5):
        item = ClipDataset(tmp_path, [both], CLASSES, ("flow", "warp"), UniformSampler(25), RAW,
                           flow_sampler=FlowStackSampler(3, "random"), train=True, seed=seed)[0]
        assert (raw_u8(item["warp"]) - raw_u8(item["flow"]) == 1).all()  # warp = flow + 1 at the same stack


def test_bad_manifest_entries(tmp_path: Path) -> None:
    write_clip(tmp_path / "clips" / "a.zip", "a", 10)
    rec = ClipRecord("a", "clips/a.zip", "eat_cake", "eat", "cake", "S1", 0, 10, 10.0, 10)
    with pytest.raises(BadInputError, match=r"manifest\.csv: clip 'a' has label 'eat_cake'"):
        ClipDataset(tmp_path, [rec], CLASSES, ("rgb",), UniformSampler(4), RAW)
    escape = ClipRecord("a", "../a.zip", "open_jam", "open", "jam", "S1", 0, 10, 10.0, 10)
    with pytest.raises(BadInputError, match="escapes the dataset root"):
        ClipDataset(tmp_path, [escape], CLASSES, ("rgb",), UniformSampler(4), RAW)
    with pytest.raises(ConfigError, match="unknown modalities"):
        ClipDataset(tmp_path, [], CLASSES, ("rgb", "depth"), UniformSampler(4), RAW)
    missing = ClipRecord("b", "clips/b.zip", "open_jam", "open", "jam", "S1", 0, 10, 10.0, 10)
    with pytest.raises(BadInputError, match=r"b\.zip: prepared clip not found"):
        ClipDataset(tmp_path, [missing], CLASSES, ("rgb",), UniformSampler(4), RAW)[0]


def test_holdout_split_is_stratified_and_seeded(tmp_path: Path) -> None:
    records = [ClipRecord(f"{c}{k}", "x", c, "v", "n", "S1", 0, 1, 1.0, 1) for c in "abc" for k in range(10)]
    records += [ClipRecord("d0", "x", "d", "v", "n", "S1", 0, 1, 1.0, 1)]  # a class with one clip
    train, val = holdout_split(records, 0.2, seed=3)
    assert len(val) == round(0.2 * 31) == 6 and len(train) == 25
    assert {r.clip_id for r in train}.isdisjoint(r.clip_id for r in val)
    assert sorted(sum(r.label == c for r in val) for c in "abc") == [2, 2, 2]
    assert "d0" in {r.clip_id for r in train}
    assert [r.clip_id for r in holdout_split(records, 0.2, seed=3)[1]] == [r.clip_id for r in val]
    assert [r.clip_id for r in holdout_split(records, 0.2, seed=4)[1]] != [r.clip_id for r in val]
    with pytest.raises(ConfigError):
        holdout_split(records[-1:], 0.2, seed=0)


def test_datamodule(root: Path) -> None:
    dm = EgoDataModule(root, split="gtea61", modalities=("rgb", "flow"), num_frames=4, size=16, resize=20,
                       batch_size=4, num_workers=0, seed=0, val_fraction=0.34)
    assert dm.classes == CLASSES and dm.num_classes == 3
    dm.setup("fit")
    train_ids = {r.clip_id for r in dm.train_set.records}
    val_ids = {r.clip_id for r in dm.val_set.records}
    test_ids = {r.clip_id for r in dm.test_set.records}
    assert test_ids == {f"S2_{c}_0" for c in CLASSES}  # gtea61 tests on S2
    assert len(val_ids) == 3 and train_ids.isdisjoint(val_ids) and val_ids.isdisjoint(test_ids)
    assert len(train_ids) == 6
    batch = next(iter(dm.train_dataloader()))
    assert batch["rgb"].shape == (4, 4, 3, 16, 16) and batch["flow"].shape == (4, 1, 10, 16, 16)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    # uint8 out of the loader; normalised with the DataModule's mean/std once on the device
    assert batch["rgb"].dtype == batch["flow"].dtype == torch.uint8
    on_device = dm.on_after_batch_transfer(batch, 0)
    assert on_device["rgb"].dtype == on_device["flow"].dtype == torch.float32
    assert torch.equal(on_device["rgb"], Normalize(dm.mean, dm.std)(batch)["rgb"])
    loader = dm.test_dataloader()
    assert not loader.drop_last and len(loader) == 1 and len(loader.dataset) == 3

    dm2 = EgoDataModule(root, split="loso:S3", modalities=("rgb",), num_frames=4, size=16, resize=20,
                        val="test", num_workers=1, flow_test_stacks=5)
    dm2.setup()
    assert dm2.val_set.records == dm2.test_set.records
    assert dm2.test_set.flow_sampler.mode == "even" and dm2.test_set.flow_sampler.num_stacks == 5
    assert dm2.train_dataloader().persistent_workers
    with pytest.raises(ConfigError):
        EgoDataModule(root, val="train")


def test_lightning_sets_the_epoch_each_epoch(root: Path) -> None:
    import lightning as L

    dm = EgoDataModule(root, modalities=("rgb",), num_frames=2, size=8, resize=10, batch_size=8, seed=2, val_fraction=0.34)
    seen: list[tuple[int, int, tuple[str, ...]]] = []

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, len(CLASSES))

        def training_step(self, batch: dict, _: int) -> torch.Tensor:
            assert batch["rgb"].dtype == torch.float32  # Lightning ran the DataModule's on_after_batch_transfer
            seen.append((self.current_epoch, dm.train_set.epoch, tuple(batch["clip_id"])))
            logits = self.lin(batch["rgb"].mean(dim=(1, 3, 4)))
            return torch.nn.functional.cross_entropy(logits, batch["label"])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0).fit(Tiny(), datamodule=dm)
    assert [(e, d) for e, d, _ in seen] == [(0, 0), (1, 1), (2, 2)]  # dataset epoch follows the trainer's
    assert len({ids for _, _, ids in seen}) == 3  # and each epoch has its own (seeded) order


def _training_flow_starts(recipe_overrides: list[str], root: Path, epochs: int = 6) -> list[tuple[int, int]]:
    """(start of the training warp stack, start of the test stack) per training clip and epoch, decoded
    from the stored values (warp y of flow i is 5i + 3; y is not touched by the flip)."""
    from egoattn.training.config import apply_overrides, load_recipe
    from egoattn.training.run import make_datamodule

    small = ["data.size=16", "data.resize=20", "data.num_frames=4", "data.num_workers=0"]
    recipe = apply_overrides(load_recipe("cpu_flow"), [*small, *recipe_overrides])
    dm = make_datamodule(recipe, root, torch.nn.Identity())
    dm.setup()
    ds = dm.train_set
    out = []
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for i, rec in enumerate(ds.records):
            y = int(ds[i]["warp"][0, 1, 0, 0])  # the loader's stored uint8 value
            out.append((int((y - 3) // 5), (rec.num_frames - 1 - recipe.data.flow_stack) // 2))
    return out


def test_cpu_flow_trains_on_stacks_from_the_test_stack_phase(root: Path) -> None:
    # The CPU flow recipe stayed at chance on the synthetic data while its training stacks came from
    # anywhere in the clip (phases whose motion means the other class) and its test stack from the
    # centre. Its training stacks must start within flow_train_jitter flows of the test stack.
    jitter = 2
    pairs = _training_flow_starts([], root)
    offsets = [start - centre for start, centre in pairs]
    assert max(abs(o) for o in offsets) <= jitter and len(set(offsets)) == 2 * jitter + 1
    # The references' uniform start (still the default) does leave that phase, on these 12-14 frame clips.
    random = _training_flow_starts(["data.flow_train_start=random"], root)
    assert max(abs(s - c) for s, c in random) >= jitter + 2


def test_flow_train_start_is_validated(root: Path) -> None:
    with pytest.raises(ConfigError, match="flow_train_start"):
        EgoDataModule(root, modalities=("warp",), flow_train_start="middle")
    with pytest.raises(ConfigError, match="flow_train_jitter"):
        EgoDataModule(root, modalities=("warp",), flow_train_jitter=-1)
