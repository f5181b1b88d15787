"""The synthetic egocentric dataset: a hand acting on one small object among look-alikes on a table,
filmed from above by a moving camera (`egoattn synth`).

It makes each part of the attention models necessary by construction:

- Only the object the hand touches tells the noun: every scene holds 3-6 static distractors of all
  three nouns in the same colour families (spatial attention).
- put is exactly the time reverse of a take trajectory, close of an open one, and the camera motion
  is drawn from a time-symmetric distribution, so a model blind to frame order cannot separate them
  (temporal modelling, order prediction).
- stir and shake put the hand on the object at offsets from the same distribution; they differ only
  in motion (the hand circles over a static object vs hand and object oscillate along a line), so a
  single frame cannot tell them apart (motion / flow).
- The camera pans, rotates, zooms and jitters, so raw optical flow is dominated by the camera and
  camera-compensated (warp) flow matters.
- Subjects differ in skin tone, table texture and lighting (leave-one-subject-out generalisation).
- About 30 % of the clips show a privacy-sensitive object (a face-like or screen-like patch).

The world is drawn on a canvas larger than the frame with anti-aliased OpenCV primitives at sub-pixel
precision; each frame is the world warped by the camera homography C_t (world -> frame). Masks,
motion maps, keypoints and privacy boxes go through the same C_t, and the stored homography of frame
t is C_{t+1} C_t^-1 (frame t pixels -> frame t+1 pixels; the last one is the identity).
"""

from __future__ import annotations

import colorsys
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from egoattn.data.manifest import ClipRecord, split_label, write_classes, write_manifest
from egoattn.data.video import write_video
from egoattn.data.workers import one_thread_here, one_thread_per_worker, worker_context
from egoattn.errors import BadInputError, ConfigError
from egoattn.fileio import atomic_path, read_json, write_json

GENERATOR_VERSION = 1
VERBS = ("take", "put", "open", "close", "stir", "shake")
NOUNS = ("cup", "jar", "box")
CLASSES = (
    "take_cup", "put_cup", "take_jar", "put_jar", "take_box", "put_box", "open_jar",
    "close_jar", "open_box", "close_box", "stir_cup", "shake_cup", "stir_jar", "shake_jar",
)
REVERSE_OF = {"put": "take", "close": "open"}  # verb -> the verb whose trajectory it reverses
NUM_KEYPOINTS = 21  # wrist, then thumb, index, middle, ring, little (4 each, base to tip)
_PARAMS_FILE = ".synth-params.json"  # written first, so that a resumed run checks preset and seed


# --- presets -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthPreset:
    name: str
    subjects: tuple[str, ...]
    instances: int  # clips per class and subject
    num_frames: int
    fps: float
    width: int
    height: int
    crf: int = 18


# "default" has 12 clips per class and subject (672 clips, 36 training clips per class): with 6 (the
# "compact" preset, the default until 2026-12-02, which the tables of ABLATION.md, STANET.md and
# ATTENTION_MODELS.md were made with) a frozen-backbone Ego-RNN fit its 18 training clips per class
# (100 % train, about 50 % on S2) and doubling the clips took it to 60-66 %.
PRESETS = {
    "small": SynthPreset("small", ("S1", "S2", "S3", "S4"), 1, 16, 15.0, 160, 120),
    "compact": SynthPreset("compact", ("S1", "S2", "S3", "S4"), 6, 32, 15.0, 320, 240),
    "default": SynthPreset("default", ("S1", "S2", "S3", "S4"), 12, 32, 15.0, 320, 240),
    "large": SynthPreset("large", ("S1", "S2", "S3", "S4", "S5", "S6"), 10, 48, 15.0, 320, 240),
}


def get_preset(preset: str | SynthPreset) -> SynthPreset:
    if isinstance(preset, SynthPreset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown synthetic preset {preset!r} (choose from {', '.join(PRESETS)})")
    return PRESETS[preset]


# --- subjects: skin tone, sleeve, table texture, lighting -------------------------------------------

@dataclass(frozen=True)
class Subject:
    skin: tuple[int, int, int]  # RGB
    sleeve: tuple[int, int, int]
    hand_scale: float
    table: str  # texture kind
    table_colours: tuple[tuple[int, int, int], tuple[int, int, int]]
    gain: float
    tint: tuple[float, float, float]
    gradient: float  # brightness change across the frame
    gradient_dir: float  # degrees


SUBJECTS = {
    "S1": Subject((226, 178, 148), (40, 50, 95), 1.00, "wood", ((112, 76, 48), (160, 116, 78)), 1.05, (1.0, 0.97, 0.9), 0.30, 30),
    "S2": Subject((196, 136, 100), (40, 80, 50), 0.95, "checker", ((200, 200, 196), (150, 156, 160)), 0.95, (0.95, 1.0, 1.06), 0.35, 200),
    "S3": Subject((140, 88, 58), (110, 110, 115), 1.05, "speckle", ((120, 135, 120), (90, 105, 92)), 1.00, (1.0, 1.0, 1.0), 0.25, 110),
    "S4": Subject((96, 62, 44), (110, 30, 40), 1.08, "stripes", ((205, 195, 170), (140, 165, 190)), 1.10, (1.05, 0.98, 0.94), 0.40, 300),
    "S5": Subject((238, 196, 170), (25, 25, 28), 0.92, "marble", ((225, 225, 222), (160, 160, 165)), 0.90, (0.97, 1.02, 1.0), 0.30, 250),
    "S6": Subject((172, 124, 84), (225, 225, 215), 1.00, "tiles", ((190, 210, 190), (120, 140, 125)), 1.00, (1.0, 0.95, 1.05), 0.35, 70),
}


TABLE_KINDS = tuple(dict.fromkeys(s.table for s in SUBJECTS.values()))


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _shade(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(x * f)))) for x in c)  # type: ignore[return-value]


