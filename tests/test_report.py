"""`egoattn report`: the HTML page of a run, built from a realistic fake run (real metrics/plots writers),
checked statically (numbers, escaping, no external URL) and in headless Chromium (no request leaves the
page, every image decodes, the page is not blank)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from egoattn.errors import BadInputError
from egoattn.evaluation.metrics import compute_metrics, write_metrics
from egoattn.evaluation.plots import plot_confusion, plot_correlation, plot_learning_curves
from egoattn.explain.overlay import grid, write_gif, write_png
from egoattn.fileio import write_json
from egoattn.report import find_run_files, write_report
from egoattn.report.html import weak_classes

# The last class name tries to inject markup: it must come out escaped.
CLASSES = ["take_cup", "open_box", "pour_water", "close_box", "take_spoon", "put_<script>alert(1)</script>"]
WEAK = "close_box"  # never predicted right in the fake evaluation below


def fake_predictions(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """60 clips (10 per class): class 3 (close_box) is always predicted as class 1, the others are
    right 8 times in 10."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), 10)
    logits = rng.normal(0, 0.1, (len(labels), len(CLASSES)))
    for i, y in enumerate(labels):
        pred = 1 if y == 3 else y if i % 10 < 8 else (y + 1) % len(CLASSES)
        logits[i, pred] += 3.0
    return labels, logits


def make_run(run: Path, with_eval: bool = True) -> dict:
    """A run directory as `egoattn train` + `egoattn evaluate` leave it; returns the eval metrics."""
    run.mkdir(parents=True)
    config = {"name": "cpu_egornn", "description": "Ego-RNN, CAM attention + ConvLSTM (CPU-sized)", "seed": 3,
              "model": {"name": "egornn", "options": {"backbone": "resnet18", "attention": True}},
              "data": {"split": "gtea61", "num_frames": 8, "size": 112}, "optim": {"name": "adam", "lr": 0.001}}
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    (run / "classes.txt").write_text("\n".join(CLASSES) + "\n", encoding="utf-8")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"\0" * 2048)
    rows = ["epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds"]
    for ep in range(1, 7):
        rows.append(f"{ep},{2.0 / ep:.4f},{0.2 + 0.1 * ep:.4f},{2.2 / ep + 0.1:.4f},{0.15 + 0.09 * ep:.4f},0.001,1.5")
    (run / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    write_json(run / "metrics.json", {"name": "cpu_egornn", "model": "egornn", "seed": 3, "epochs": 6,
                                      "best_val_acc": 0.69, "best_epoch": 6, "final_train_acc": 0.8,
                                      "final_train_loss": 0.333, "final_val_acc": 0.69})
    if not with_eval:
        return {}
    labels, logits = fake_predictions()
    metrics = compute_metrics(labels, logits, CLASSES)
    metrics = {"name": "cpu_egornn", "seed": 3, "run": str(run), "checkpoint": "best", "data": "/data/prepared",
               "split": "gtea61", "flow_stacks": 1, "crops": 1, **metrics}
    out = run / "eval-gtea61"
    write_metrics(out, metrics, CLASSES, title="cpu_egornn on gtea61")
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    plot_confusion(metrics["confusion_normalized"], CLASSES, out / "confusion.png")
    plot_correlation(probs, CLASSES, out / "correlation.png")
    plot_learning_curves(run / "metrics.csv", out / "learning_curves.png")
    return metrics


def make_attention(out: Path, run: Path, clips: tuple[str, ...] = ("S2_take_cup_1", "S2_open_box_1")) -> dict:
    """A folder as `egoattn explain` leaves it (the demo's DEMO/attention): GIF + grid PNG per clip,
    explain.json and attention_scores.json."""
    out.mkdir(parents=True)
    rng = np.random.default_rng(1)
    info = []
    for n, clip in enumerate(clips):
        frames = []
        for t in range(4):
            f = np.zeros((96, 192, 3), np.uint8)
            f[:, :96] = (40 + 30 * t, 90, 140)
            f[20 + 5 * t:60 + 5 * t, 110:170] = rng.integers(0, 255, 3, dtype=np.uint8)
            frames.append(f)
        write_gif(out / f"{clip}.gif", frames)
        write_png(out / f"{clip}.png", grid([[f] for f in frames]))
        true = clip.split("_", 1)[1].rsplit("_", 1)[0]
        info.append({"clip_id": clip, "true": true, "files": [], "predictions":
                     {"run": {"label": true if n == 0 else "pour_water", "prob": 0.71 - 0.2 * n}}})
    write_json(out / "explain.json", {"input": "/data/prepared", "split": "gtea61", "out": str(out), "clips": info,
                                      "scores": None, "runs": {"run": str(run)}})
    scores = {"models": {"run": {"run": str(run), "attention": True, "clips": 12,
                                 "overall": {"pointing_game": 0.625, "mass_inside": 0.31, "frames": 96},
                                 "per_class": {"take_cup": {"pointing_game": 0.75, "mass_inside": 0.4, "frames": 48},
                                               "open_box": {"pointing_game": 0.5, "mass_inside": 0.22, "frames": 48}}}},
              "centre_prior_sigma": 0.25, "clips": 12, "split": "gtea61",
              "centre_prior": {"overall": {"pointing_game": 0.5, "mass_inside": 0.27, "frames": 96},
                               "per_class": {"take_cup": {"pointing_game": 1.0, "mass_inside": 0.5, "frames": 48},
                                             "open_box": {"pointing_game": 0.0, "mass_inside": 0.04, "frames": 48}}}}
    write_json(out / "attention_scores.json", scores)
    return scores


class _Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    return p


def assert_no_external_reference(page: str) -> None:
    """Nothing in the page can make the browser fetch anything: no script, link, iframe, object; every
    src/href/srcset/poster/action is a data: URI or an in-page anchor; no url() in CSS."""
    tags = parse(page).tags
    assert not [t for t, _ in tags if t in ("script", "link", "iframe", "object", "embed", "base", "video", "audio")]
    for tag, attrs in tags:
        for key in ("src", "href", "srcset", "poster", "action", "data", "background"):
            if key in attrs:
                assert attrs[key].startswith(("data:image/", "#")), (tag, key, attrs[key][:60])
    assert "url(" not in page.replace("data:", "")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)


