"""Video decoding and H.264 writing with PyAV.

Frames are RGB uint8 arrays (H, W, 3). Decoding streams frame by frame, so memory stays flat in the
video's length.

Truncation policy: a video whose decoder fails part-way raises `BadInputError` saying how many frames
decoded before the error. A video whose demuxer stops cleanly before the frame count its header
declares (e.g. an AVI cut short) is also reported as truncated, never silently shortened. Only when
the container declares no frame count (some streamed formats) is a clean end taken as the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from egoattn.errors import BadInputError
from egoattn.fileio import atomic_path


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    codec: str


def _open(path: Path) -> av.container.InputContainer:
    """Open a video for reading, turning PyAV's errors into a clear problem statement."""
    if not path.exists():
        raise BadInputError(path, "file not found")
    if path.is_dir():
        raise BadInputError(path, "is a directory, not a video file")
    if path.stat().st_size == 0:
        raise BadInputError(path, "zero-byte file")
    try:
        container = av.open(str(path), mode="r")
    except av.error.FFmpegError as e:
        with path.open("rb") as f:
            head = f.read(12)
        if head[4:8] == b"ftyp":
            problem = f"damaged or truncated MP4/MOV: its index cannot be read ({e.strerror or e})"
        else:
            problem = f"not a video file (the demuxer does not recognise it: {e.strerror or e})"
        raise BadInputError(path, problem) from None
    if not container.streams.video:
        container.close()
        raise BadInputError(path, "no video stream (the container holds no video frames)")
    return container


def _stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame threading: faster, decoded frames are identical
    return stream