# --- scene layout ----------------------------------------------------------------------------------

@dataclass
class Obj:
    """An object on the table. Round nouns use `r`; a box is 2r x 2r*aspect, rotated by `angle` (rad)."""

    noun: str
    pos: np.ndarray  # world (x, y)
    r: float
    aspect: float
    angle: float
    body: tuple[int, int, int]
    lid: tuple[int, int, int]
    detail: tuple[int, int, int]
    inside: tuple[int, int, int]
    handle: float  # cup handle direction (rad)

    @property
    def extent(self) -> float:
        """Radius of a circle holding the object (with its handle)."""
        return self.r * (1.5 if self.noun == "cup" else 1.1 if self.noun == "jar" else 1.25)


def _make_obj(noun: str, pos: np.ndarray, width: int, rng: np.random.Generator) -> Obj:
    r = 0.5 * width * rng.uniform(0.15, 0.18)
    if noun == "cup":  # red-orange family, open top
        body = _hsv(rng.uniform(-0.02, 0.04), rng.uniform(0.6, 0.85), rng.uniform(0.7, 0.92))
        lid = body
        detail = _shade(body, 1.15)
        inside = _shade(body, rng.uniform(0.35, 0.5))
    elif noun == "jar":  # blue-teal family, dark screw lid
        body = _hsv(rng.uniform(0.53, 0.62), rng.uniform(0.45, 0.7), rng.uniform(0.65, 0.85))
        lid = _hsv(rng.uniform(0.55, 0.65), rng.uniform(0.3, 0.5), rng.uniform(0.3, 0.42))
        detail = _shade(lid, 1.5)
        inside = _shade(body, 0.35)
    else:  # box: yellow family with a darker lid and a light tape stripe
        body = _hsv(rng.uniform(0.11, 0.16), rng.uniform(0.6, 0.8), rng.uniform(0.8, 0.95))
        lid = _shade(body, rng.uniform(0.8, 0.9))
        detail = _hsv(0.12, 0.1, 0.95)
        inside = _shade(body, 0.4)
    return Obj(noun, np.asarray(pos, float), r, rng.uniform(0.7, 0.9), rng.uniform(-math.pi, math.pi),
               body, lid, detail, inside, rng.uniform(-math.pi, math.pi))


@dataclass
class Layout:
    canvas: tuple[int, int]  # (width, height) of the world canvas
    margin: tuple[int, int]  # frame view offset inside the canvas at zero camera motion
    active: Obj
    distractors: list[Obj]
    lid_spot: np.ndarray | None  # where an opened lid is set down
    privacy: dict | None  # {"kind", "pos", "half" (w, h), "angle"}
    hand_len: float


def _canvas_margin(p: SynthPreset) -> tuple[int, int]:
    """How far the camera can look outside the nominal view: pan + offset + rotation + zoom out."""
    k = p.width / 320
    half = (p.num_frames - 1) / 2
    pan = _CAM["pan"][1] * k * half + _CAM["offset"] * p.width + 3 * _CAM["jitter_px"] * k
    theta = math.radians(_CAM["angle0"] + _CAM["rot"][1] * half + 3 * _CAM["jitter_deg"])
    zmin = _CAM["zoom0"][0] * math.exp(-_CAM["zoom_rate"] * half)
    ex = (p.width / 2 * math.cos(theta) + p.height / 2 * math.sin(theta)) / zmin - p.width / 2
    ey = (p.height / 2 * math.cos(theta) + p.width / 2 * math.sin(theta)) / zmin - p.height / 2
    return int(math.ceil(pan + ex)) + 2, int(math.ceil(pan + ey)) + 2


def _free(pos: np.ndarray, ext: float, placed: list[tuple[np.ndarray, float]]) -> bool:
    return all(np.hypot(*(pos - q)) > 1.2 * (ext + e) + 2 for q, e in placed)


def make_layout(noun: str, base_verb: str, subject: str, p: SynthPreset, rng: np.random.Generator) -> Layout:
    """Random object placement. Depends only on the base verb (take/open/stir...), so a put clip and a
    take clip share the distribution of scenes."""
    W, H = p.width, p.height
    mx, my = _canvas_margin(p)
    view0 = np.array([mx, my], float)
    active = _make_obj(noun, view0 + [rng.uniform(0.22, 0.78) * W, rng.uniform(0.2, 0.62) * H], W, rng)
    placed = [(active.pos, active.extent)]
    lid_spot = None
    if base_verb == "open":
        side = 0.0 if rng.random() < 0.5 else math.pi
        for _ in range(100):
            a = side + rng.uniform(-0.6, 0.6)
            spot = active.pos + 2 * active.r * rng.uniform(1.15, 1.4) * np.array([math.cos(a), math.sin(a)])
            if 0.08 * W < spot[0] - mx < 0.92 * W and 0.08 * H < spot[1] - my < 0.9 * H:
                break
        lid_spot = spot
        placed.append((spot, active.extent))
    distractors: list[Obj] = []
    n = int(rng.integers(3, 6))
    kinds = list(rng.permutation(NOUNS)) + list(rng.choice(NOUNS, size=n - 3))
    for kind in kinds:
        cand = _make_obj(str(kind), np.zeros(2), W, rng)
        for _ in range(200):
            pos = view0 + [rng.uniform(0.08, 0.92) * W, rng.uniform(0.08, 0.92) * H]
            if _free(pos, cand.extent, placed):
                cand.pos = pos
                distractors.append(cand)
                placed.append((pos, cand.extent))
                break
    privacy = None
    if rng.random() < 0.3:
        kind = "face" if rng.random() < 0.5 else "screen"
        size = rng.uniform(0.06, 0.085) * W
        half = np.array([size * 0.8, size]) if kind == "face" else np.array([size * 1.3, size * 0.85])
        for _ in range(200):
            pos = view0 + [rng.uniform(0.1, 0.9) * W, rng.uniform(0.1, 0.9) * H]
            if _free(pos, float(np.hypot(*half)) * 0.9, placed):
                privacy = {"kind": kind, "pos": pos, "half": half, "angle": rng.uniform(-0.5, 0.5),
                           "tone": rng.uniform(0.85, 1.1), "lines": int(rng.integers(3, 6))}
                break
    hand_len = 0.21 * W * SUBJECTS[subject].hand_scale * rng.uniform(0.96, 1.04)
    return Layout((W + 2 * mx, H + 2 * my), (mx, my), active, distractors, lid_spot, privacy, hand_len)