# --- static tests (no browser) --------------------------------------------------------------------

@pytest.fixture
def demo(tmp_path: Path) -> tuple[Path, dict, dict]:
    """The demo's layout: DEMO/run (the run), DEMO/eval (its evaluation), DEMO/attention."""
    demo = tmp_path / "demo"
    metrics = make_run(demo / "run")
    (demo / "run" / "eval-gtea61").rename(demo / "eval")
    scores = make_attention(demo / "attention", demo / "run")
    return demo, metrics, scores


def test_report_of_a_demo_folder_shows_every_part(demo) -> None:
    root, metrics, scores = demo
    files = find_run_files(root)
    assert files.run == root / "run" and files.evals == [root / "eval"] and files.attention == [root / "attention"]
    out = write_report(root, out=root / "report.html")
    page = out.read_text(encoding="utf-8")
    assert_no_external_reference(page)

    # header: name, model, dataset, split and the headline numbers as computed by the metrics module
    assert "<h1>cpu_egornn</h1>" in page and "egornn (resnet18)" in page and "/data/prepared" in page
    assert metrics["top1"] == pytest.approx(40 / 60)  # 5 classes x 8 right, close_box never
    for key in ("top1", "top5", "mean_class_accuracy", "macro_f1", "verb_accuracy", "noun_accuracy"):
        assert f'<div class="value">{100 * metrics[key]:.1f}%</div>' in page, key
    assert "Top-5 accuracy" in page and "Not evaluated yet" not in page

    # per-class table: one row per class, exactly close_box highlighted as weak
    table = page.split('<table class="per-class">')[1].split("</table>")[0]
    assert table.count("<tr") == len(CLASSES) + 1
    assert [c.strip() for c in re.findall(r'<tr class="weak">.*?<td class="name">([^<]+)<', table)] == [WEAK]
    assert f"{100 * metrics['per_class']['take_cup']['f1']:.1f}%" in table

    # images: curves + confusion + correlation + 2 GIFs + 2 grids, all inline; confusion.png byte-exact
    srcs = [a["src"] for t, a in parse(page).tags if t == "img"]
    assert len(srcs) == 7 and all(s.startswith(("data:image/png;base64,", "data:image/gif;base64,")) for s in srcs)
    assert sum(s.startswith("data:image/gif") for s in srcs) == 2
    assert base64.b64encode((root / "eval" / "confusion.png").read_bytes()).decode() in page

    # attention scores: the model beats the prior overall (62.5% vs 50.0%) but not on take_cup pointing
    s = page.split('<table class="scores">')[1].split("</table>")[0]
    assert '<td class="better">62.5%</td>' in s and "<td>50.0%</td>" in s
    assert '<td class="worse">75.0%</td>' in s  # take_cup: 75% vs the prior's 100%
    assert "S2_open_box_1" in page and "pour_water (51.0%)" in page

    # the config in a <pre>, escaped class names, no markup injected
    assert "<pre>name: cpu_egornn" in page and "lr: 0.001" in page
    assert "<script" not in page.lower()
    assert "put_&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_report_defaults_to_run_dir_and_finds_eval_inside(tmp_path: Path) -> None:
    metrics = make_run(tmp_path / "r")
    out = write_report(tmp_path / "r")
    assert out == tmp_path / "r" / "report.html"
    page = out.read_text(encoding="utf-8")
    assert f"{100 * metrics['mean_class_accuracy']:.1f}%" in page and 'id="eval-0"' in page
    assert not list((tmp_path / "r").glob(".report.html.*"))  # atomic write leaves no temporary file


