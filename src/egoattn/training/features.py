"""Frozen-backbone feature cache (`egoattn train --cache-features`).

When no backbone parameter trains and the backbone stays in eval mode (Ego-RNN stage 1, the frame
average baseline), the backbone's per-frame output is a fixed function of the frames. Running it
once per clip and training the ConvLSTM / classifier from the cache gives the same loss as running
it at every step, at a fraction of the cost - on a CPU the backbone is almost all of a step.
When only the backbone's last stage trains (Ego-RNN stage 2, model option `train_last_stage`), the
cache holds the frozen trunk's output and the last stage runs at every step. The clip's other
modalities (motion maps for a motion-segmentation head, warp flow for a two-stream model's flow stream,
order frames) are stored with it as loaded, from the same view, and read at every step.

Augmentation: by default the cache holds ONE view per training clip, made with the deterministic
test transform (resize, centre crop, no flip), so a cached run trains on fixed views (more
over-fitting on small data). With `train.cache_views = V > 1` it also holds V - 1 views drawn with
the training sampler and transform (random scale, corner crop, flip), and each epoch reads one of
the V views per clip at random: the augmentation of an uncached run, limited to V draws, for V times
the caching cost and memory. Augmented views need a longer schedule: on the demo recipe (25 epochs,
held-out S2, seed 0, one run) 4 views gave 63.1 % top-1 with the training loss still at 0.97 at the
end; one fixed view gave 75.0 % and, rerun, 45.2 %, so single runs decide nothing. The cache lives in RAM (float32, so a cached step equals an uncached one to
float precision).
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from rich.progress import Progress
from torch import nn
from torch.utils.data import DataLoader, Dataset

from egoattn.data.dataset import ClipDataset, EgoDataModule
from egoattn.data.transforms import Normalize
from egoattn.errors import ConfigError
from egoattn.training.task import ActionRecognitionTask


def frame_encoder(model: nn.Module) -> tuple[nn.Module, str]:
    """The module whose frames are cached and its parameter-name prefix: a two-stream model caches its
    RGB stream (``model.rgb``); the flow stream reads its (stored) input at every step."""
    rgb = getattr(model, "rgb", None)
    return (rgb, "rgb.") if isinstance(rgb, nn.Module) and hasattr(rgb, "encode_frames") else (model, "")


def check_cacheable(task: ActionRecognitionTask, modalities: list[str] | tuple[str, ...]) -> None:
    """ConfigError unless the model's `encode_frames` is frozen: no gradient, no train-mode module."""
    model, name = task.model, task.recipe.model.name
    if not hasattr(model, "encode_frames"):
        raise ConfigError(f"--cache-features: model {name!r} has no encode_frames (no frozen backbone to cache)")
    if "rgb" not in modalities:
        raise ConfigError(f"--cache-features caches the features of rgb frames; this recipe loads {sorted(modalities)}")
    encoder, prefix = frame_encoder(model)
    task.train()
    backbone = getattr(encoder, "backbone", None)
    if backbone is not None and backbone.training:
        raise ConfigError(f"--cache-features: {prefix}backbone is not in params.eval_modules, so its BatchNorm "
                          "statistics and dropout would change during training")
    # The ImageNet fc may train (Ego-RNN stage 2's CAM): attention is computed from the *current* fc
    # on the cached f_bn. With `train_last_stage` the cache holds the trunk before the last stage, which
    # then runs (and may train) at every step; everything before it has to be frozen.
    last_stage_runs = bool(getattr(encoder, "train_last_stage", False))
    trainable = [n for n, p in encoder.named_parameters()
                 if p.requires_grad and n.startswith("backbone.") and not n.startswith("backbone.fc.")
                 and not (last_stage_runs and backbone.in_last_stage(n[len("backbone."):]))]
    if trainable:
        hint = "" if last_stage_runs else " (model option train_last_stage=true caches only the frozen trunk)"
        raise ConfigError(f"--cache-features needs a frozen backbone, but these backbone parameters train: "
                          f"{[prefix + n for n in trainable[:4]]}{' ...' if len(trainable) > 4 else ''}{hint}")