# --- action trajectories ---------------------------------------------------------------------------

def _minjerk(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (10 - 15 * x + 6 * x * x)


def _ramp(tau: np.ndarray, a: float, b: float) -> np.ndarray:
    return _minjerk((tau - a) / max(b - a, 1e-9))


def _direction(phi: np.ndarray | float) -> np.ndarray:
    return np.stack([np.cos(phi), np.sin(phi)], axis=-1)


def _edge_point(layout: Layout, p: SynthPreset, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A wrist position below the bottom edge of the view (where an arm reaches in from) and its angle."""
    mx, my = layout.margin
    x = mx + rng.uniform(0.35, 0.95) * p.width
    y = my + p.height + rng.uniform(1.0, 1.3) * layout.hand_len
    return np.array([x, y]), -math.pi / 2 + rng.uniform(-0.45, 0.25)


def action_track(verb: str, layout: Layout, p: SynthPreset, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """World-coordinate trajectory of the hand, the active object and its lid, one row per frame.

    put and close are exactly the time reverse of a take / open trajectory drawn with the same random
    numbers: `action_track("put", ...)` returns `action_track("take", ...)` reversed.
    """
    if verb in REVERSE_OF:
        track = action_track(REVERSE_OF[verb], layout, p, rng)
        return {k: v[::-1].copy() for k, v in track.items()}
    T = p.num_frames
    tau = np.linspace(0.0, 1.0, T)
    obj = layout.active
    L = layout.hand_len
    reach = 0.85 * L  # wrist -> the point the fingers touch (the object stays partly visible)
    track: dict[str, np.ndarray] = {
        "obj": np.repeat(obj.pos[None], T, 0), "obj_lift": np.zeros(T),
        "lid": np.repeat(obj.pos[None], T, 0), "lid_on": np.ones(T, bool), "lid_lift": np.zeros(T),
        "contact": np.zeros(T, bool),
    }
    if verb in ("take", "open"):
        start, phi_s = _edge_point(layout, p, rng)
        end, phi_e = _edge_point(layout, p, rng)
        phi_g = -math.pi / 2 + rng.uniform(-0.45, 0.25)
        grasp = obj.pos + 0.3 * obj.r * _direction(rng.uniform(-math.pi, math.pi))  # near the centre
        wrist_g = grasp - reach * _direction(phi_g)
        open_grip, closed_grip = rng.uniform(0.05, 0.25), rng.uniform(0.7, 0.9)
        a = rng.uniform(0.28, 0.4) if verb == "take" else rng.uniform(0.22, 0.32)
        b = a + rng.uniform(0.08, 0.14)
        if verb == "take":
            c = d = 1.0
            carry_to = end
        else:
            c = b + rng.uniform(0.25, 0.32)
            d = c + rng.uniform(0.06, 0.1)
            carry_to = wrist_g + (layout.lid_spot - obj.pos)
        s_reach, s_carry, s_back = _ramp(tau, 0, a), _ramp(tau, b, c), _ramp(tau, d, 1.0)
        wrist = start + s_reach[:, None] * (wrist_g - start)
        wrist = wrist + s_carry[:, None] * (carry_to - wrist_g)
        phi = phi_s + s_reach * (phi_g - phi_s)
        if verb == "open":
            wrist = wrist + s_back[:, None] * (end - carry_to)
            phi = phi + s_back * (phi_e - phi_g)
            moved = tau >= b
            track["lid"] = np.where(moved[:, None], obj.pos + (wrist - wrist_g), obj.pos)
            track["lid"][tau >= c] = layout.lid_spot
            track["lid_on"] = ~moved
            track["lid_lift"] = np.where((tau >= b) & (tau < c), np.sin(np.pi * np.clip((tau - b) / (c - b), 0, 1)), 0.0)
            grip = open_grip + (closed_grip - open_grip) * (_ramp(tau, a, b) - _ramp(tau, c, d))
            track["contact"] = (tau >= a) & (tau < d)
        else:
            phi = phi + s_carry * (phi_e - phi_g)
            moved = tau >= b
            track["obj"] = np.where(moved[:, None], obj.pos + (wrist - wrist_g), obj.pos)
            track["lid"] = track["obj"].copy()
            track["obj_lift"] = _ramp(tau, b, min(b + 0.1, 1.0))
            grip = open_grip + (closed_grip - open_grip) * _ramp(tau, a, b)
            track["contact"] = tau >= a
    elif verb in ("stir", "shake"):
        # Shared distribution of the hand-on-object offset; in a single frame both verbs show the
        # hand at (centre + offset + radius * u(angle)) with the same law of offset, radius and angle.
        phi = np.full(T, -math.pi / 2 + rng.uniform(-0.45, 0.25))
        offset = obj.r * rng.uniform(0.0, 0.4) * _direction(rng.uniform(-math.pi, math.pi))
        radius = obj.r * rng.uniform(0.6, 1.0)
        cycles = rng.uniform(1.0, 2.0)
        phase = rng.uniform(0, 2 * math.pi)
        grip = np.full(T, rng.uniform(0.3, 0.6))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        line = _direction(rng.uniform(-math.pi, math.pi))
        amplitude = obj.r * rng.uniform(0.6, 1.0)
        xi = rng.uniform(0, 2 * math.pi)  # shake: where on the stir circle the hand holds the object
        angle = 2 * np.pi * cycles * tau + phase
        if verb == "stir":
            touch = obj.pos + offset + radius * np.stack([np.cos(angle), sign * np.sin(angle)], -1)
        else:
            track["obj"] = obj.pos + amplitude * np.sin(angle)[:, None] * line
            track["lid"] = track["obj"].copy()
            touch = track["obj"] + offset + radius * _direction(xi)
        wrist = touch - reach * _direction(phi)
        track["contact"] = np.ones(T, bool)
    else:
        raise ConfigError(f"unknown verb {verb!r} (choose from {', '.join(VERBS)})")
    track["wrist"] = wrist
    track["phi"] = np.asarray(phi, float)
    track["grip"] = np.asarray(grip, float)
    return track


# --- hand model ------------------------------------------------------------------------------------

# (u, v) in hand lengths: u from the wrist towards the fingers, v towards the thumb (right hand, back up).
_HAND = np.array([
    (0.00, 0.00),
    (0.10, 0.14), (0.22, 0.24), (0.32, 0.30), (0.41, 0.34),  # thumb
    (0.44, 0.12), (0.63, 0.14), (0.75, 0.15), (0.86, 0.16),  # index
    (0.46, 0.03), (0.67, 0.035), (0.81, 0.04), (0.94, 0.045),  # middle
    (0.44, -0.06), (0.63, -0.07), (0.75, -0.075), (0.85, -0.08),  # ring
    (0.40, -0.14), (0.55, -0.16), (0.64, -0.17), (0.72, -0.18),  # little
])
_FINGER_WIDTH = (0.085, 0.075, 0.078, 0.072, 0.062)


def hand_keypoints(wrist: np.ndarray, phi: float, grip: float, length: float) -> np.ndarray:
    """21 world keypoints (x, y) of a right hand seen from above; grip 0 = open, 1 = closed."""
    uv = _HAND.copy()
    for f in range(1, 5):  # curled fingers look shorter from above
        base = uv[1 + 4 * f]
        uv[2 + 4 * f:5 + 4 * f] = base + (uv[2 + 4 * f:5 + 4 * f] - base) * (1 - 0.55 * grip)
    thumb = uv[1:5]
    uv[2:5] = thumb[0] + (thumb[1:] - thumb[0]) * (1 - 0.3 * grip) - [0.0, 0.1 * grip]
    u = np.array([math.cos(phi), math.sin(phi)])
    v = np.array([math.sin(phi), -math.cos(phi)])  # thumb side: the hand's left when pointing up
    return wrist + length * (uv[:, :1] * u + uv[:, 1:] * v)


# --- drawing ----------------------------------------------------------------------------------------

_SHIFT = 4
_ONE = 1 << _SHIFT


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(float(p[0]) * _ONE)), int(round(float(p[1]) * _ONE))


def _poly(p: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(p) * _ONE).astype(np.int32)


class _Pen:
    """Draws on an RGB canvas, or with one flat value on a single-channel canvas (mask, motion)."""

    def __init__(self, img: np.ndarray, flat: int | None = None, aa: bool = True) -> None:
        self.img, self.flat = img, flat
        self.line = cv2.LINE_AA if aa else cv2.LINE_8

    def c(self, colour):
        return (self.flat,) if self.flat is not None else tuple(int(x) for x in colour)

    def circle(self, centre, radius, colour, thickness=-1):
        cv2.circle(self.img, _pt(centre), int(round(radius * _ONE)), self.c(colour), thickness, self.line, _SHIFT)

    def ellipse(self, centre, axes, angle_deg, colour, thickness=-1):
        cv2.ellipse(self.img, _pt(centre), (int(round(axes[0] * _ONE)), int(round(axes[1] * _ONE))),
                    angle_deg, 0, 360, self.c(colour), thickness, self.line, _SHIFT)

    def fill(self, pts, colour):
        cv2.fillPoly(self.img, [_poly(pts)], self.c(colour), self.line, _SHIFT)

    def polyline(self, pts, colour, thickness):
        cv2.polylines(self.img, [_poly(pts)], False, self.c(colour), max(1, int(round(thickness))), self.line, _SHIFT)

    def segment(self, a, b, colour, thickness):
        cv2.line(self.img, _pt(a), _pt(b), self.c(colour), max(1, int(round(thickness))), self.line, _SHIFT)


def _rect(centre: np.ndarray, half: np.ndarray, angle: float) -> np.ndarray:
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-math.sin(angle), math.cos(angle)])
    corners = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float) * half
    return centre + corners[:, :1] * u + corners[:, 1:] * v


def _draw_body(pen: _Pen, o: Obj, pos: np.ndarray, scale: float, lid_on: bool) -> None:
    r = o.r * scale
    if o.noun == "cup":
        h = pos + 1.12 * r * np.array([math.cos(o.handle), math.sin(o.handle)])
        pen.circle(h, 0.3 * r, o.body, max(1, int(round(0.14 * r))))
        pen.circle(pos, r, o.body)
        pen.circle(pos, 0.8 * r, o.inside)
        pen.circle(pos, 0.9 * r, o.detail, 1)
    elif o.noun == "jar":
        pen.circle(pos, r, o.body)
        if lid_on:
            _draw_lid(pen, o, pos, scale)
        else:
            pen.circle(pos, 0.74 * r, o.inside)
            pen.circle(pos, 0.84 * r, _shade(o.body, 1.2), 1)
    else:
        half = np.array([r, r * o.aspect])
        pen.fill(_rect(pos, half, o.angle), o.body)
        if lid_on:
            _draw_lid(pen, o, pos, scale)
        else:
            pen.fill(_rect(pos, half - 0.14 * r, o.angle), o.inside)


def _draw_lid(pen: _Pen, o: Obj, pos: np.ndarray, scale: float) -> None:
    r = o.r * scale
    if o.noun == "jar":
        pen.circle(pos, 0.9 * r, o.lid)
        pen.circle(pos, 0.72 * r, o.detail, 1)
    elif o.noun == "box":
        half = np.array([r, r * o.aspect]) * 1.05
        pen.fill(_rect(pos, half, o.angle), o.lid)
        pen.fill(_rect(pos, np.array([half[0], 0.22 * half[1]]), o.angle), o.detail)


def _draw_hand(pen: _Pen, kp: np.ndarray, phi: float, length: float, skin, sleeve, values=None) -> None:
    """Arm (skin, then sleeve) from below the frame, palm ellipse and fingers. `values` = flat values
    per part (arm, palm, finger 0..4) for the motion canvas."""
    L = length
    u = np.array([math.cos(phi), math.sin(phi)])
    v = np.array([math.sin(phi), -math.cos(phi)])
    w = kp[0]
    dark = _shade(skin, 0.78)
    arm = np.array([w + 0.14 * L * v + 0.08 * L * u, w - 0.14 * L * v + 0.08 * L * u,
                    w - 0.21 * L * v - 1.3 * L * u, w + 0.21 * L * v - 1.3 * L * u])
    cuff = np.array([arm[3], arm[2], w - 0.27 * L * v - 4.0 * L * u, w + 0.27 * L * v - 4.0 * L * u])
    flat = values is not None
    if flat:
        pen.flat = values[0]
    pen.fill(arm, skin)
    pen.fill(cuff, sleeve)
    if flat:
        pen.flat = values[1]
    centre = w + 0.25 * L * u
    axes = (0.25 * L, 0.19 * L)
    pen.ellipse(centre, axes, math.degrees(phi), skin)
    if not flat:
        pen.ellipse(centre, axes, math.degrees(phi), dark, 1)
    for f in range(5):
        pts = kp[1 + 4 * f:5 + 4 * f]
        if f > 0:
            pts = np.vstack([kp[0] + 0.8 * (pts[0] - kp[0]), pts])
        width = _FINGER_WIDTH[f] * L
        if flat:
            pen.flat = values[2 + f]
        else:
            pen.polyline(pts, dark, width + 1.5)
        pen.polyline(pts, skin, width)


def _draw_privacy(pen: _Pen, pv: dict) -> None:
    pos, half, ang = pv["pos"], pv["half"], pv["angle"]
    u = np.array([math.cos(ang), math.sin(ang)])
    v = np.array([-math.sin(ang), math.cos(ang)])

    def at(x, y):
        return pos + x * half[0] * u + y * half[1] * v

    if pv["kind"] == "face":
        skin = _shade((225, 180, 150), pv["tone"])
        pen.ellipse(pos, half, math.degrees(ang), skin)
        pen.ellipse(at(0, -0.55), (half[0] * 0.95, half[1] * 0.5), math.degrees(ang), (60, 40, 30))  # hair
        pen.ellipse(pos + 0.1 * half[1] * v, half * np.array([0.9, 0.82]), math.degrees(ang), skin)
        for side in (-0.38, 0.38):
            pen.ellipse(at(side, -0.1), (0.16 * half[0], 0.09 * half[1]), math.degrees(ang), (250, 250, 250))
            pen.circle(at(side, -0.1), 0.08 * half[0], (40, 30, 25))
            pen.segment(at(side - 0.18, -0.3), at(side + 0.18, -0.32), (70, 50, 40), max(1, 0.06 * half[0]))
        pen.segment(at(0, -0.02), at(0.04, 0.25), _shade(skin, 0.8), 1)
        pen.ellipse(at(0, 0.5), (0.3 * half[0], 0.08 * half[1]), math.degrees(ang), (170, 60, 60))
    else:
        pen.fill(_rect(pos, half * 1.08, ang), (30, 30, 35))
        pen.fill(_rect(pos, half, ang), _shade((235, 240, 250), pv["tone"]))
        n = pv["lines"]
        for i in range(n):
            y = -0.7 + 1.4 * i / max(n - 1, 1)
            x1 = 0.8 - 0.5 * ((i * 37) % 7) / 7
            pen.segment(at(-0.8, y), at(x1, y), (70, 80, 100), max(1, 0.07 * half[1]))


# --- table textures and lighting -----------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    gh, gw = int(h / cell) + 3, int(w / cell) + 3
    n = cv2.resize(rng.standard_normal((gh, gw)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    return n / (np.abs(n).max() + 1e-6)


def table_texture(kind: str, colours, size: tuple[int, int], k: float, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 table surface (wood, checker, speckle, stripes, marble, tiles)."""
    w, h = size
    jitter = rng.uniform(-10, 10, 3)
    c0 = np.clip(np.array(colours[0], np.float32) + jitter, 0, 255)
    c1 = np.clip(np.array(colours[1], np.float32) + jitter, 0, 255)
    ang = rng.uniform(-0.35, 0.35) + (rng.uniform(0, math.pi / 2) if kind in ("checker", "tiles") else 0.0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    xr = x * math.cos(ang) + y * math.sin(ang) + rng.uniform(0, 100)
    yr = -x * math.sin(ang) + y * math.cos(ang) + rng.uniform(0, 100)
    if kind == "wood":
        period = rng.uniform(9, 15) * k
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (yr + 0.8 * period * _smooth_noise(rng, h, w, 40 * k)) / period)
        t = t ** 1.6
    elif kind == "checker":
        s = rng.uniform(0.07, 0.1) * 320 * k
        t = ((np.floor(xr / s) + np.floor(yr / s)) % 2).astype(np.float32)
        t = cv2.GaussianBlur(t, (0, 0), 0.6)
    elif kind == "speckle":
        t = 0.5 + 0.35 * _smooth_noise(rng, h, w, 25 * k) + 0.3 * cv2.GaussianBlur(
            rng.standard_normal((h, w)).astype(np.float32), (0, 0), 0.8 * k)
    elif kind == "stripes":
        period = rng.uniform(12, 20) * k
        t = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * xr / period))
        t = t + 0.12 * np.sin(2 * np.pi * xr / (3 * k)) * np.sin(2 * np.pi * yr / (3 * k))
    elif kind == "marble":
        t = 0.5 + 0.5 * np.sin(xr / (18 * k) + 5 * _smooth_noise(rng, h, w, 50 * k))
        t = t ** 3
    elif kind == "tiles":
        s = rng.uniform(0.1, 0.14) * 320 * k
        g = 1.2 * k
        t = ((np.mod(xr, s) < g) | (np.mod(yr, s) < g)).astype(np.float32)
        t = np.maximum(t, 0.25 + 0.2 * _smooth_noise(rng, h, w, 30 * k))
    else:
        raise ConfigError(f"unknown table texture {kind!r}")
    t = np.clip(t, 0, 1)[..., None]
    return np.clip(c0 * (1 - t) + c1 * t, 0, 255).astype(np.uint8)


