"""PyAV decoding and writing: exact counts on real clips, clear errors on bad files, round trips."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

import paths

from egoattn.data.video import VideoInfo, iter_frames, probe_video, read_frames, write_video
from egoattn.errors import BadInputError

REAL = paths.REAL / "videos"
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real sample videos not present")

# name, frames, fps, width, height, codec (demo_skeleton.mp4: frames every 1/30 s with one gap, so
# its average rate is 28.05 but its nominal rate is 30)
CLIPS = [
    ("demo.mp4", 280, 28.0, 340, 256, "h264"),
    ("test.mp4", 300, 30.0, 340, 256, "h264"),
    ("test.avi", 164, 25.0, 320, 240, "mpeg4"),
    ("demo_skeleton.mp4", 72, 30.0, 1920, 1080, "h264"),
]


@needs_real
@pytest.mark.parametrize("name,frames,fps,width,height,codec", CLIPS)
def test_probe_real_clips(name, frames, fps, width, height, codec):
    info = probe_video(REAL / name)
    assert info == VideoInfo(REAL / name, frames, fps, width, height, codec)
    n = 0
    for frame in iter_frames(REAL / name):
        assert frame.shape == (height, width, 3) and frame.dtype == np.uint8
        n += 1
    assert n == frames


@needs_real
@pytest.mark.parametrize("name", ["demo.mp4", "test.avi"])
def test_one_conversion_context_gives_pyav_s_rgb_bit_for_bit(name):
    """iter_frames keeps one swscale context for the stream (cheaper than PyAV's one per frame): the
    frames must be those of frame.to_ndarray(format="rgb24")."""
    with av.open(str(REAL / name)) as container:
        expected = [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]
    got = list(iter_frames(REAL / name))
    assert len(got) == len(expected)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected))


@needs_real
def test_ranges_and_indices_agree():
    path = REAL / "test.avi"
    ranged = np.stack(list(iter_frames(path, start=10, end=15)))
    picked = read_frames(path, [10, 11, 12, 13, 14])
    assert ranged.shape == (5, 240, 320, 3)
    assert np.array_equal(ranged, picked)
    shuffled = read_frames(path, [163, 12, 0, 12])
    assert np.array_equal(shuffled[1], picked[2]) and np.array_equal(shuffled[3], picked[2])
    assert not np.array_equal(shuffled[0], shuffled[2])  # the last and first frames differ
    assert read_frames(path).shape == (164, 240, 320, 3)


@needs_real
def test_indices_out_of_range():
    with pytest.raises(BadInputError, match="out of range.*164 frames"):
        read_frames(REAL / "test.avi", [3, 164])
    with pytest.raises(BadInputError, match="out of range"):
        read_frames(REAL / "test.avi", [-1])
    with pytest.raises(BadInputError, match="out of range.*164 frames"):
        list(iter_frames(REAL / "test.avi", 160, 170))


def _faststart_mp4(path: Path, n: int = 30) -> None:
    """An MP4 with its index first, so a cut file still opens and fails while decoding."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=15, options={"threads": "1"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    cases = {"missing": (tmp / "missing.mp4", "file not found")}
    (tmp / "empty.mp4").write_bytes(b"")
    cases["empty"] = (tmp / "empty.mp4", "zero-byte file")
    (tmp / "text.mp4").write_text("this is not a video\n" * 20)
    cases["text"] = (tmp / "text.mp4", "not a video file")
    c = av.open(str(tmp / "novideo.mp4"), "w")  # a valid container whose header lists no video frames
    s = c.add_stream("libx264", rate=15)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    c.start_encoding()
    c.close()
    cases["no frames"] = (tmp / "novideo.mp4", "no video stream")
    _faststart_mp4(tmp / "fast.mp4")
    data = (tmp / "fast.mp4").read_bytes()
    (tmp / "fast_half.mp4").write_bytes(data[: len(data) // 2])
    cases["cut faststart"] = (tmp / "fast_half.mp4", r"truncated.*(30 frames|after \d+ frames)")
    if REAL.is_dir():
        data = (REAL / "demo.mp4").read_bytes()  # index at the end: the cut file has none
        (tmp / "half.mp4").write_bytes(data[: len(data) // 2])
        cases["cut mp4"] = (tmp / "half.mp4", "truncated MP4")
        data = (REAL / "test.avi").read_bytes()  # AVI demuxes cleanly up to the cut
        (tmp / "half.avi").write_bytes(data[: len(data) // 2])
        cases["cut avi"] = (tmp / "half.avi", r"truncated video: the header declares 164 frames but only \d+")
    return cases


def test_bad_inputs_raise_clear_errors(tmp_path):
    cases = _bad_inputs(tmp_path)
    assert len(cases) >= 5
    for what, (path, problem) in cases.items():
        for call in (probe_video, lambda p: list(iter_frames(p)), lambda p: read_frames(p, [0, 150])):
            with pytest.raises(BadInputError, match=problem) as err:
                call(path)
            assert err.value.path == path, what
            assert str(path) in str(err.value)


def _smooth_frames(n: int, h: int = 64, w: int = 96) -> np.ndarray:
    """Smooth colour gradients with a moving blob (camera-like content, no hard chroma edges)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for t in range(n):
        blob = np.exp(-((x - 20 - 3 * t) ** 2 + (y - 30) ** 2) / 60.0)
        r = 128 + 90 * np.sin((x + 2 * t) / 15.0) + 100 * blob
        g = 128 + 90 * np.cos((y - t) / 12.0) - 60 * blob
        b = 128 + 50 * np.sin((x + y + 3 * t) / 20.0) - 60 * blob
        frames.append(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8))
    return np.stack(frames)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2)))


def test_write_lossless_exact(tmp_path):
    frames = np.random.default_rng(1).integers(0, 256, (12, 48, 65, 3), dtype=np.uint8)  # odd width is fine
    out = tmp_path / "ll.mp4"
    write_video(out, iter(frames), fps=15, lossless=True)
    info = probe_video(out)
    assert (info.num_frames, info.fps, info.width, info.height, info.codec) == (12, 15.0, 65, 48, "h264")
    assert np.array_equal(read_frames(out), frames)
    assert [p.name for p in tmp_path.iterdir()] == ["ll.mp4"]  # no temporary file left


def test_write_lossy_close_and_deterministic(tmp_path):
    frames = _smooth_frames(20)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    # deterministic=True (no rate-control lookahead) is what promises the same bytes; the default does not
    # (on 2026-12-02 two default encodes of these frames differed on an idle machine)
    write_video(a, frames, fps=29.97, crf=18, deterministic=True)
    write_video(b, list(frames), fps=29.97, crf=18, deterministic=True)
    assert a.read_bytes() == b.read_bytes()
    back = read_frames(a)
    assert back.shape == frames.shape
    assert 35 < _psnr(back, frames) < 99  # close but not exact (measured 38.5 dB)
    assert probe_video(a).fps == pytest.approx(29.97, abs=1e-3)


@needs_real
def test_write_lossy_real_frames(tmp_path):
    frames = read_frames(REAL / "demo.mp4", range(0, 40, 2))
    write_video(tmp_path / "r.mp4", frames, fps=14)
    assert _psnr(read_frames(tmp_path / "r.mp4"), frames) > 35  # measured 39.4 dB


def test_write_rejects_bad_frames_atomically(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(ValueError, match="even"):
        write_video(out, np.zeros((3, 49, 64, 3), np.uint8), fps=10)
    with pytest.raises(ValueError, match="no frames"):
        write_video(out, [], fps=10)

    def broken():
        yield np.zeros((48, 64, 3), np.uint8)
        yield np.zeros((48, 66, 3), np.uint8)

    with pytest.raises(ValueError, match="differs"):
        write_video(out, broken(), fps=10)
    assert list(tmp_path.iterdir()) == []


@needs_real
def test_decoder_shrink_is_area_averaging_at_the_prepare_size():
    """iter_frames(short_side=N): larger frames come shrunk to short side N (the rounding `prepare` uses),
    close to full-size frames shrunk with cv2 INTER_AREA (the same area averaging, chroma interpolated at
    full resolution instead of after conversion); frames not larger than N come unchanged, bit for bit."""
    import cv2

    from egoattn.data.prepare import target_size

    path = REAL / "demo.mp4"
    full = np.stack(list(iter_frames(path, 0, 20)))
    shrunk = np.stack(list(iter_frames(path, 0, 20, short_side=146)))
    assert shrunk.shape == (20, *target_size(256, 340, 146), 3) == (20, 146, 194, 3)
    area = np.stack([cv2.resize(f, (194, 146), interpolation=cv2.INTER_AREA) for f in full])
    diff = np.abs(shrunk.astype(int) - area.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 12
    assert np.array_equal(np.stack(list(iter_frames(path, 0, 20, short_side=256))), full)
    with pytest.raises(ValueError, match="short_side"):
        list(iter_frames(path, 0, 1, short_side=0))
