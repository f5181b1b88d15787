"""Pointing game, mass inside the mask, centre prior and overlays."""

import numpy as np
from PIL import Image

from egoattn.explain.overlay import grid, overlay, write_gif, write_png
from egoattn.explain.scoring import AttentionScore, centre_prior, mass_inside, pointing_hit


def test_pointing_game_and_mass_on_a_known_map():
    mask = np.zeros((64, 64), np.uint8)
    mask[32:48, 16:32] = 1  # the object covers the centre of cell (2, 1) of a 4x4 grid
    attn = np.zeros((4, 4), np.float32)
    attn[2, 1] = 1.0
    assert pointing_hit(attn, mask)
    assert not pointing_hit(centre_prior((64, 64)), mask)
    # the bilinear tent of one cell spans +-16 px; the central +-8 px hold (1 - 0.5**2)**2 of it
    assert abs(mass_inside(attn, mask) - 0.75**2) < 0.02
    uniform = np.ones((4, 4), np.float32)
    assert abs(mass_inside(uniform, mask) - mask.mean()) < 1e-6


def test_attention_score_skips_frames_without_object():
    s = AttentionScore()
    mask = np.zeros((8, 8), np.uint8)
    s.add(np.ones((2, 2)), mask)
    assert s.frames == 0
    mask[:4, :4] = 1
    s.add(np.array([[1.0, 0], [0, 0]]), mask)
    s.add(np.array([[0, 0], [0, 1.0]]), mask)
    d = s.as_dict()
    assert d["frames"] == 2 and d["pointing_game"] == 0.5


def test_overlay_grid_gif_png(tmp_path):
    frame = np.full((32, 48, 3), 128, np.uint8)
    attn = np.zeros((2, 3)); attn[0, 0] = 1
    out = overlay(frame, attn)
    assert out.shape == frame.shape and out[0, 0, 0] > out[-1, -1, 0]  # red (hot) where attention is
    g = grid([[out, out], [out]])
    assert g.shape == (2 * 32 + 2, 2 * 48 + 2, 3)
    write_png(tmp_path / "g.png", g)
    write_gif(tmp_path / "a.gif", [out, frame])
    assert Image.open(tmp_path / "g.png").size == (98, 66)
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 2