def _fps(stream: av.video.stream.VideoStream) -> float:
    # guessed_rate is the stream's nominal (r_frame_rate) rate; average_rate is skewed by gaps in
    # the timestamps (demo_skeleton.mp4 has one: average 28.05, true 30).
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(new_height, new_width) with the short side = `short_side`, aspect kept (the rounding every
    resize to a short side uses: `egoattn prepare`, `FrameToRGB`, predict's crop box)."""
    s = short_side / min(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


#: swscale flags of the decoder-side shrink: area averaging (anti-aliased) with full-resolution chroma
#: interpolation. Against a reference of bicubic chroma upsampling + exact float area averaging (demo.mp4,
#: 340x256 -> 194x146) its mean error is 0.32 levels, against 1.18 for full-size rgb24 + cv2 INTER_AREA,
#: and it costs 0.43 instead of 0.07 + 0.71 ms a frame (plain AREA: 0.29 ms but 1.60 levels).
SHRINK_FLAGS = Interpolation.AREA | Interpolation.FULL_CHR_H_INT


class FrameToRGB:
    """Decoded frame -> RGB uint8 (H, W, 3) through one swscale context kept for the whole video;
    with `short_side`, frames whose short side is larger are shrunk to it in the same pass.

    `frame.to_ndarray(format="rgb24")` builds a new conversion context for every frame (PyAV keeps one
    per frame object), which cost more than decoding the frame (0.49 against 0.37 ms at 340x256); one
    `VideoReformatter` for the whole stream reuses its context, with the same output to the bit. One
    swscale thread: its default (automatic threads) gave the same pixels in 0.057 instead of 0.038 ms.
    Shrinking while converting from YUV (`SHRINK_FLAGS`) is both cheaper and closer to the true colours
    than converting at full size and shrinking the RGB frame afterwards.
    """

    def __init__(self, short_side: int | None = None) -> None:
        if short_side is not None and short_side < 1:
            raise ValueError(f"short_side must be >= 1 or None, got {short_side}")
        self.short_side = short_side
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.short_side is not None and min(frame.height, frame.width) > self.short_side:
            h, w = short_side_size(frame.height, frame.width, self.short_side)
            out = self._reformatter.reformat(frame, format="rgb24", width=w, height=h, interpolation=SHRINK_FLAGS,
                                             threads=1)
        else:
            out = self._reformatter.reformat(frame, format="rgb24", threads=1)
        return out.to_ndarray()


def _decode(container: av.container.InputContainer, stream, path: Path) -> Iterator[av.VideoFrame]:
    """Decoded frames in order; decoder errors become BadInputError with the count so far."""
    n = 0
    try:
        for frame in container.decode(stream):
            n += 1
            yield frame
    except av.error.FFmpegError as e:
        raise BadInputError(path, f"truncated or corrupt video: decoding failed after {n} frames ({e.strerror or e})") from None


def _count_packets(container, stream, path: Path) -> int:
    n = 0
    try:
        for packet in container.demux(stream):
            if packet.size > 0:
                n += 1
    except av.error.FFmpegError as e:
        raise BadInputError(path, f"truncated or corrupt video: demuxing failed after {n} packets ({e.strerror or e})") from None
    return n


def probe_video(path: str | Path) -> VideoInfo:
    """Exact frame count, fps, size and codec.

    The header's count is trusted only if demuxing finds the same number of packets; otherwise (count
    missing, or header and packets disagree) the frames are counted by decoding.
    """
    path = Path(path)
    with _open(path) as container:
        stream = _stream(container)
        declared = int(stream.frames or 0)
        fps, codec = _fps(stream), stream.codec_context.name
        width, height = stream.codec_context.width, stream.codec_context.height
        packets = _count_packets(container, stream, path)
    num = packets
    if declared <= 0 or packets != declared:
        with _open(path) as container:
            stream = _stream(container)
            num = 0
            for frame in _decode(container, stream, path):
                num += 1
                width, height = frame.width, frame.height
    if num == 0:
        raise BadInputError(path, "no decodable video frame")
    if declared > 0 and num < declared:
        raise BadInputError(path, f"truncated video: the header declares {declared} frames but only {num} can be read")
    return VideoInfo(path=path, num_frames=num, fps=fps, width=width, height=height, codec=codec)


def iter_decoded(path: str | Path, start: int = 0, end: int | None = None) -> Iterator[av.VideoFrame]:
    """Yield decoded (not yet converted) frames start..end-1, decoding sequentially (exact indices even
    for variable frame rate; frames before `start` are decoded and dropped). Convert with `FrameToRGB`
    only the frames you keep: the conversion can cost more than the decoding."""
    path = Path(path)
    if start < 0 or (end is not None and end < start):
        raise BadInputError(path, f"bad frame range [{start}, {end})")
    with _open(path) as container:
        stream = _stream(container)
        declared = int(stream.frames or 0)
        n = 0
        for frame in _decode(container, stream, path):
            if end is not None and n >= end:
                return
            if n >= start:
                yield frame
            n += 1
    if n == 0:
        raise BadInputError(path, "no decodable video frame")
    if declared > 0 and n < declared:
        raise BadInputError(path, f"truncated video: the header declares {declared} frames but only {n} can be read")
    if end is not None and n < end:
        raise BadInputError(path, f"frame range [{start}, {end}) out of range: the video has {n} frames")


def iter_frames(path: str | Path, start: int = 0, end: int | None = None,
                short_side: int | None = None) -> Iterator[np.ndarray]:
    """Yield frames start..end-1 as RGB uint8 (H, W, 3); with `short_side`, larger frames come shrunk to
    that short side (area-averaged in the decoder's colour conversion, `FrameToRGB`)."""
    to_rgb = FrameToRGB(short_side)
    frames = iter_decoded(path, start, end)
    try:
        for frame in frames:
            yield to_rgb(frame)
    finally:
        frames.close()  # a consumer that stops early closes the video now, not at garbage collection


def read_frames(path: str | Path, indices: Sequence[int] | None = None) -> np.ndarray:
    """Frames at `indices` (any order, repeats allowed; None = all) as (n, H, W, 3) uint8.

    Decodes only up to the largest index, so frames before the damage of a truncated file can be read.
    """
    path = Path(path)
    if indices is None:
        frames = list(iter_frames(path))
        return np.stack(frames)
    idx = [int(i) for i in indices]
    if not idx:
        raise BadInputError(path, "no frame indices given")
    if min(idx) < 0:
        raise BadInputError(path, f"frame index {min(idx)} out of range (negative)")
    wanted = set(idx)
    last = max(idx)
    got: dict[int, np.ndarray] = {}
    n = 0
    with _open(path) as container:
        stream = _stream(container)
        declared = int(stream.frames or 0)
        to_rgb = FrameToRGB()
        for frame in _decode(container, stream, path):
            if n in wanted:
                got[n] = to_rgb(frame)
            n += 1
            if n > last:
                break
    if n == 0:
        raise BadInputError(path, "no decodable video frame")
    if last >= n and declared > n:
        raise BadInputError(path, f"truncated video: the header declares {declared} frames but only {n} can be read")
    if last >= n:
        raise BadInputError(path, f"frame index {last} out of range: the video has {n} frames")
    return np.stack([got[i] for i in idx])


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, crf: int = 18,
                lossless: bool = False, x264_preset: str = "medium", deterministic: bool = False) -> None:
    """Write RGB uint8 frames as an H.264 MP4, atomically.

    Lossy: libx264 yuv420p (width and height must be even). Lossless: libx264rgb with qp 0 (RGB
    planes, decodes back bit-exact). `x264_preset` trades encoding speed for file size (veryfast is
    about 3x faster than medium at the same crf). Even with threads=1, x264's rate-control lookahead
    gave different bytes for the same frames when the machine was busy (3-7 distinct files in 12
    encodes, two processes at once); `deterministic=True` turns the lookahead off (rc-lookahead=0,
    slightly larger files) so that the same frames always give the same file.
    """
    path = Path(path)
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rate = Fraction(fps).limit_denominator(100_000)
    if lossless:
        codec, pix_fmt, options = "libx264rgb", "rgb24", {"qp": "0", "preset": x264_preset, "threads": "1"}
    else:
        codec, pix_fmt, options = "libx264", "yuv420p", {"crf": str(crf), "preset": x264_preset, "threads": "1"}
    if deterministic:
        options["x264-params"] = "rc-lookahead=0"
    with atomic_path(path) as tmp:
        n = 0
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream(codec, rate=rate, options=options)
            stream.pix_fmt = pix_fmt
            stream.thread_count = 1
            shape = None
            for frame in frames:
                frame = np.asarray(frame)
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                    raise ValueError(f"frame {n}: expected RGB uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
                if shape is None:
                    shape = frame.shape
                    h, w = shape[:2]
                    if not lossless and (h % 2 or w % 2):
                        raise ValueError(f"yuv420p H.264 needs even width and height, got {w}x{h}")
                    stream.width, stream.height = w, h
                elif frame.shape != shape:
                    raise ValueError(f"frame {n}: shape {frame.shape} differs from the first frame's {shape}")
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                for packet in stream.encode(vf):
                    container.mux(packet)
                n += 1
            if n == 0:
                raise ValueError(f"{path}: no frames to write")
            for packet in stream.encode():
                container.mux(packet)
        os.chmod(tmp, 0o644)
