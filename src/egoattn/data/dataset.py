"""The loader: `ClipDataset` returns one clip as a dict (ARCHITECTURE.md, "A clip as the loader
returns it"); `EgoDataModule` wires a prepared dataset, a named split and the validation choice
into Lightning data loaders.

Randomness is a generator per item seeded from (seed, epoch, index), so a run is repeatable and
independent of the number of workers. The epoch lives in shared memory so persistent workers see
`set_epoch`; `EpochSampler.set_epoch` (called by Lightning at each epoch start) forwards it.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from egoattn.data.clipstore import ClipReader
from egoattn.data.manifest import ClipRecord, read_classes, read_manifest, resolve_inside, split_records
from egoattn.data.samplers import (
    ConsecutiveSampler,
    FlowStackSampler,
    OrderTupleSampler,
    ShortClipError,
    UniformSampler,
)
from egoattn.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize, test_transform, train_transform
from egoattn.data.workers import one_thread_per_worker, worker_context
from egoattn.errors import BadInputError, ConfigError

MODALITIES = ("rgb", "flow", "warp", "flow_pair", "motion", "mask", "keypoints", "order")
"""What a ClipDataset can load; `order` yields `order_rgb` and `order_label`."""
FRAME_MODALITIES = {"rgb", "flow_pair", "motion", "mask", "keypoints"}  # read at the sampled frames
FLOW_STACK_MODALITIES = {"flow", "warp"}  # read as stacks of the flow sampler

Transform = Callable[[dict[str, Any], "np.random.Generator | None"], dict[str, Any]]


def load_prepared(root: str | Path) -> tuple[list[str], list[ClipRecord]]:
    """Read a prepared dataset's classes.txt and manifest.csv (every label must be a listed class)."""
    root = Path(root)
    classes = read_classes(root / "classes.txt")
    return classes, read_manifest(root / "manifest.csv", classes)


def _read_unique(read: Callable[[list[int]], np.ndarray], indices: np.ndarray) -> np.ndarray:
    """Decode each distinct index once (samplers may repeat frames), then expand."""
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    unique, inverse = np.unique(flat, return_inverse=True)
    frames = read([int(i) for i in unique])
    if unique.size == flat.size and np.array_equal(unique, flat):  # distinct and in order: no gather copy
        return frames.reshape(np.shape(indices) + frames.shape[1:])
    return frames[inverse].reshape(np.shape(indices) + frames.shape[1:])


