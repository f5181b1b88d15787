"""`egoattn explain`: where does a trained model look, and does it look at the active object?

For a few clips (one per class first, in a fixed order) the per-frame spatial attention is drawn over
the frames the model saw (de-normalised) with the predicted and the true label, and written as an
animated GIF, an MP4 and a grid PNG (rows = frames; columns = frame, attention [, second model]).
With `compare`, a second run is shown side by side.

On a prepared dataset with ground-truth masks (the synthetic dataset's `mask` modality) the attention
of every test clip of the split is scored: pointing game (is the peak inside the mask?) and the share
of attention mass inside the mask, per class and overall, for each model and for a centre-prior
Gaussian, the baseline a model must beat (attention_scores.json and attention_scores.md).

INPUT may also be a video file: one clip of the whole video (the recipe's sampler), no scores. With a
keypoints file of that video (COCO-style JSON, e.g. from `egoattn keypoints`) the skeleton is drawn too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from egoattn.data.clipstore import ClipReader
from egoattn.data.dataset import ClipDataset, load_prepared
from egoattn.data.manifest import ClipRecord, resolve_inside, split_records
from egoattn.data.samplers import FlowStackSampler
from egoattn.errors import BadInputError, ConfigError
from egoattn.explain.overlay import draw_keypoints, grid, overlay, put_label, write_gif, write_png
from egoattn.explain.scoring import AttentionScore, centre_prior
from egoattn.fileio import write_json, write_text_atomic
from egoattn.inference.predict import Preprocessing

#: Loader keys that a model reads (see models.registry.model_inputs); keypoints drive the pose models.
INPUT_MODALITIES = ("rgb", "flow", "warp", "flow_pair", "keypoints")
DISPLAY_MIN = 224  # panels are upscaled to at least this many pixels so the labels are readable
GIF_FPS = 4.0


@dataclass
class Explained:
    """One model on one clip: what it saw, what it said, where it looked."""

    name: str
    frames: np.ndarray  # (T, S, S, 3) uint8, the crops the model saw
    frame_indices: np.ndarray  # (T,) stored-frame indices
    probs: np.ndarray  # (K,)
    classes: list[str]
    attention: np.ndarray | None  # (T, h, w)
    temporal_weights: np.ndarray | None  # (T,)

    @property
    def pred(self) -> tuple[str, float]:
        k = int(np.argmax(self.probs))
        return self.classes[k], float(self.probs[k])


class ExplainedRun:
    """A loaded run with its pre-processing and the names of its input modalities."""

    def __init__(self, run: str | Path, name: str) -> None:
        from egoattn.evaluation.evaluate import default_device
        from egoattn.training.run import load_run

        self.loaded = load_run(run, which="best")
        self.name = name
        self.device = default_device()
        self.model = self.loaded.model.to(self.device).eval()
        self.classes = list(self.loaded.classes)
        self.prep = Preprocessing.from_recipe(self.loaded.recipe, self.model)
        self.inputs = [m for m in self.loaded.recipe.data.modalities if m in INPUT_MODALITIES]
        if not self.inputs:
            raise ConfigError(f"{run}: the recipe's modalities {self.loaded.recipe.data.modalities} hold no model input")

    @torch.inference_mode()
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from egoattn.models.registry import model_inputs

        inputs = self.prep.normalize({k: v.to(self.device) for k, v in model_inputs(self.model, batch).items()})
        out = self.model(**inputs)
        return out if isinstance(out, dict) else {"logits": out}

    def dataset(self, root: Path, records: Sequence[ClipRecord], classes: list[str], with_mask: bool) -> ClipDataset:
        modalities = list(dict.fromkeys(["rgb", *self.inputs, *(["mask"] if with_mask else [])]))
        flow = FlowStackSampler(self.loaded.recipe.data.flow_stack, "centre", short_clip="repeat")
        return ClipDataset(root, records, classes, modalities, self.prep.frame_sampler(), self.prep.transform(),
                           flow_sampler=flow, train=False)

    def explain_item(self, item: dict[str, Any]) -> Explained:
        out = self.forward(default_collate([item]))
        frames = item["rgb"].permute(0, 2, 3, 1).numpy()  # the loader's uint8 crops, (T, S, S, 3)
        return self._explained(out, frames, np.asarray(item["frame_indices"]))

    def explain_frames(self, crops: np.ndarray, indices: np.ndarray) -> Explained:
        """Pre-cropped uint8 frames (T, S, S, 3) of a video (RGB models only)."""
        if self.inputs != ["rgb"]:
            raise ConfigError(f"run {self.name}: explaining a video needs an RGB model; this one reads {self.inputs}")
        out = self.forward({"rgb": torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2)[None]})
        return self._explained(out, crops, indices)

    def _explained(self, out: dict[str, torch.Tensor], frames: np.ndarray, indices: np.ndarray) -> Explained:
        probs = torch.softmax(out["logits"][0].double().cpu(), dim=0).numpy()
        att, tw = out.get("attention"), out.get("temporal_weights")
        return Explained(self.name, frames, indices, probs, self.classes,
                         None if att is None else att[0].float().cpu().numpy(),
                         None if tw is None else tw[0].float().cpu().numpy().reshape(-1))


# --- drawing --------------------------------------------------------------------------------------

def _display(img: np.ndarray, side: int) -> np.ndarray:
    return img if img.shape[0] == side and img.shape[1] == side else cv2.resize(
        img, (side, side), interpolation=cv2.INTER_LINEAR)


def panels(views: Sequence[Explained], true_label: str | None) -> list[list[np.ndarray]]:
    """Per frame of the first view: [frame, attention of each view]; later views use their frame
    nearest in time (their samplers may differ)."""
    first = views[0]
    side = max(DISPLAY_MIN, max(v.frames.shape[1] for v in views))
    side += side % 2
    scale = max(0.35, side / 560)
    rows = []
    for t, index in enumerate(first.frame_indices.tolist()):
        row = [put_label(_display(first.frames[t], side), f"#{index} true: {true_label or '?'}", scale)]
        for view in views:
            s = int(np.argmin(np.abs(view.frame_indices - index)))
            frame = _display(view.frames[s], side)
            pred, p = view.pred
            text = f"{view.name}: {pred} {p:.2f}"
            if view.temporal_weights is not None:
                text += f" w={view.temporal_weights[s]:.2f}"
            if view.attention is None:
                text += " (no attention)"
            else:
                frame = overlay(frame, view.attention[s])
            row.append(put_label(frame, text, scale))
        rows.append(row)
    return rows


def write_clip_files(out: Path, name: str, views: Sequence[Explained], true_label: str | None,
                     fps: float = GIF_FPS) -> list[Path]:
    """<name>.gif, <name>.mp4 (one frame per sampled frame) and <name>.png (the grid)."""
    from egoattn.data.video import write_video

    rows = panels(views, true_label)
    animation = [grid([row]) for row in rows]
    paths = [out / f"{name}.gif", out / f"{name}.mp4", out / f"{name}.png"]
    write_gif(paths[0], animation, fps=fps)
    write_video(paths[1], animation, fps=fps)
    write_png(paths[2], grid(rows))
    return paths


# --- clip choice and scoring ----------------------------------------------------------------------

def select_clips(records: Sequence[ClipRecord], classes: Sequence[str], num_clips: int) -> list[ClipRecord]:
    """One clip per class first (classes in class-id order, the first clip id of each), then the
    remaining clips in clip-id order: deterministic, and as many classes as possible."""
    ordered = sorted(records, key=lambda r: r.clip_id)
    chosen: list[ClipRecord] = []
    for label in classes:
        first = next((r for r in ordered if r.label == label), None)
        if first is not None and len(chosen) < num_clips:
            chosen.append(first)
    taken = {r.clip_id for r in chosen}
    chosen += [r for r in ordered if r.clip_id not in taken][: max(0, num_clips - len(chosen))]
    return chosen


def score_attention(runs: Sequence[ExplainedRun], datasets: Sequence[ClipDataset], classes: Sequence[str],
                    batch_size: int = 8, sigma: float = 0.25) -> dict[str, Any]:
    """Pointing game and mass inside the mask over every clip, per class and overall, for each model
    with attention and for the centre prior (on the first model's frames and masks)."""
    result: dict[str, Any] = {"models": {}, "centre_prior_sigma": sigma}
    for i, (run, dataset) in enumerate(zip(runs, datasets)):
        overall, per_class = AttentionScore(), {c: AttentionScore() for c in classes}
        prior_all, prior_class = AttentionScore(), {c: AttentionScore() for c in classes}
        has_attention, clips = False, 0
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0):
            att = run.forward(batch).get("attention")
            masks = batch["mask"].numpy()
            labels = [classes[int(k)] for k in batch["label"]]
            clips += len(labels)
            prior = centre_prior(masks.shape[-2:], sigma)
            for b, label in enumerate(labels):
                for t in range(masks.shape[1]):
                    if att is not None:
                        a = att[b, t].float().cpu().numpy()
                        overall.add(a, masks[b, t])
                        per_class[label].add(a, masks[b, t])
                    if i == 0:
                        prior_all.add(prior, masks[b, t])
                        prior_class[label].add(prior, masks[b, t])
            has_attention = att is not None
        entry: dict[str, Any] = {"run": str(run.loaded.run_dir), "attention": has_attention, "clips": clips}
        if has_attention:
            entry["overall"] = overall.as_dict()
            entry["per_class"] = {c: s.as_dict() for c, s in per_class.items() if s.frames}
        result["models"][run.name] = entry
        if i == 0:
            result["centre_prior"] = {"overall": prior_all.as_dict(),
                                      "per_class": {c: s.as_dict() for c, s in prior_class.items() if s.frames}}
            result["clips"] = clips
    return result