def test_not_evaluated_run(tmp_path: Path) -> None:
    make_run(tmp_path / "r", with_eval=False)
    page = write_report(tmp_path / "r").read_text(encoding="utf-8")
    assert "Not evaluated yet" in page and 'id="eval-0"' not in page
    assert "69.0%" in page  # the training's best validation accuracy instead
    imgs = [a for t, a in parse(page).tags if t == "img"]
    assert len(imgs) == 1 and imgs[0]["src"].startswith("data:image/png;base64,")  # curves from metrics.csv
    png = base64.b64decode(imgs[0]["src"].split(",", 1)[1])
    with Image.open(io.BytesIO(png)) as im:
        assert im.width > 500 and im.height > 200


def test_evaluations_of_other_runs_are_not_picked_up(tmp_path: Path) -> None:
    make_run(tmp_path / "a", with_eval=False)
    make_run(tmp_path / "b")
    (tmp_path / "b" / "eval-gtea61").rename(tmp_path / "eval-of-b")  # beside a, but it names b
    assert find_run_files(tmp_path / "a").evals == []
    assert find_run_files(tmp_path / "b").evals == [tmp_path / "eval-of-b"]


def test_explicit_folders_and_bad_input(tmp_path: Path) -> None:
    make_run(tmp_path / "r", with_eval=False)
    make_attention(tmp_path / "elsewhere" / "att", tmp_path / "other-run")
    files = find_run_files(tmp_path / "r", attention_dirs=[tmp_path / "elsewhere" / "att"])
    assert files.attention == [tmp_path / "elsewhere" / "att"]
    with pytest.raises(BadInputError, match="run directory not found"):
        find_run_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="not a run directory"):
        write_report(tmp_path / "empty")
    with pytest.raises(BadInputError, match="no metrics.json"):
        find_run_files(tmp_path / "r", eval_dirs=[tmp_path / "empty"])


def test_large_matrices_are_stacked(tmp_path: Path) -> None:
    make_run(tmp_path / "r")
    ev = tmp_path / "r" / "eval-gtea61"
    page = write_report(tmp_path / "r").read_text(encoding="utf-8")
    assert '<div class="figs">' in page  # 6 classes: the two matrices side by side
    for name in ("confusion.png", "correlation.png"):  # as plot_confusion draws 61 classes: ~1.9k pixels wide
        Image.new("RGB", (1900, 1700), (200, 220, 255)).save(ev / name)
    page = write_report(tmp_path / "r").read_text(encoding="utf-8")
    assert '<div class="figs stacked">' in page


def test_weak_class_rule() -> None:
    rows = [("a", 1, 1, 0.9, 5), ("b", 1, 1, 0.65, 5), ("c", 1, 1, 0.55, 5), ("d", 0, 0, 0.0, 5), ("e", 0, 0, 0.0, 0)]
    assert weak_classes(rows, macro_f1=0.8) == {"c", "d"}  # 0.55 < 0.8 - 0.2; absent e is not weak


def test_cli_report(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from egoattn.cli import app

    make_run(tmp_path / "r")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "r"), "--out", str(tmp_path / "x" / "page.html")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "x" / "page.html").is_file() and "page.html" in result.output
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "run directory not found" in result.output