class ClipDataset(Dataset):
    """Prepared clips as loader dicts; reads only the sampled frames of each clip.

    `sampler` picks the T frame indices (rgb, flow_pair, motion, mask, keypoints);
    `flow_sampler` the flow stacks (default: 5 flows, random start at train, centred at test);
    `order_sampler` the order-prediction tuple. With `train=False` samplers and transforms get no
    rng (deterministic), except the order tuple, which is seeded by (seed, index) only.
    """

    def __init__(
        self,
        root: str | Path,
        records: Sequence[ClipRecord],
        classes: Sequence[str],
        modalities: Sequence[str],
        sampler: Callable[[int, np.random.Generator | None], np.ndarray],
        transform: Transform,
        flow_sampler: FlowStackSampler | None = None,
        order_sampler: OrderTupleSampler | None = None,
        seed: int = 0,
        train: bool = True,
    ) -> None:
        self.root = Path(root)
        self.records = list(records)
        self.classes = list(classes)
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ConfigError(f"unknown modalities {unknown} (choose from {MODALITIES})" if unknown
                              else "no modalities requested")
        self.modalities = tuple(dict.fromkeys(modalities))
        self.sampler = sampler
        self.transform = transform
        self.flow_sampler = flow_sampler or FlowStackSampler(5, "random" if train else "centre")
        self.order_sampler = order_sampler or OrderTupleSampler()
        self.seed = int(seed)
        self.train = train
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        manifest = self.root / "manifest.csv"
        for rec in self.records:
            if rec.label not in self.class_index:
                raise BadInputError(manifest, f"clip {rec.clip_id!r} has label {rec.label!r}, not in classes.txt")
        self._paths = []
        for rec in self.records:
            try:
                self._paths.append(resolve_inside(self.root, rec.path))
            except BadInputError as e:
                raise BadInputError(manifest, f"clip {rec.clip_id!r}: {e}") from None
        # Shared memory: DataLoader workers (forked or spawned, persistent or not) see set_epoch.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """New random crops, flips and frame draws per epoch (training only)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.records)

    def item_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch if self.train else 0, int(index)])

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec, path = self.records[index], self._paths[index]
        reader = ClipReader(path)
        try:
            rng = self.item_rng(index)
            clip = self._load(reader, rec, rng if self.train else None, rng)
        except ShortClipError as e:
            raise BadInputError(path, e.problem) from None
        finally:
            reader.close()
        return self.transform(clip, rng if self.train else None)

    def _load(self, reader: ClipReader, rec: ClipRecord, rng: np.random.Generator | None,
              order_rng: np.random.Generator) -> dict[str, Any]:
        n = reader.num_frames
        mods = self.modalities
        wants_stacks = bool(FLOW_STACK_MODALITIES & set(mods))
        # Frames are sampled only when a per-frame modality is read (a flow-only clip need not be as
        # long as the frame sampler wants); then frame_indices are the frames its flows start at.
        frames = None
        if FRAME_MODALITIES & set(mods) or not wants_stacks:
            frames = np.asarray(self.sampler(n, rng), dtype=np.int64)
        # One draw for both flow and warp, so that the two cover the same frames.
        stacks = self.flow_sampler.indices(self.flow_sampler(n, rng), n) if wants_stacks else None
        if frames is None:
            frames = np.unique(np.asarray(stacks, dtype=np.int64))
        clip: dict[str, Any] = {
            "label": self.class_index[rec.label],
            "clip_id": rec.clip_id,
            "frame_indices": frames,
            "frame_size": (int(reader.meta["height"]), int(reader.meta["width"])),
        }
        if "rgb" in mods:
            clip["rgb"] = _read_unique(reader.read_rgb, frames)
        for kind in ("flow", "warp"):
            if kind in mods:
                clip[kind] = _read_unique(lambda idx, k=kind: reader.read_flow(k, idx), stacks)
        if "flow_pair" in mods:
            if n < 2:
                raise ShortClipError(f"clip has {n} frame, so no optical flow")
            clip["flow_pair"] = _read_unique(lambda idx: reader.read_flow("flow", idx), np.minimum(frames, n - 2))
        for kind in ("motion", "mask"):
            if kind in mods:
                clip[kind] = _read_unique(lambda idx, k=kind: reader.read_gray(k, idx), frames)
        if "keypoints" in mods:
            keypoints = reader.read_array("keypoints")
            if keypoints.ndim != 3 or keypoints.shape[0] != n or keypoints.shape[2] != 3:
                raise BadInputError(reader.path, f"keypoints shape {keypoints.shape}, expected ({n}, J, 3)")
            clip["keypoints"] = keypoints[frames].astype(np.float32)
        if "order" in mods:
            order_frames, clip["order_label"] = self.order_sampler(n, order_rng)
            clip["order_rgb"] = _read_unique(reader.read_rgb, order_frames)
        return clip


class EpochSampler(Sampler[int]):
    """Indices in a (seed, epoch)-determined order; `set_epoch` also sets the dataset's epoch.

    Lightning calls `set_epoch` on the loader's sampler at the start of every training epoch.
    """

    def __init__(self, dataset: ClipDataset, shuffle: bool, seed: int = 0) -> None:
        self.dataset, self.shuffle, self.seed, self.epoch = dataset, shuffle, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        return iter(order.tolist())

    def __len__(self) -> int:
        return len(self.dataset)