def scores_markdown(scores: dict[str, Any], title: str) -> str:
    """One row per class (overall first): pointing game and mass inside the mask, models then prior."""
    columns = [(name, m) for name, m in scores["models"].items() if m["attention"]]
    columns.append(("centre prior", scores["centre_prior"]))
    head = "| class | frames | " + " | ".join(f"{n} pointing | {n} mass" for n, _ in columns) + " |"
    sep = "|---|---:|" + "---:|---:|" * len(columns)
    lines = [f"# {title}", "", f"Clips: {scores['clips']}. Pointing game: share of frames whose attention peak is "
             "inside the active-object mask. Mass: share of the attention inside the mask. Centre prior: a "
             f"Gaussian at the frame centre (sigma {scores['centre_prior_sigma']} of each side).", "", head, sep]

    def row(label: str, pick) -> str:
        cells = []
        frames = pick(scores["centre_prior"]).get("frames", 0) if pick(scores["centre_prior"]) else 0
        for _, m in columns:
            s = pick(m)
            cells.append(f"{100 * s['pointing_game']:.1f}% | {100 * s['mass_inside']:.1f}%" if s else "- | -")
        return f"| {label} | {frames} | " + " | ".join(cells) + " |"

    lines.append(row("**overall**", lambda m: m["overall"]))
    for c in scores["centre_prior"]["per_class"]:
        lines.append(row(c, lambda m, c=c: m["per_class"].get(c)))
    lines.append("")
    dropped = [n for n, m in scores["models"].items() if not m["attention"]]
    if dropped:
        lines.append(f"Models without spatial attention (not scored): {', '.join(dropped)}.")
    return "\n".join(lines) + "\n"


