"""P-FGSM privacy protection: private set, target draw, the attack on real photographs, video, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import paths
import torch

from egoattn.errors import BadInputError
from egoattn.privacy.pfgsm import bundled_classifier, draw_targets, pfgsm, private_mask, psnr, ssim

REAL = paths.REAL
IMAGES = ["cat.png", "bird.png", "dragonfly.png", "hot_dog.jpg", "face.jpg"]
EXPECTED_TOP1 = {"cat.png": "Egyptian cat", "bird.png": "chickadee"}  # data/README.md

needs_real = pytest.mark.skipif(not (REAL / "images" / "cat.png").exists(), reason="real sample media missing")


# ------------------------------------------------------------------ pure functions (no classifier)


def test_ssim_and_psnr_known_properties():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 48, 48, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    values = []
    for level in (0.01, 0.05, 0.2):
        noisy = (x + level * torch.randn(x.shape, generator=g)).clamp(0, 1)
        values.append(float(ssim(x, noisy)[0]))
        assert torch.allclose(ssim(x, noisy), ssim(noisy, x), atol=1e-6)  # symmetric
    assert values[0] > values[1] > values[2] and values[0] < 1
    # structure is kept under a constant shift: only the luminance term drops, SSIM stays near 1
    assert float(ssim(x * 0.5, x * 0.5 + 0.02)[0]) > 0.97
    # PSNR of a one-grey-level change everywhere is 20 log10(255)
    assert float(psnr(x, x + 1 / 255)[0]) == pytest.approx(20 * np.log10(255), abs=1e-3)


def test_private_mask_is_the_smallest_top_set_reaching_sigma():
    p = torch.tensor([[0.05, 0.5, 0.15, 0.3], [0.97, 0.01, 0.01, 0.01]])
    assert private_mask(p, 0.5)[0].tolist() == [False, True, False, False]
    assert private_mask(p, 0.79)[0].tolist() == [False, True, False, True]
    assert private_mask(p, 0.9)[0].tolist() == [False, True, True, True]
    assert private_mask(p, 0.96)[1].tolist() == [True, False, False, False]
    assert private_mask(p, 0.975)[1].sum() == 2


def test_target_is_uniform_over_the_classes_outside_the_private_set():
    g = torch.Generator().manual_seed(1)
    probs = torch.distributions.Dirichlet(torch.full((50,), 0.3)).sample((2000,))
    mask = private_mask(probs, 0.9)
    targets = draw_targets(mask, g)
    assert not mask.gather(1, targets[:, None]).any()  # never a private class
    assert bool((mask.sum(1) > 1).any())  # non-trivial sets (not just "not the top-1")
    # uniform: one row, 30000 draws, every allowed class about equally often, never a private one
    row = mask[:1].expand(30000, -1)
    counts = torch.bincount(draw_targets(row, g), minlength=50).float()
    allowed = ~mask[0]
    assert counts[~allowed].sum() == 0
    expected = 30000 / int(allowed.sum())
    assert float((counts[allowed] - expected).abs().max()) < 5 * expected ** 0.5
    # one generator per image gives the same draw whatever the batch
    a = draw_targets(mask[:3], [torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    b = draw_targets(mask[1:3], [torch.Generator().manual_seed(s) for s in (8, 9)])
    assert a[1:].tolist() == b.tolist()


# ------------------------------------------------------------------ the bundled classifier on real images


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return bundled_classifier()


def _load_images() -> torch.Tensor:
    import cv2

    from egoattn.privacy.protect import read_image

    ims = [cv2.resize(read_image(REAL / "images" / n), (224, 224), interpolation=cv2.INTER_AREA) for n in IMAGES]
    return torch.from_numpy(np.stack(ims)).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def attacked(classifier):
    x = _load_images()
    result = pfgsm(classifier, x, generator=torch.Generator().manual_seed(0))
    print("\nimage          top-1 before (conf)        -> top-1 after (conf)        target"
          "            |P| iters  PSNR   SSIM")
    for i, name in enumerate(IMAGES):
        d = result.item(i)
        print(f"{name:14s} {d['top1_before_name'][:18]:18s} ({d['conf_before']:.3f}) -> "
              f"{d['top1_after_name'][:18]:18s} ({d['conf_after']:.3f}) {d['target_name'][:16]:16s} "
              f"{d['private_set_size']:4d} {d['iterations']:4d} {d['psnr']:6.2f} {d['ssim']:.4f}")
    return x, result


@needs_real
def test_real_images_are_protected_after_8bit_quantisation(classifier, attacked):
    x, r = attacked
    names = [r.class_names[int(c)] for c in r.top1_before]
    for img, want in EXPECTED_TOP1.items():
        assert names[IMAGES.index(img)] == want
    assert r.images.dtype == torch.uint8 and r.images.shape == x.shape
    # re-classify the saved 8-bit images independently of the attack's own bookkeeping
    with torch.no_grad():
        probs = classifier(r.images.float() / 255).softmax(1)
    top1 = probs.argmax(1)
    assert top1.tolist() == r.top1_after.tolist()
    for i in range(len(IMAGES)):
        assert int(top1[i]) not in r.private_ids[i], IMAGES[i]
        assert int(r.target[i]) not in r.private_ids[i]
        assert 0 < int(r.iterations[i]) <= 100
    assert bool(r.protected.all())
    assert bool((r.target_conf_after > 0.99).all())  # the stop criterion, met on the quantised image
    assert float(r.psnr.mean()) >= 35.0
    assert bool((r.ssim > 0.85).all())
    # perturbation within eps = 8/255: at most 8 grey levels, and some pixels actually changed
    diff = (r.images.int() - x.int()).abs()
    assert int(diff.max()) <= 8 and int(diff.max()) >= 1
    assert float(r.psnr.mean()) == pytest.approx(float(psnr(r.images.float() / 255, x.float() / 255).mean()), abs=1e-3)


@needs_real
def test_target_never_in_the_private_set_of_real_images(classifier, attacked):
    x, r = attacked
    with torch.no_grad():
        probs = classifier(x.float() / 255).softmax(1)
    mask = private_mask(probs, 0.99)
    assert [int(m.sum()) for m in mask] == [len(p) for p in r.private_ids]
    g = torch.Generator().manual_seed(3)
    for _ in range(200):
        t = draw_targets(mask, g)
        assert not mask.gather(1, t[:, None]).any()


@needs_real
def test_fixed_private_classes_and_explicit_target(classifier):
    x = _load_images()[:2]
    r = pfgsm(classifier, x, private_classes=["Egyptian cat", "tabby", 19], max_iter=0,
              target=torch.tensor([5, 6]))
    assert set(r.private_ids[0]) == set(r.private_ids[1]) == {285, 281, 19}
    assert r.target.tolist() == [5, 6] and r.iterations.tolist() == [0, 0]
    assert torch.equal(r.images, x)  # no step taken: the 8-bit input comes back unchanged
    assert r.protected.tolist() == [False, False]  # cat is still an Egyptian cat, bird still a chickadee (19)


# ------------------------------------------------------------------ video and command line


def _tiny_video(path: Path, n: int) -> tuple[float, int, int]:
    from egoattn.data.video import iter_frames, probe_video, write_video

    src = REAL / "videos" / "test.mp4"
    info = probe_video(src)
    write_video(path, list(iter_frames(src, 0, n)), fps=info.fps, lossless=True)
    return info.fps, info.width, info.height


@pytest.mark.slow  # about 35 s on the shared 2-core machine
@needs_real
def test_video_round_trip_keeps_fps_size_and_one_target(classifier, tmp_path):
    from egoattn.data.video import probe_video
    from egoattn.privacy.protect import make_options, protect

    fps, w, h = _tiny_video(tmp_path / "in" / "clip.mp4", 3)
    out = tmp_path / "out"
    report = protect(tmp_path / "in" / "clip.mp4", out, classifier=classifier,
                     options=make_options(lossless=True, batch_size=3, seed=5))
    info = probe_video(out / "clip.mp4")
    assert (info.num_frames, info.width, info.height) == (3, w, h)
    assert info.fps == pytest.approx(fps)
    item = report["items"]["clip.mp4"]
    assert {f["target"] for f in item["per_frame"]} == {item["target"]}  # one target for the video
    assert item["target"] not in item["private_ids"] and item["private_set_size"] >= len(item["private_ids"])
    # lossless: what the file decodes to is what the attack produced
    for f in item["per_frame"]:
        assert f["top1_after"] == f["before_encoding"]["top1_after"]
        assert f["conf_after"] == pytest.approx(f["before_encoding"]["conf_after"], abs=1e-4)
        assert f["protected"] and f["psnr"] >= 35 and f["iterations"] >= 1
    assert report["aggregate"]["protection_rate"] == 1.0
    saved = json.loads((out / "report.json").read_text())
    assert saved["aggregate"]["units"] == 3 and (out / "report.md").read_text().startswith("# P-FGSM")


@needs_real
def test_cli_folder_is_resumable_and_bad_inputs_are_named(tmp_path):
    import cv2
    from typer.testing import CliRunner

    from egoattn.cli import app
    from egoattn.privacy.protect import list_items

    src = tmp_path / "in"
    src.mkdir()
    img = cv2.imread(str(REAL / "images" / "bird.png"))
    cv2.imwrite(str(src / "a.jpg"), cv2.resize(img, (64, 48)))
    out = tmp_path / "out"
    args = ["protect", str(src), str(out), "--max-iter", "2", "--eps", "4"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    entry = report["items"]["a.jpg"]
    assert entry["output"] == "a.png" and entry["iterations"] <= 2
    png = cv2.imread(str(out / "a.png"))
    assert png.shape == (48, 64, 3)
    assert int(np.abs(png.astype(int) - cv2.imread(str(src / "a.jpg")).astype(int)).max()) <= 4
    stamp = (out / "a.png").stat().st_mtime_ns
    res = CliRunner().invoke(app, args)  # resume: nothing left to do
    assert res.exit_code == 0 and (out / "a.png").stat().st_mtime_ns == stamp
    res = CliRunner().invoke(app, args[:-1] + ["5"])  # other settings into the same folder
    assert res.exit_code == 2 and "different options" in res.output
    res = CliRunner().invoke(app, args[:3] + ["--eps", "0.03"])
    assert res.exit_code == 2 and "grey levels" in res.output

    (src / "b.png").write_bytes(b"not a png")
    with pytest.raises(BadInputError, match="b.png: not a readable image"):
        from egoattn.privacy.protect import read_image

        read_image(src / "b.png")
    with pytest.raises(BadInputError, match="notes.txt"):
        (src / "notes.txt").write_text("x")
        list_items(src / "notes.txt")