def holdout_split(records: Sequence[ClipRecord], fraction: float, seed: int) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """Stratified, seed-determined hold-out: (train, val) with about `fraction` of each class in val.

    Systematic sampling per class (shuffled clips, random offset) ranks clips so that taking the
    round(fraction * n) lowest ranks overall is proportional per class; every class keeps at least one
    training clip, and at least one clip is held out.
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[ClipRecord]] = defaultdict(list)
    for rec in sorted(records, key=lambda r: r.clip_id):
        by_class[rec.label].append(rec)
    ranked: list[tuple[float, str]] = []
    for label in sorted(by_class):
        clips = by_class[label]
        order, offset = rng.permutation(len(clips)), rng.random()
        ranked += [((rank + offset) / len(clips), clips[i].clip_id) for rank, i in enumerate(order[:-1])]
    if not ranked:
        raise ConfigError("no class has two training clips, so none can be held out; use val='test'")
    n_val = min(len(ranked), max(1, round(fraction * len(records))))
    held = {clip_id for _, clip_id in sorted(ranked)[:n_val]}
    return [r for r in records if r.clip_id not in held], [r for r in records if r.clip_id in held]


class EgoDataModule(L.LightningDataModule):
    """Prepared dataset -> train / val / test loaders for a named split.

    `val="holdout"` (default) validates on a stratified `val_fraction` of the training clips chosen
    by `seed`; `val="test"` validates on the test split as the reference code does, which selects
    checkpoints on the test set and so reports optimistic accuracies.
    Flow at test time: `flow_test_stacks=1` is the centred stack; k > 1 gives k evenly spaced stacks
    (the references average the logits over 5). Flow in training: `flow_train_start="random"` (the
    references) draws the stack's start uniformly over the clip; `"centre"` takes the test-time centred
    stack, shifted by up to `flow_train_jitter` flows (see FlowStackSampler).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "gtea61",
        modalities: Sequence[str] = ("rgb",),
        num_frames: int = 25,
        sampler: str = "uniform",
        size: int = 224,
        resize: int = 256,
        flow_stack: int = 5,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        val: str = "holdout",
        val_fraction: float = 0.15,
        flow_test_stacks: int = 1,
        flow_train_start: str = "random",
        flow_train_jitter: int = 0,
        flow_size: int | None = None,
        short_clip: str = "error",
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if sampler not in ("uniform", "consecutive"):
            raise ConfigError(f"sampler must be 'uniform' or 'consecutive', got {sampler!r}")
        if val not in ("holdout", "test"):
            raise ConfigError(f"val must be 'holdout' or 'test', got {val!r}")
        if short_clip not in ("error", "repeat"):
            raise ConfigError(f"short_clip must be 'error' or 'repeat', got {short_clip!r}")
        if flow_train_start not in ("random", "centre"):
            raise ConfigError(f"flow_train_start must be 'random' or 'centre', got {flow_train_start!r}")
        if int(flow_train_jitter) < 0:
            raise ConfigError(f"flow_train_jitter must be >= 0, got {flow_train_jitter}")
        self.root = Path(root)
        self.split, self.modalities, self.num_frames = split, tuple(modalities), int(num_frames)
        self.sampler_name, self.size, self.resize, self.flow_stack = sampler, int(size), int(resize), int(flow_stack)
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.val, self.val_fraction, self.flow_test_stacks = val, float(val_fraction), int(flow_test_stacks)
        self.flow_train_start, self.flow_train_jitter = flow_train_start, int(flow_train_jitter)
        self.flow_size = int(flow_size) if flow_size else None
        self.short_clip = short_clip
        self.mean, self.std = tuple(mean), tuple(std)  # the backbone's input normalisation
        self.normalize = Normalize(self.mean, self.std)  # type: ignore[arg-type]
        self.classes: list[str] = read_classes(self.root / "classes.txt")
        self.train_set: ClipDataset | None = None
        self.val_set: ClipDataset | None = None
        self.test_set: ClipDataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _frame_sampler(self) -> UniformSampler | ConsecutiveSampler:
        cls = UniformSampler if self.sampler_name == "uniform" else ConsecutiveSampler
        return cls(self.num_frames, short_clip=self.short_clip)  # type: ignore[arg-type]

    def _dataset(self, records: list[ClipRecord], train: bool, flow_sampler: FlowStackSampler) -> ClipDataset:
        transform = (train_transform if train else test_transform)(self.size, self.resize, self.flow_size)
        return ClipDataset(self.root, records, self.classes, self.modalities, self._frame_sampler(), transform,
                           flow_sampler=flow_sampler, seed=self.seed, train=train)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        classes, records = load_prepared(self.root)
        self.classes = classes
        train, test = split_records(records, self.split)
        val = test
        if self.val == "holdout":
            train, val = holdout_split(train, self.val_fraction, self.seed)

        def flow(mode: Any, k: int = 1, jitter: int = 0) -> FlowStackSampler:
            return FlowStackSampler(self.flow_stack, mode, k, self.short_clip, jitter)  # type: ignore[arg-type]

        self.train_set = self._dataset(train, True, flow(self.flow_train_start, jitter=self.flow_train_jitter))
        self.val_set = self._dataset(val, False, flow("centre"))
        self.test_set = self._dataset(
            test, False, flow("centre") if self.flow_test_stacks == 1 else flow("even", self.flow_test_stacks))

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """The loaders ship uint8; Lightning hands each batch here once it is on its device."""
        return self.normalize(batch)

    def set_epoch(self, epoch: int) -> None:
        """For loops that do not call the sampler's set_epoch (e.g. a DDP-wrapped sampler)."""
        if self.train_set is not None:
            self.train_set.set_epoch(epoch)

    def _loader(self, dataset: ClipDataset | None, shuffle: bool) -> DataLoader:
        assert dataset is not None, "setup() builds the datasets"
        workers = self.num_workers
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=EpochSampler(dataset, shuffle, self.seed),
            num_workers=workers, persistent_workers=workers > 0, drop_last=False,
            worker_init_fn=one_thread_per_worker if workers > 0 else None,
            multiprocessing_context=worker_context() if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_set, shuffle=False)
