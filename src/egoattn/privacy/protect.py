"""`egoattn protect`: P-FGSM over an image, a folder of images (and videos), or a video.

Outputs, in OUT:
- protected images as PNG (``<name>.png``, lossless, so the 8-bit perturbation survives; a JPEG
  input is written as PNG because JPEG would blur the perturbation away);
- protected videos as MP4 with the input's fps and size. Default: H.264 yuv420p at ``crf``. Lossy
  H.264 (chroma subsampling + quantisation) changes pixels by a few grey levels - the size of the
  perturbation itself - so it can undo the protection; ``lossless=True`` writes lossless H.264
  (libx264rgb, qp 0, decodes bit-exact). Every written video is decoded again and re-classified,
  so the report states what a viewer of the *file* gets, not what the attack had in memory;
- ``report.json`` (per item and aggregate) and ``report.md``.

Videos: one private set and one target class per video, so that protected frames do not flicker
between targets. The private set is frame 0's (sigma rule) or the fixed list; the target is drawn
from the classes outside it, and every frame is attacked towards it and judged against it. (Judging
each frame against its own sigma set instead does not work with one target: on the low-confidence
frames of real video the sigma = 0.99 set holds most of the 1000 classes and often contains the
video's target. How often that happens is still reported per frame, ``target_in_frame_sigma_set``.)

Folders are resumable: items already in OUT/report.json (with their output present) are skipped, and
every file, the report included, is written atomically. Targets are drawn with one generator per item
seeded from (seed, item name), so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


def protect_video(classifier: ImageClassifier, rel: str, path: Path, out: Path, options: ProtectOptions,
                  device: torch.device) -> dict[str, Any]:
    """Protect every frame towards one target, write the MP4, decode it back and re-classify."""
    from egoattn.data.video import iter_frames, probe_video, write_video

    info = probe_video(path)
    if not options.lossless and (info.width % 2 or info.height % 2):
        raise BadInputError(path, f"lossy H.264 (yuv420p) needs an even width and height, the video is "
                                  f"{info.width}x{info.height}; use lossless output")
    frames_iter = iter_frames(path)
    first = next(frames_iter)
    private_ids, target = video_private_set(classifier, first, options, _generator(options.seed, rel), device)
    frame_options = options.model_copy(update={"private_classes": private_ids})
    per_frame: list[dict[str, Any]] = []

    def chunks() -> Iterator[list[np.ndarray]]:
        chunk = [first]
        for f in frames_iter:
            chunk.append(f)
            if len(chunk) == options.batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def protected_frames() -> Iterator[np.ndarray]:
        for chunk in chunks():
            result = _pfgsm(classifier, _to_tensor(chunk, device), frame_options, target=target)
            for i in range(len(result)):
                entry = result.item(i, max_private=0)
                for key in ("private_set_size", "private_ids", "private_names"):
                    entry.pop(key)
                per_frame.append(entry)
            yield from _to_frames(result.images)

    name = _output_name(rel, "video")
    write_video(out / name, protected_frames(), fps=info.fps, crf=options.crf, lossless=options.lossless)
    _verify_video(classifier, path, out / name, per_frame, private_ids, options, device)
    written = probe_video(out / name)
    return {
        "kind": "video", "output": name, "frames": len(per_frame), "fps": written.fps,
        "width": written.width, "height": written.height, "input_fps": info.fps,
        "encoding": "lossless H.264 (libx264rgb qp 0)" if options.lossless else f"H.264 yuv420p crf {options.crf}",
        "target": target, "target_name": classifier.class_names[target],
        "private_set_size": len(private_ids), "private_ids": private_ids[:20],
        "private_names": [classifier.class_names[c] for c in private_ids[:20]],
        "target_in_frame_sigma_set": sum(bool(f["target_in_frame_sigma_set"]) for f in per_frame),
        **_summary(per_frame),
        "per_frame": per_frame,
    }


def _verify_video(classifier: ImageClassifier, original: Path, written: Path, per_frame: list[dict[str, Any]],
                  private_ids: list[int], options: ProtectOptions, device: torch.device) -> None:
    """Replace each frame's 'after' numbers by those of the decoded output (keeping the in-memory ones
    under ``before_encoding``) and note whether the target is in the frame's own sigma set."""
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
            own = None if options.private_classes else private_mask(classifier(x0).softmax(dim=1), options.sigma)
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
                     protected=not bool(private[t1]),
                     target_in_frame_sigma_set=None if own is None else bool(own[i, e["target"]]))
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
    """Over all images and all video frames (each frame one unit)."""
    units: list[dict[str, Any]] = []
    for entry in items.values():
        units.extend(entry["per_frame"] if entry["kind"] == "video" else [entry])
    return {"items": len(items), "images": sum(e["kind"] == "image" for e in items.values()),
            "videos": sum(e["kind"] == "video" for e in items.values()), **_summary(units)}


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
                f"| {rel} | video, {e['frames']} frames | conf {_fmt(e['mean_conf_before'])} | conf "
                f"{_fmt(e['mean_conf_after'])} | {e['target_name']} | {e['private_set_size']} | "
                f"{_fmt(e['mean_iterations'], 1)} | {_fmt(e['mean_psnr'], 2)} | {_fmt(e['mean_ssim'], 4)} | "
                f"{e['protected_units']}/{e['units']} |")
    lines += ["", "Videos: the 'after' numbers are measured on the decoded output file. Lossy H.264 changes "
              "pixels by a few grey levels, about the size of the perturbation, and can undo the protection; "
              "use lossless output when that matters.", ""]
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
# Entry point


def protect(input: str | Path, out: str | Path, classifier: str | ImageClassifier = "bundled",
            options: ProtectOptions | None = None, device: str | torch.device | None = None) -> dict[str, Any]:
    """Protect an image, a folder (images and videos) or a video into OUT; returns the report dict."""
    input, out = Path(input), Path(out)
    options = options or ProtectOptions()
    clf = load_classifier(classifier) if isinstance(classifier, str) else classifier
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clf = clf.to(dev).eval()
    if options.private_classes is not None:
        clf.class_ids(options.private_classes)  # fail early on unknown names
    items = list_items(input)
    outputs: dict[str, str] = {}
    for rel, _, kind in items:
        name = _output_name(rel, kind)
        if name in outputs:
            raise BadInputError(input, f"{rel} and {outputs[name]} would both be written as {name}")
        outputs[name] = rel
    header = {"version": REPORT_VERSION, "classifier": clf.name, "options": options.model_dump(mode="json")}
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