def print_scores(scores: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("attention")
    table.add_column("pointing game", justify="right")
    table.add_column("mass inside mask", justify="right")
    for name, m in scores["models"].items():
        if m["attention"]:
            table.add_row(name, f"{100 * m['overall']['pointing_game']:.1f}%", f"{100 * m['overall']['mass_inside']:.1f}%")
        else:
            table.add_row(name, "no attention", "-")
    prior = scores["centre_prior"]["overall"]
    table.add_row("centre prior", f"{100 * prior['pointing_game']:.1f}%", f"{100 * prior['mass_inside']:.1f}%")
    Console().print(table)


# --- entry points ---------------------------------------------------------------------------------

def _names(runs: Sequence[Path]) -> list[str]:
    names = [Path(r).name or str(r) for r in runs]
    if len(set(names)) < len(names):
        names = [f"{chr(65 + i)}:{n}" for i, n in enumerate(names)]
    return names


def _explain_dataset(runs: list[ExplainedRun], root: Path, split: str, out: Path, num_clips: int) -> dict[str, Any]:
    classes, records = load_prepared(root)
    for run in runs:
        if run.classes != classes:
            raise BadInputError(root / "classes.txt", f"classes differ from run {run.name}'s ({len(classes)} vs "
                                                      f"{len(run.classes)} classes, or another order)")
    _, test = split_records(records, split)
    reader = ClipReader(resolve_inside(root, test[0].path))
    try:
        with_mask = reader.has("mask")
    finally:
        reader.close()
    datasets = [run.dataset(root, test, classes, with_mask) for run in runs]
    chosen = select_clips(test, classes, num_clips)
    position = {r.clip_id: i for i, r in enumerate(test)}
    clips = []
    for rec in chosen:
        views = [run.explain_item(ds[position[rec.clip_id]]) for run, ds in zip(runs, datasets)]
        files = write_clip_files(out, rec.clip_id, views, rec.label)
        clips.append({"clip_id": rec.clip_id, "true": rec.label, "files": [str(f) for f in files],
                      "predictions": {v.name: {"label": v.pred[0], "prob": v.pred[1]} for v in views}})
    result: dict[str, Any] = {"input": str(root), "split": split, "out": str(out), "clips": clips, "scores": None}
    if with_mask:
        scores = score_attention(runs, datasets, classes)
        scores["split"] = split
        title = f"Attention vs active-object masks ({split}, {scores['clips']} clips)"
        write_json(out / "attention_scores.json", scores)
        write_text_atomic(out / "attention_scores.md", scores_markdown(scores, title))
        print_scores(scores, title)
        result["scores"] = scores
    else:
        print(f"note: {root} has no ground-truth masks, so the attention is drawn but not scored")
    return result


def with_keypoints(view: Explained, keypoints: np.ndarray, crop_box: tuple[float, float, float, float],
                   frame_size: tuple[int, int]) -> Explained:
    """Draw the skeleton on a view's frames: keypoints (N, J, 3) in pixels of the (height, width) video,
    mapped through the centre crop (x0, y0, w, h in fractions of the frame); frames are first upscaled to
    the display size so the lines stay thin."""
    height, width = frame_size
    side = max(DISPLAY_MIN, view.frames.shape[1])
    side += side % 2
    x0, y0, cw, ch = crop_box
    drawn = []
    for frame, index in zip(view.frames, view.frame_indices.tolist()):
        kp = keypoints[index].astype(np.float64).copy()
        kp[:, 0] = (kp[:, 0] / width - x0) / cw * side
        kp[:, 1] = (kp[:, 1] / height - y0) / ch * side
        drawn.append(draw_keypoints(_display(frame, side), kp, radius=max(2, side // 112)))
    view.frames = np.stack(drawn)
    return view


def _explain_video(runs: list[ExplainedRun], video: Path, out: Path, keypoints: Path | None = None) -> dict[str, Any]:
    from egoattn.data.keypoints import read_coco_keypoints
    from egoattn.data.video import probe_video, read_frames

    info = probe_video(video)
    points = None
    if keypoints is not None:
        points = read_coco_keypoints(keypoints)
        if points.shape[0] != info.num_frames:
            raise BadInputError(keypoints, f"keypoints of {points.shape[0]} frames, but {video} has {info.num_frames}")
    views = []
    for run in runs:
        indices = run.prep.sample(info.num_frames)
        unique, inverse = np.unique(indices, return_inverse=True)
        crops = np.stack([run.prep.crop(f) for f in read_frames(video, unique.tolist())])[inverse]
        view = run.explain_frames(crops, indices)
        if points is not None:
            view = with_keypoints(view, points, run.prep.crop_box(info.height, info.width), (info.height, info.width))
        views.append(view)
    files = write_clip_files(out, video.stem, views, None)
    return {"input": str(video), "split": None, "out": str(out), "scores": None,
            "keypoints": None if keypoints is None else str(keypoints),
            "clips": [{"clip_id": video.stem, "true": None, "files": [str(f) for f in files],
                       "predictions": {v.name: {"label": v.pred[0], "prob": v.pred[1]} for v in views}}]}


def explain_run(run: str | Path, input: str | Path, split: str | None = None, out: str | Path | None = None,
                num_clips: int = 4, compare: str | Path | None = None,
                keypoints: str | Path | None = None) -> dict[str, Any]:
    """Overlays for `num_clips` clips of `split` of a prepared dataset (or of a video) and, with masks,
    attention scores over the whole split; `compare` adds a second run side by side; `keypoints` (a video
    INPUT only) a COCO-style JSON file of the video's keypoints drawn as a skeleton. Returns a summary
    (also written to OUT/explain.json)."""
    if num_clips < 1:
        raise ConfigError(f"num_clips must be >= 1, got {num_clips}")
    if keypoints is not None and (Path(input) / "manifest.csv").is_file():
        raise ConfigError(f"keypoints ({keypoints}) can only be drawn over a video INPUT, not the dataset {input}")
    run, input = Path(run), Path(input)
    run_dirs = [run] + ([Path(compare)] if compare is not None else [])
    runs = [ExplainedRun(r, n) for r, n in zip(run_dirs, _names(run_dirs))]
    if (input / "manifest.csv").is_file():
        split = split or runs[0].loaded.recipe.data.split
        target = Path(out) if out is not None else run / f"explain-{split.replace(':', '-')}"
        result = _explain_dataset(runs, input, split, target, num_clips)
    elif input.is_file():
        target = Path(out) if out is not None else run / f"explain-{input.stem}"
        result = _explain_video(runs, input, target, None if keypoints is None else Path(keypoints))
    elif input.is_dir():
        raise BadInputError(input, "not a prepared dataset (no manifest.csv) and not a video file")
    else:
        raise BadInputError(input, "not found")
    result["runs"] = {r.name: str(r.loaded.run_dir) for r in runs}
    write_json(target / "explain.json", result)
    print(f"attention overlays of {len(result['clips'])} clip(s) -> {target}")
    return result