@torch.no_grad()
def encode_dataset(task: ActionRecognitionTask, dataset: ClipDataset, batch_size: int, device: torch.device,
                   normalize: Normalize, description: str = "caching features") -> list[dict[str, Any]]:
    """One item per clip: {"frame_features": {key: (T, ...) float32}} and the rest of the loader's item as
    loaded, still uint8 (label, clip_id, and other modalities: motion maps, flow, order frames - read and
    normalised at every step)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    model = task.model
    was_training = task.training
    task.train()  # the mode training runs in; the frozen part is in eval mode (checked above)
    model.to(device)
    items: list[dict[str, Any]] = []
    with Progress(transient=True) as progress:
        bar = progress.add_task(description, total=len(dataset))
        for batch in loader:
            features = model.encode_frames(normalize({"rgb": batch["rgb"].to(device)})["rgb"])
            for i in range(batch["rgb"].shape[0]):
                item = {k: v[i].clone() if isinstance(v, torch.Tensor) else v[i]
                        for k, v in batch.items() if k != "rgb"}
                item["frame_features"] = {k: v[i].float().cpu().clone() for k, v in features.items()}
                items.append(item)
            progress.advance(bar, batch["rgb"].shape[0])
    task.train(was_training)
    return items


class CachedClips(Dataset):
    """Cached clips, `views[v][i]` = view v of clip i; item i of an epoch is one of its views.

    The view is drawn from (seed, epoch, index), as ClipDataset draws its crops, so an epoch is the
    same whatever the loader order; `set_epoch` comes from CachedFeatureDataModule.set_epoch.
    """

    def __init__(self, views: Sequence[list[dict[str, Any]]], seed: int = 0) -> None:
        if not views or any(len(v) != len(views[0]) for v in views):
            raise ValueError(f"every cached view needs the same clips, got sizes {[len(v) for v in views]}")
        self.views, self.seed, self.epoch = list(views), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.views[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        if len(self.views) == 1:
            return self.views[0][index]
        view = np.random.default_rng([self.seed, self.epoch, int(index)]).integers(len(self.views))
        return self.views[view][index]


class CachedFeatureDataModule(L.LightningDataModule):
    """Train / val loaders over cached frame features (same splits as the wrapped EgoDataModule); the
    cached items' other modalities are normalised on the device, as EgoDataModule does."""

    def __init__(self, train_views: Sequence[list[dict[str, Any]]], val_items: list[dict[str, Any]],
                 batch_size: int, seed: int, classes: list[str], normalize: Normalize) -> None:
        super().__init__()
        self.train_set, self.val_set = CachedClips(train_views, seed), CachedClips([val_items])
        self.batch_size, self.seed, self.classes, self.normalize = batch_size, seed, classes, normalize

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        return self.normalize(batch)

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop's DatasetEpoch callback: the epoch's view of each clip."""
        self.train_set.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)


def cache_features(task: ActionRecognitionTask, dm: EgoDataModule, device: torch.device,
                   views: int = 1) -> CachedFeatureDataModule:
    """Encode the datamodule's val clips once and its train clips `views` times (see the module doc)."""
    check_cacheable(task, dm.modalities)
    dm.setup("fit")
    assert dm.train_set is not None and dm.val_set is not None
    # View 0: the training clips through the validation set's deterministic pipeline (same sampler, no rng).
    train_fixed = ClipDataset(dm.root, dm.train_set.records, dm.classes, dm.modalities, dm.val_set.sampler,
                              dm.val_set.transform, seed=dm.seed, train=False)
    train_views = [encode_dataset(task, train_fixed, dm.batch_size, device, dm.normalize, "caching train features")]
    for view in range(1, views):
        # Views 1..: the training pipeline at "epoch" view, i.e. the draws an uncached run makes then.
        dm.train_set.set_epoch(view)
        train_views.append(encode_dataset(task, dm.train_set, dm.batch_size, device, dm.normalize,
                                          f"caching augmented train view {view}/{views - 1}"))
    dm.train_set.set_epoch(0)
    val_items = encode_dataset(task, dm.val_set, dm.batch_size, device, dm.normalize, "caching val features")
    return CachedFeatureDataModule(train_views, val_items, dm.batch_size, dm.seed, dm.classes, dm.normalize)