def lighting_map(s: Subject, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float32 per-pixel gain: global gain, colour tint, linear brightness gradient, vignette."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    xn, yn = (x - width / 2) / width, (y - height / 2) / width
    a = math.radians(s.gradient_dir + rng.uniform(-20, 20))
    grad = 1 + s.gradient * rng.uniform(0.8, 1.2) * (xn * math.cos(a) + yn * math.sin(a))
    vignette = 1 - 0.35 * (xn * xn + yn * yn)
    gain = s.gain * rng.uniform(0.95, 1.05)
    tint = np.array(s.tint, np.float32) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    return (gain * grad * vignette)[..., None] * tint


# --- camera --------------------------------------------------------------------------------------

_CAM = {
    "pan": (0.5, 3.0),  # px/frame at 320 px width (scaled with the width)
    "rot": (0.02, 0.15),  # deg/frame, either sign
    "zoom_rate": 0.003,  # |d log zoom / frame| at most
    "zoom0": (0.96, 1.04),
    "offset": 0.04,  # view centre offset at mid-clip (fraction of the width)
    "angle0": 4.0,  # deg
    "jitter_px": 0.35,
    "jitter_deg": 0.04,
}


def camera_path(p: SynthPreset, margin: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(T, 3, 3) world -> frame homographies. Parameters are symmetric about the clip's middle frame
    and every rate has a symmetric law, so the reversed path is as likely as the forward one."""
    T, W, H = p.num_frames, p.width, p.height
    k = W / 320
    s = np.arange(T) - (T - 1) / 2
    speed = rng.uniform(*_CAM["pan"]) * k
    d = rng.uniform(0, 2 * math.pi)
    rot = math.radians(rng.uniform(*_CAM["rot"])) * (1 if rng.random() < 0.5 else -1)
    zrate = rng.uniform(-_CAM["zoom_rate"], _CAM["zoom_rate"])
    centre0 = np.array([margin[0] + W / 2, margin[1] + H / 2]) + rng.uniform(-1, 1, 2) * _CAM["offset"] * W
    theta0 = math.radians(rng.uniform(-_CAM["angle0"], _CAM["angle0"]))
    zoom0 = rng.uniform(*_CAM["zoom0"])
    jit = rng.normal(0, _CAM["jitter_px"] * k, (T, 2))
    jit_a = np.radians(rng.normal(0, _CAM["jitter_deg"], T))
    cams = np.empty((T, 3, 3))
    for t in range(T):
        c = centre0 + speed * s[t] * np.array([math.cos(d), math.sin(d)]) + jit[t]
        th = theta0 + rot * s[t] + jit_a[t]
        z = zoom0 * math.exp(zrate * s[t])
        cs, sn = z * math.cos(th), z * math.sin(th)
        A = np.array([[cs, -sn], [sn, cs]])
        cams[t] = np.eye(3)
        cams[t, :2, :2] = A
        cams[t, :2, 2] = np.array([W / 2, H / 2]) - A @ c
    return cams


def _apply(Hm: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply homographies (..., 3, 3) to points (..., N, 2)."""
    ph = np.concatenate([pts, np.ones((*pts.shape[:-1], 1))], -1)
    ph = np.einsum("...ij,...nj->...ni", Hm, ph)
    return ph[..., :2] / ph[..., 2:]


# --- one clip --------------------------------------------------------------------------------------

def _speed(track: np.ndarray) -> np.ndarray:
    """Per-frame speed (px/frame) by central differences; symmetric under time reversal."""
    if len(track) < 2:
        return np.zeros(len(track))
    g = np.gradient(track, axis=0)
    return np.linalg.norm(g, axis=-1)


def render_clip(label: str, subject: str, rng: np.random.Generator, preset: str | SynthPreset = "small") -> dict[str, Any]:
    """Render one clip in memory.

    Returns the stored arrays (frames (T,H,W,3) uint8, mask, motion, keypoints, privacy_boxes,
    homography) plus `camera` (T,3,3 world -> frame), `world_keypoints` (T,21,2), `world_object`
    (T,2) (the active object's centre) and `contact` (T,) bool (the hand touches the object or its lid).
    """
    p = get_preset(preset)
    if label not in CLASSES:
        raise ConfigError(f"unknown synthetic class {label!r}")
    if subject not in SUBJECTS:
        raise ConfigError(f"unknown subject {subject!r} (choose from {', '.join(SUBJECTS)})")
    verb, noun = split_label(label)
    base = REVERSE_OF.get(verb, verb)
    sub = SUBJECTS[subject]
    T, W, H = p.num_frames, p.width, p.height
    k = W / 320

    layout = make_layout(noun, base, subject, p, rng)
    track = action_track(verb, layout, p, rng)
    cams = camera_path(p, layout.margin, rng)
    # The pattern is drawn per clip from every subject's kind, the colours are the subject's own: a
    # model that saw only three tables' patterns could not be asked to generalise to a fourth.
    kind = str(rng.choice(TABLE_KINDS))
    table = table_texture(kind, sub.table_colours, layout.canvas, k, rng)
    light = lighting_map(sub, W, H, rng)
    skin = tuple(int(np.clip(c * rng.uniform(0.95, 1.05), 0, 255)) for c in sub.skin)
    sleeve = tuple(int(np.clip(c + rng.uniform(-15, 15), 0, 255)) for c in sub.sleeve)

    bg = table.copy()
    pen = _Pen(bg)
    for o in layout.distractors:
        _draw_body(pen, o, o.pos, 1.0, lid_on=True)
    if layout.privacy is not None:
        _draw_privacy(pen, layout.privacy)

    L = layout.hand_len
    o = layout.active
    has_lid = o.noun != "cup"
    world_kp = np.stack([hand_keypoints(track["wrist"][t], track["phi"][t], track["grip"][t], L) for t in range(T)])

    # Motion values (0..255) per part and frame: world speed, camera excluded.
    vmax = 0.08 * W  # speed (px/frame) graded as 255
    def grade(speed: np.ndarray) -> np.ndarray:
        val = np.clip(np.round(255 * speed / vmax), 0, 255)
        return np.where(speed > 0.05 * k, np.maximum(val, 1), 0).astype(int)

    v_obj = grade(_speed(track["obj"]))
    v_lid = grade(_speed(track["lid"]))
    v_arm = grade(_speed(world_kp[:, 0]))
    v_palm = grade(_speed(world_kp[:, [0, 5, 9, 13, 17]]).mean(1))
    v_fingers = [grade(_speed(world_kp[:, 1 + 4 * f:5 + 4 * f]).mean(1)) for f in range(5)]

    frames = np.empty((T, H, W, 3), np.uint8)
    mask = np.empty((T, H, W), np.uint8)
    motion = np.empty((T, H, W), np.uint8)
    cw, ch = layout.canvas
    for t in range(T):
        world = bg.copy()
        wmask = np.zeros((ch, cw), np.uint8)
        wmotion = np.zeros((ch, cw), np.uint8)
        lid_on = bool(track["lid_on"][t])
        obj_scale = 1 + 0.12 * track["obj_lift"][t]
        lid_scale = obj_scale * (1 + 0.1 * track["lid_lift"][t])
        # The same geometry on three canvases: colours, mask (255, anti-aliased), motion (speed values).
        for pen_, body_value, lid_value in ((_Pen(world), None, None), (_Pen(wmask, 255), 255, 255),
                                            (_Pen(wmotion, 0, aa=False), int(v_obj[t]), int(v_lid[t]))):
            pen_.flat = body_value
            _draw_body(pen_, o, track["obj"][t], obj_scale, lid_on)
            if has_lid and not lid_on:
                pen_.flat = lid_value
                _draw_lid(pen_, o, track["lid"][t], lid_scale)
        _draw_hand(_Pen(world), world_kp[t], track["phi"][t], L, skin, sleeve)
        _draw_hand(_Pen(wmotion, 0, aa=False), world_kp[t], track["phi"][t], L, skin, sleeve,
                   values=[int(v_arm[t]), int(v_palm[t])] + [int(v[t]) for v in v_fingers])
        C = cams[t]
        f = cv2.warpPerspective(world, C, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        frames[t] = np.clip(f * light, 0, 255).astype(np.uint8)
        m = cv2.warpPerspective(wmask, C, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        mask[t] = m >= 128
        motion[t] = cv2.warpPerspective(wmotion, C, (W, H), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)

    kp = _apply(cams, world_kp)
    vis = (kp[..., 0] >= 0) & (kp[..., 0] <= W - 1) & (kp[..., 1] >= 0) & (kp[..., 1] <= H - 1)
    keypoints = np.concatenate([kp, vis[..., None]], -1).astype(np.float32)

    if layout.privacy is not None:
        pv = layout.privacy
        corners = _rect(pv["pos"], pv["half"] * 1.08, pv["angle"])
        fc = _apply(cams, np.repeat(corners[None], T, 0))  # (T, 4, 2)
        box = np.concatenate([fc.min(1), fc.max(1)], -1)
        box[:, [0, 2]] = np.clip(box[:, [0, 2]], 0, W)
        box[:, [1, 3]] = np.clip(box[:, [1, 3]], 0, H)
        privacy_boxes = box[:, None].astype(np.float32)
    else:
        privacy_boxes = np.zeros((T, 0, 4), np.float32)

    homography = np.repeat(np.eye(3)[None], T, 0)
    for t in range(T - 1):
        Ht = cams[t + 1] @ np.linalg.inv(cams[t])
        homography[t] = Ht / Ht[2, 2]

    return {
        "frames": frames, "mask": mask, "motion": motion, "keypoints": keypoints,
        "privacy_boxes": privacy_boxes, "homography": homography,
        "camera": cams, "world_keypoints": world_kp.astype(np.float32), "contact": track["contact"].copy(),
        "world_object": track["obj"].copy(),
    }


# --- the dataset -----------------------------------------------------------------------------------

GT_KEYS = ("mask", "motion", "keypoints", "privacy_boxes", "homography")


def clip_jobs(p: SynthPreset) -> list[tuple[int, str, str, str]]:
    """(clip index, clip_id, label, subject) in a fixed order; the index seeds the clip's RNG."""
    jobs = []
    for subject in p.subjects:
        for label in CLASSES:
            for inst in range(1, p.instances + 1):
                jobs.append((len(jobs), f"{subject}_{label}_{inst:03d}", label, subject))
    return jobs


def _clip_paths(out: Path, clip_id: str) -> tuple[Path, Path]:
    return out / "videos" / f"{clip_id}.mp4", out / "gt" / f"{clip_id}.npz"


def _make_clip(args: tuple) -> str:
    out, p, seed, index, clip_id, label, subject = args
    rng = np.random.default_rng([seed, index])
    clip = render_clip(label, subject, rng, p)
    video, gt = _clip_paths(out, clip_id)
    with atomic_path(gt) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{key: clip[key] for key in GT_KEYS})
        os.chmod(tmp, 0o644)
    write_video(video, clip["frames"], p.fps, crf=p.crf, x264_preset="veryfast", deterministic=True)
    return clip_id


def generate_synthetic(out: Path, preset: str = "default", seed: int = 0, workers: int = 0) -> Path:
    """Write the synthetic source dataset to `out` (see ARCHITECTURE.md, "Synthetic source").

    Resumable: clips whose video and ground truth both exist are kept. Each clip's RNG is
    default_rng([seed, clip index]), so the output does not depend on the number of workers.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t0 = time.perf_counter()
    p = get_preset(preset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = {"preset": p.name, "seed": int(seed), "generator_version": GENERATOR_VERSION}
    params_file = out / _PARAMS_FILE
    if params_file.exists():
        old = read_json(params_file)
        if old != params:
            raise BadInputError(out, f"already holds synthetic clips made with {old}; asked for {params}. "
                                     "Use another folder or delete this one.")
    else:
        write_json(params_file, params)

    jobs = clip_jobs(p)
    pending = [(out, p, int(seed), i, cid, label, subj) for i, cid, label, subj in jobs
               if not all(path.exists() for path in _clip_paths(out, cid))]
    workers = workers or os.cpu_count() or 1
    console = Console(stderr=True)
    columns = (TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("clips", total=len(jobs), completed=len(jobs) - len(pending))
        if workers <= 1 or len(pending) <= 1:
            with one_thread_here():
                for job in pending:
                    _make_clip(job)
                    progress.advance(task)
        else:
            with worker_context().Pool(min(workers, len(pending)), initializer=one_thread_per_worker) as pool:
                for _ in pool.imap_unordered(_make_clip, pending, chunksize=1):
                    progress.advance(task)

    records = []
    for _, cid, label, subj in jobs:
        verb, noun = split_label(label)
        records.append(ClipRecord(clip_id=cid, path=f"videos/{cid}.mp4", label=label, verb=verb, noun=noun,
                                  subject=subj, start=0, end=p.num_frames, fps=p.fps, num_frames=p.num_frames))
    write_classes(out / "classes.txt", CLASSES)
    write_manifest(out / "manifest.csv", records)
    write_json(out / "synth.json", {
        **params, "classes": list(CLASSES), "subjects": list(p.subjects), "preset_settings": asdict(p),
        "num_clips": len(records), "gt_keys": list(GT_KEYS),
    })
    dt = time.perf_counter() - t0
    console.print(f"synth: {len(jobs)} clips ({len(pending)} generated, {len(jobs) - len(pending)} already "
                  f"complete) with {workers} worker(s) in {dt:.1f} s -> {out}")
    return out
