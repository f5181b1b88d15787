"""`egoattn protect`: P-FGSM over an image, a folder of images (and videos), a video, or a prepared dataset.

Outputs, in OUT:
- protected images as PNG (``<name>.png``, lossless, so the 8-bit perturbation survives; a JPEG
  input is written as PNG because JPEG would blur the perturbation away);
- protected videos as MP4 with the input's fps and size. Default: H.264 yuv420p at ``crf``. Lossy
  H.264 (chroma subsampling + quantisation) changes pixels by a few grey levels - the size of the
  perturbation itself - so it can undo the protection; ``lossless=True`` writes lossless H.264
  (libx264rgb, qp 0, decodes bit-exact). Every written video is decoded again and re-classified,
  so the report states what a viewer of the *file* gets, not what the attack had in memory;
- for a prepared dataset (a folder with manifest.csv and clips/, see data/prepare.py): a protected
  copy with the same manifest.csv, classes.txt and other top-level files; each clip zip has its RGB
  frames protected and stored as PNG (meta "rgb_format": "png"; lossless, so the stored frames are
  the attacked ones, while the clips' JPEG changes pixels by about the perturbation's size) and
  every other member (flow, warp, motion, mask, keypoints, privacy) copied byte for byte.
  `egoattn evaluate RUN --data OUT` reads it like the original;
- ``report.json`` (per item and aggregate) and ``report.md``.

Videos and prepared clips: one private set and one target class per video (or clip), so that
protected frames do not flicker between targets. The private set is frame 0's (sigma rule) or the
fixed list; the target is drawn from the classes outside it, and every frame is attacked towards it
and judged against it. (Judging each frame against its own sigma set instead does not work with one
target: on the low-confidence frames of real video the sigma = 0.99 set holds most of the 1000
classes and often contains the video's target. How often that happens is still reported per frame, ``target_in_frame_sigma_set``.)

Folders and prepared datasets are resumable: items already in OUT/report.json (with their output
present) are skipped, an OUT made with other options is refused, and every file, the report and each
clip zip included, is written atomically. A dataset copy's manifest.csv is written last, so an
interrupted copy has none and is not mistaken for a complete dataset; a lock file
(OUT/.protect.lock) keeps two runs from writing one copy. Targets are drawn with one generator per item
seeded from (seed, item name), so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from egoattn.data.clipstore import ClipReader, encode_rgb, rgb_member
from egoattn.data.manifest import read_classes, read_manifest, resolve_inside
from egoattn.errors import BadInputError, ConfigError
from egoattn.fileio import atomic_path, read_json, write_json, write_text_atomic
from egoattn.privacy.pfgsm import (ImageClassifier, draw_targets, load_classifier, pfgsm, private_mask, private_set,
                                   psnr, ssim)

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
REPORT_VERSION = 1


class ProtectOptions(BaseModel):
    """P-FGSM settings (eps and delta as fractions of the [0, 1] range) and output options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sigma: float = Field(0.99, gt=0, lt=1, description="cumulative probability of the private set")
    eps: float = Field(8 / 255, gt=0, le=1)
    delta: float = Field(1 / 255, ge=(1 - 1e-6) / 255, le=1, description="at least one grey level")
    max_iter: int = Field(100, ge=0)
    stop_confidence: float = Field(0.99, gt=0, le=1)
    private_classes: list[int | str] | None = Field(
        None, description="fixed private classes (ids or names) instead of the sigma rule")
    lossless: bool = False
    crf: int = Field(18, ge=0, le=51)
    seed: int = 0
    batch_size: int = Field(8, ge=1)


def make_options(**kwargs: Any) -> ProtectOptions:
    """ProtectOptions with pydantic's errors turned into a ConfigError."""
    try:
        return ProtectOptions(**kwargs)
    except ValidationError as e:
        raise ConfigError(f"bad protect options: {e}") from None


# --------------------------------------------------------------------------------------------------
# Inputs