# --- in a real headless browser -------------------------------------------------------------------

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: the
    browser reads commands from fd 3 and writes replies/events to fd 4, NUL-separated JSON), so no
    websocket library and no TCP port are needed."""

    FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--disable-default-apps", "--mute-audio", "--remote-debugging-pipe")

    def __init__(self, chromium: str, user_dir: Path) -> None:
        import fcntl

        cmd_r, self.cmd_w = os.pipe()
        self.evt_r, evt_w = os.pipe()
        # Move the child's ends above fd 10 so that dup2 onto 3 and 4 cannot clobber one of them.
        hi_r, hi_w = fcntl.fcntl(cmd_r, fcntl.F_DUPFD_CLOEXEC, 10), fcntl.fcntl(evt_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(cmd_r)
        os.close(evt_w)

        def child() -> None:
            os.dup2(hi_r, 3)  # dup2 clears close-on-exec: exactly fds 3 and 4 reach the browser
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen([chromium, *self.FLAGS, f"--user-data-dir={user_dir}", "about:blank"],
                                     preexec_fn=child, close_fds=False, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(hi_r)
        os.close(hi_w)
        self.buf, self.next_id, self.events = b"", 0, []

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium")
            if select.select([self.evt_r], [], [], left)[0]:
                chunk = os.read(self.evt_r, 1 << 20)
                if not chunk:
                    raise EOFError(f"chromium exited (code {self.proc.poll()})")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def wait_for(self, method: str, match: dict | None = None, timeout: float = 60) -> dict:
        """The first event `method` whose params contain `match`."""
        def hit(m: dict) -> bool:
            return m.get("method") == method and all(m["params"].get(k) == v for k, v in (match or {}).items())

        deadline = time.monotonic() + timeout
        while not any(hit(m) for m in self.events):
            self.events.append(self._message(deadline))
        return next(m for m in self.events if hit(m))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (EOFError, TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.cmd_w)
        os.close(self.evt_r)


def test_report_in_headless_chromium(demo, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium); CI installs it")
    root, metrics, _ = demo
    page_path = write_report(root, out=root / "report.html")
    n_images = sum(1 for t, _ in parse(page_path.read_text(encoding="utf-8")).tags if t == "img")

    browser = Browser(chromium, tmp_path / "chromium-profile")
    try:
        target = next(t for t in browser.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        s = browser.send("Target.attachToTarget", {"targetId": target["targetId"], "flatten": True})["sessionId"]
        for domain in ("Network", "Page", "Log", "Runtime"):
            browser.send(f"{domain}.enable", session=s)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": 1280, "height": 2000, "deviceScaleFactor": 1, "mobile": False}, session=s)
        browser.send("Page.setLifecycleEventsEnabled", {"enabled": True}, session=s)
        loader = browser.send("Page.navigate", {"url": page_path.resolve().as_uri()}, session=s)["loaderId"]
        browser.wait_for("Page.lifecycleEvent", {"loaderId": loader, "name": "load"})
        probe = ("JSON.stringify({imgs: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight]),"
                 " cards: [...document.querySelectorAll('.card .value')].map(x => x.textContent),"
                 " rows: document.querySelectorAll('table.per-class tbody tr').length,"
                 " weak: [...document.querySelectorAll('tr.weak td.name')].map(x => x.firstChild.textContent),"
                 " h1: document.querySelector('h1').textContent, scripts: document.scripts.length,"
                 " href: location.href})")
        dom = json.loads(browser.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                      session=s)["result"]["value"])
        shot = base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"}, session=s)["data"])
        size = browser.send("Page.getLayoutMetrics", session=s)["cssContentSize"]
        full = browser.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": 1280, "height": size["height"], "scale": 1}}, session=s)["data"]
    finally:
        browser.close()

    # (a) no request but the page itself and data: URIs, none failed, nothing logged as an error
    requests = [m["params"]["request"]["url"] for m in browser.events if m.get("method") == "Network.requestWillBeSent"]
    assert requests and requests[0] == page_path.resolve().as_uri()
    assert all(u.startswith("data:image/") for u in requests[1:]), [u[:60] for u in requests]
    failed = [m["params"] for m in browser.events if m.get("method") == "Network.loadingFailed"]
    assert failed == []
    errors = [m["params"]["entry"]["text"] for m in browser.events
              if m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error"]
    assert errors == []

    # (b) the DOM as rendered: every image decoded, the metric cards, the per-class table, no script
    assert dom["href"] == page_path.resolve().as_uri()
    assert len(dom["imgs"]) == n_images == 7
    assert all(ok and w > 0 and h > 0 for ok, w, h in dom["imgs"]), dom["imgs"]
    assert f"{100 * metrics['top1']:.1f}%" in dom["cards"] and dom["h1"] == "cpu_egornn"
    assert dom["rows"] == len(CLASSES) and [w.strip() for w in dom["weak"]] == [WEAK]
    assert dom["scripts"] == 0

    # (c) the screenshot is a page, not a blank canvas
    with Image.open(io.BytesIO(shot)) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1280)
    assert pixels.std() > 20 and len(np.unique(pixels)) > 50
    assert size["height"] > 2000  # curves, two evaluations figures, clips, config: longer than one screen
    out = Path(os.environ.get("EGOATTN_REPORT_SCREENSHOT", tmp_path / "report.png"))
    out.write_bytes(base64.b64decode(full))