def _kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def list_items(input: Path) -> list[tuple[str, Path, str]]:
    """(relative name, path, kind) of every image/video: the file itself, or a folder's files (recursive,
    sorted, hidden files skipped)."""
    if input.is_file():
        kind = _kind(input)
        if kind is None:
            raise BadInputError(input, f"not an image ({', '.join(sorted(IMAGE_EXTS))}) or a video "
                                       f"({', '.join(sorted(VIDEO_EXTS))})")
        return [(input.name, input, kind)]
    if not input.is_dir():
        raise BadInputError(input, "no such file or folder")
    items = []
    for p in sorted(input.rglob("*")):
        rel = p.relative_to(input)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and _kind(p):
            items.append((rel.as_posix(), p, _kind(p)))
    if not items:
        raise BadInputError(input, "the folder holds no image or video file")
    return items


def _output_name(rel: str, kind: str) -> str:
    return str(Path(rel).with_suffix(".png" if kind == "image" else ".mp4").as_posix())


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3); grey images are expanded, alpha is dropped."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise BadInputError(path, "not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_png(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise BadInputError(path, "PNG encoding failed")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())


def _to_tensor(frames: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous().to(device)


def _to_frames(images: torch.Tensor) -> list[np.ndarray]:
    return list(images.permute(0, 2, 3, 1).cpu().numpy())


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode("utf-8"))) % (2 ** 63))


# --------------------------------------------------------------------------------------------------
# Protection of one batch of images and of one video


def _pfgsm(classifier: ImageClassifier, x: torch.Tensor, options: ProtectOptions, **kwargs: Any):
    return pfgsm(classifier, x, sigma=options.sigma, delta=options.delta, eps=options.eps,
                 max_iter=options.max_iter, stop_confidence=options.stop_confidence,
                 private_classes=options.private_classes, **kwargs)


def protect_images(classifier: ImageClassifier, batch: list[tuple[str, Path]], out: Path,
                   options: ProtectOptions, device: torch.device) -> dict[str, dict[str, Any]]:
    """Protect images of one size in one P-FGSM batch; write PNGs; return their report entries."""
    frames = [read_image(p) for _, p in batch]
    result = _pfgsm(classifier, _to_tensor(frames, device), options,
                    generator=[_generator(options.seed, rel) for rel, _ in batch])
    entries = {}
    for i, ((rel, _), img) in enumerate(zip(batch, _to_frames(result.images))):
        name = _output_name(rel, "image")
        write_png(out / name, img)
        entries[rel] = {"kind": "image", "output": name, "width": img.shape[1], "height": img.shape[0],
                        **result.item(i)}
    return entries


def video_private_set(classifier: ImageClassifier, frame0: np.ndarray, options: ProtectOptions,
                      generator: torch.Generator, device: torch.device) -> tuple[list[int], int]:
    """The video's private class ids (frame 0's, or the fixed list) and its one target, drawn
    uniformly from the classes outside them."""
    x = _to_tensor([frame0], device).float() / 255.0
    mask, probs = private_set(classifier.eval(), x, options.sigma, options.private_classes)
    ids = mask[0].nonzero().flatten()
    ids = ids[probs[0, ids].argsort(descending=True)].tolist()
    return ids, int(draw_targets(mask, generator)[0])


def _chunks(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    chunk: list[np.ndarray] = []
    for f in frames:
        chunk.append(f)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def protect_sequence(classifier: ImageClassifier, rel: str, frames: Iterator[np.ndarray], options: ProtectOptions,
                     device: torch.device) -> tuple[list[int], int, list[dict[str, Any]], Iterator[np.ndarray]]:
    """One target for a whole frame sequence (a video or a prepared clip), chosen on its first frame.

    Returns (private_ids, target, per_frame, protected): ``protected`` yields the protected frames
    batch by batch, and ``per_frame`` fills with one report entry per frame as ``protected`` is
    consumed; its ``target_in_frame_sigma_set`` says whether the target is in the frame's own sigma
    set (None with fixed private classes).
    """
    first = next(frames, None)
    if first is None:
        raise BadInputError(rel, "no frames")
    private_ids, target = video_private_set(classifier, first, options, _generator(options.seed, rel), device)
    frame_options = options.model_copy(update={"private_classes": private_ids})
    per_frame: list[dict[str, Any]] = []

    def protected() -> Iterator[np.ndarray]:
        for chunk in _chunks(itertools.chain([first], frames), options.batch_size):
            x = _to_tensor(chunk, device)
            own = None
            if not options.private_classes:
                with torch.no_grad():
                    own = private_mask(classifier.eval()(x.float() / 255.0).softmax(dim=1), options.sigma)
            result = _pfgsm(classifier, x, frame_options, target=target)
            for i in range(len(result)):
                entry = result.item(i, max_private=0)
                for key in ("private_set_size", "private_ids", "private_names"):
                    entry.pop(key)
                entry["target_in_frame_sigma_set"] = None if own is None else bool(own[i, target])
                per_frame.append(entry)
            yield from _to_frames(result.images)

    return private_ids, target, per_frame, protected()


def _sequence_entry(classifier: ImageClassifier, private_ids: list[int], target: int,
                    per_frame: list[dict[str, Any]]) -> dict[str, Any]:
    """The report fields a video and a prepared clip share: target, private set, per-frame summary."""
    return {"target": target, "target_name": classifier.class_names[target],
            "private_set_size": len(private_ids), "private_ids": private_ids[:20],
            "private_names": [classifier.class_names[c] for c in private_ids[:20]],
            "target_in_frame_sigma_set": sum(bool(f["target_in_frame_sigma_set"]) for f in per_frame),
            **_summary(per_frame), "per_frame": per_frame}


def protect_video(classifier: ImageClassifier, rel: str, path: Path, out: Path, options: ProtectOptions,
                  device: torch.device) -> dict[str, Any]:
    """Protect every frame towards one target, write the MP4, decode it back and re-classify."""
    from egoattn.data.video import iter_frames, probe_video, write_video

    info = probe_video(path)
    if not options.lossless and (info.width % 2 or info.height % 2):
        raise BadInputError(path, f"lossy H.264 (yuv420p) needs an even width and height, the video is "
                                  f"{info.width}x{info.height}; use lossless output")
    private_ids, target, per_frame, protected = protect_sequence(classifier, rel, iter_frames(path), options, device)
    name = _output_name(rel, "video")
    write_video(out / name, protected, fps=info.fps, crf=options.crf, lossless=options.lossless)
    _verify_video(classifier, path, out / name, per_frame, private_ids, options, device)
    written = probe_video(out / name)
    return {
        "kind": "video", "output": name, "frames": len(per_frame), "fps": written.fps,
        "width": written.width, "height": written.height, "input_fps": info.fps,
        "encoding": "lossless H.264 (libx264rgb qp 0)" if options.lossless else f"H.264 yuv420p crf {options.crf}",
        **_sequence_entry(classifier, private_ids, target, per_frame),
    }


def _verify_video(classifier: ImageClassifier, original: Path, written: Path, per_frame: list[dict[str, Any]],
                  private_ids: list[int], options: ProtectOptions, device: torch.device) -> None:
    """Replace each frame's 'after' numbers by those of the decoded output, keeping the in-memory ones
    under ``before_encoding``."""
    from egoattn.data.video import iter_frames

    def pairs() -> Iterator[tuple[list[np.ndarray], list[np.ndarray]]]:
        a, b = [], []
        for fa, fb in zip(iter_frames(original), iter_frames(written), strict=True):
            a.append(fa)
            b.append(fb)
            if len(a) == options.batch_size:
                yield a, b
                a, b = [], []
        if a:
            yield a, b

    k = 0
    classifier.eval()
    private = torch.zeros(classifier.num_classes, dtype=torch.bool, device=device)
    private[private_ids] = True
    for orig, dec in pairs():
        x0 = _to_tensor(orig, device).float() / 255.0
        x = _to_tensor(dec, device).float() / 255.0
        with torch.no_grad():
            probs = classifier(x).softmax(dim=1)
        conf, top1 = probs.max(dim=1)
        q_psnr, q_ssim = psnr(x, x0), ssim(x, x0)
        for i in range(len(orig)):
            e = per_frame[k]
            e["before_encoding"] = {key: e[key] for key in ("top1_after", "conf_after", "target_conf_after",
                                                            "psnr", "ssim", "protected")}
            t1 = int(top1[i])
            p = float(q_psnr[i])
            e.update(top1_after=t1, top1_after_name=classifier.class_names[t1], conf_after=float(conf[i]),
                     target_conf_after=float(probs[i, e["target"]]),
                     private_conf_after=float((probs[i] * private).sum()),
                     psnr=p if math.isfinite(p) else None, ssim=float(q_ssim[i]),
                     protected=not bool(private[t1]))
            k += 1


# --------------------------------------------------------------------------------------------------
# Report


def _mean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _summary(units: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate over protected units (images or video frames)."""
    n = len(units)
    return {
        "units": n,
        "protected_units": sum(bool(u["protected"]) for u in units),
        "protection_rate": (sum(bool(u["protected"]) for u in units) / n) if n else None,
        "mean_conf_before": _mean([u["conf_before"] for u in units]),
        "mean_conf_after": _mean([u["conf_after"] for u in units]),
        "mean_private_conf_after": _mean([u["private_conf_after"] for u in units]),
        "mean_iterations": _mean([u["iterations"] for u in units]),
        "mean_psnr": _mean([u["psnr"] for u in units]),
        "mean_ssim": _mean([u["ssim"] for u in units]),
    }


def aggregate(items: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Over all images and all video / prepared-clip frames (each frame one unit)."""
    units: list[dict[str, Any]] = []
    for entry in items.values():
        units.extend(entry["per_frame"] if "per_frame" in entry else [entry])
    return {"items": len(items), "images": sum(e["kind"] == "image" for e in items.values()),
            "videos": sum(e["kind"] == "video" for e in items.values()),
            "clips": sum(e["kind"] == "clip" for e in items.values()), **_summary(units)}


def _fmt(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict[str, Any]) -> str:
    agg, opts = report["aggregate"], report["options"]
    fixed = opts["private_classes"]
    rule = "fixed: " + ", ".join(map(str, fixed)) if fixed else f"top set reaching sigma = {opts['sigma']}"
    lines = [
        "# P-FGSM privacy protection", "",
        f"Classifier: {report['classifier']}. Input: `{report['input']}`.", "",
        f"Private classes: {rule}; eps = {opts['eps'] * 255:.2f}/255, delta = {opts['delta'] * 255:.2f}/255, "
        f"max {opts['max_iter']} iterations, stop at p(target) > {opts['stop_confidence']}.", "",
        f"**Protection rate {_fmt(agg['protection_rate'])}** ({agg['protected_units']} of {agg['units']} images/frames "
        f"whose top-1 is no longer a private class); mean PSNR {_fmt(agg['mean_psnr'], 2)} dB, mean SSIM "
        f"{_fmt(agg['mean_ssim'], 4)}, mean iterations {_fmt(agg['mean_iterations'], 1)}; mean confidence of the "
        f"top-1 {_fmt(agg['mean_conf_before'])} before, {_fmt(agg['mean_conf_after'])} after; mean probability "
        f"left on the private classes {_fmt(agg['mean_private_conf_after'], 4)}.", "",
        "| item | kind | top-1 before (conf) | top-1 after (conf) | target | private set | iterations | PSNR dB | SSIM "
        "| protected |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rel, e in report["items"].items():
        if e["kind"] == "image":
            lines.append(
                f"| {rel} | image | {e['top1_before_name']} ({_fmt(e['conf_before'])}) | {e['top1_after_name']} "
                f"({_fmt(e['conf_after'])}) | {e['target_name']} | {e['private_set_size']} | {e['iterations']} | "
                f"{_fmt(e['psnr'], 2)} | {_fmt(e['ssim'], 4)} | {'yes' if e['protected'] else 'NO'} |")
        else:
            lines.append(
                f"| {rel} | {e['kind']}, {e['frames']} frames | conf {_fmt(e['mean_conf_before'])} | conf "
                f"{_fmt(e['mean_conf_after'])} | {e['target_name']} | {e['private_set_size']} | "
                f"{_fmt(e['mean_iterations'], 1)} | {_fmt(e['mean_psnr'], 2)} | {_fmt(e['mean_ssim'], 4)} | "
                f"{e['protected_units']}/{e['units']} |")
    lines.append("")
    if agg["videos"]:
        lines += ["Videos: the 'after' numbers are measured on the decoded output file. Lossy H.264 changes "
                  "pixels by a few grey levels, about the size of the perturbation, and can undo the protection; "
                  "use lossless output when that matters.", ""]
    if agg["clips"]:
        lines += ["Prepared clips: one target per clip; the protected frames are stored as PNG inside the clip "
                  "zips (lossless, so the 'after' numbers are those of the stored frames); every other member "
                  "(flow, warp, motion, masks, keypoints) is copied unchanged.", ""]
    return "\n".join(lines)


def _write_report(out: Path, report: dict[str, Any]) -> None:
    report["aggregate"] = aggregate(report["items"])
    write_json(out / "report.json", report)
    write_text_atomic(out / "report.md", render_markdown(report))


def _load_report(out: Path, header: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Items of an earlier run in OUT with the same settings (outputs present); error if settings differ."""
    path = out / "report.json"
    if not path.exists():
        return {}
    old = read_json(path)
    if not isinstance(old, dict) or not isinstance(old.get("items"), dict):
        raise BadInputError(path, "not an egoattn protect report")
    for key in ("version", "classifier", "options"):
        if old.get(key) != header[key]:
            raise ConfigError(f"{path}: was made with different {key} ({old.get(key)!r}); "
                              "use a new output folder or delete the old report")
    return {rel: e for rel, e in old["items"].items() if (out / e.get("output", "")).is_file()}


# --------------------------------------------------------------------------------------------------
# Prepared datasets


def is_prepared_dataset(path: Path) -> bool:
    """The rule of egoattn.data.check.detect_layout: a folder with manifest.csv and clips/."""
    return path.is_dir() and (path / "manifest.csv").is_file() and (path / "clips").is_dir()


def protect_clip(classifier: ImageClassifier, clip_id: str, src: Path, dst: Path, options: ProtectOptions,
                 device: torch.device) -> dict[str, Any]:
    """Protect a prepared clip's RGB frames towards one target and write the clip zip ``dst`` (atomically);
    returns the clip's report fields.

    The frames are stored as PNG (meta "rgb_format": "png"), losslessly, so the report's numbers are
    those of the stored frames; JPEG would change pixels by about the perturbation's size. Every other
    member is copied byte for byte.
    """
    reader = ClipReader(src)
    try:
        n = reader.num_frames
        old_rgb = {rgb_member(i, reader.meta.get("rgb_format", "jpg")) for i in range(n)}
        frames = (f for start in range(0, n, options.batch_size)
                  for f in reader.read_rgb(range(start, min(n, start + options.batch_size))))
        private_ids, target, per_frame, protected = protect_sequence(classifier, clip_id, frames, options, device)
        meta = {**reader.meta, "rgb_format": "png",
                "privacy_protection": {"method": "P-FGSM", "classifier": classifier.name, "target": target,
                                       "target_name": classifier.class_names[target],
                                       "options": options.model_dump(mode="json")}}
        with atomic_path(dst) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("meta.json", json.dumps(meta, indent=1))
            for info in reader.zip.infolist():
                if info.filename != "meta.json" and info.filename not in old_rgb:
                    try:
                        data = reader.zip.read(info)
                    except (zipfile.BadZipFile, OSError, EOFError) as e:
                        raise BadInputError(src, f"corrupt member {info.filename!r} ({e})") from None
                    zf.writestr(info, data)
            for i, frame in enumerate(protected):
                zf.writestr(rgb_member(i, "png"), encode_rgb(frame, "png"))
            if len(per_frame) != n:
                raise BadInputError(src, f"read {len(per_frame)} RGB frames, meta.json says {n}")
        height, width = int(reader.meta["height"]), int(reader.meta["width"])
    finally:
        reader.close()
    return {"frames": n, "width": width, "height": height, "encoding": "PNG in the clip zip (lossless)",
            **_sequence_entry(classifier, private_ids, target, per_frame)}


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One protect run per output dataset (the lock of egoattn prepare, under its own name)."""
    from egoattn.data.prepare import _Lock

    path = out / ".protect.lock"
    lock = _Lock(path)
    try:
        lock.__enter__()
    except BadInputError:
        raise BadInputError(path, "another `egoattn protect` is writing this folder "
                                  "(delete the lock file if no such process runs)") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _copy_file(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def protect_dataset(classifier: ImageClassifier, input: Path, out: Path, header: dict[str, Any],
                    options: ProtectOptions, device: torch.device) -> dict[str, Any]:
    """A protected copy of a prepared dataset: every clip of the manifest protected (resumable, see
    protect_clip); manifest.csv, classes.txt and the other top-level files copied unchanged at the end,
    so a dataset in OUT with a manifest is a complete one."""
    if out.resolve() == input.resolve():
        raise ConfigError(f"{out}: the protected copy must go to another folder than the dataset itself")
    classes = read_classes(input / "classes.txt")
    records = read_manifest(input / "manifest.csv", classes)
    if not records:
        raise BadInputError(input / "manifest.csv", "no clips listed")
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {**header, "input": str(input), "items": {}}
    with _locked(out):
        done = _load_report(out, header)
        report["items"] = {r.clip_id: done[r.clip_id] for r in records if r.clip_id in done}
        for rec in records:
            if rec.clip_id in report["items"]:
                continue
            src, dst = resolve_inside(input, rec.path), resolve_inside(out, rec.path)
            entry = protect_clip(classifier, rec.clip_id, src, dst, options, device)
            report["items"][rec.clip_id] = {"kind": "clip", "output": rec.path, **entry}
            _write_report(out, report)
        report["items"] = {r.clip_id: report["items"][r.clip_id] for r in records}
        _write_report(out, report)
        skip = {"report.json", "report.md", "manifest.csv"}
        for p in sorted(input.iterdir()):
            if p.is_file() and not p.name.startswith(".") and p.name not in skip:
                _copy_file(p, out / p.name)
        _copy_file(input / "manifest.csv", out / "manifest.csv")  # last: a manifest means a complete copy
    return report


# --------------------------------------------------------------------------------------------------
# Entry point


def protect(input: str | Path, out: str | Path, classifier: str | ImageClassifier = "bundled",
            options: ProtectOptions | None = None, device: str | torch.device | None = None) -> dict[str, Any]:
    """Protect an image, a folder (images and videos), a video or a prepared dataset (a folder with
    manifest.csv and clips/) into OUT; returns the report dict."""
    input, out = Path(input), Path(out)
    options = options or ProtectOptions()
    clf = load_classifier(classifier) if isinstance(classifier, str) else classifier
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clf = clf.to(dev).eval()
    if options.private_classes is not None:
        clf.class_ids(options.private_classes)  # fail early on unknown names
    header = {"version": REPORT_VERSION, "classifier": clf.name, "options": options.model_dump(mode="json")}
    if is_prepared_dataset(input):
        return protect_dataset(clf, input, out, header, options, dev)
    items = list_items(input)
    outputs: dict[str, str] = {}
    for rel, _, kind in items:
        name = _output_name(rel, kind)
        if name in outputs:
            raise BadInputError(input, f"{rel} and {outputs[name]} would both be written as {name}")
        outputs[name] = rel
    report: dict[str, Any] = {**header, "input": str(input), "items": {}}
    done = _load_report(out, header)
    report["items"] = {rel: done[rel] for rel, _, _ in items if rel in done}
    out.mkdir(parents=True, exist_ok=True)

    pending_images: list[tuple[str, Path, tuple[int, int]]] = []

    def flush_images() -> None:
        while pending_images:
            size = pending_images[0][2]
            batch = [(r, p) for r, p, s in pending_images if s == size][: options.batch_size]
            report["items"].update(protect_images(clf, batch, out, options, dev))
            names = {r for r, _ in batch}
            pending_images[:] = [t for t in pending_images if t[0] not in names]
            _write_report(out, report)

    for rel, path, kind in items:
        if rel in report["items"]:
            continue
        if kind == "image":
            pending_images.append((rel, path, read_image(path).shape[:2]))
            if len(pending_images) >= options.batch_size:
                flush_images()
        else:
            report["items"][rel] = protect_video(clf, rel, path, out, options, dev)
            _write_report(out, report)
    flush_images()
    report["items"] = {rel: report["items"][rel] for rel, _, _ in items}  # input order
    _write_report(out, report)
    return report
