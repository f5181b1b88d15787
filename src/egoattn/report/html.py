"""`egoattn report RUN`: one self-contained HTML page a person would rather read than a folder of CSVs.

What it shows, from whatever subset of the run exists:

- a header: run name, model, dataset, split, dates and the headline metrics of the newest evaluation
  (top-1, top-k, mean class accuracy, macro F1, verb/noun accuracy) as a row of cards;
- learning curves (drawn from RUN/metrics.csv with `plot_learning_curves`, else the evaluation's PNG)
  and the training summary of RUN/metrics.json;
- per evaluation (RUN/eval-*/, or a folder whose metrics.json names this run): the per-class
  precision/recall/F1/support table with weak classes highlighted, the confusion and correlation
  matrices;
- attention (RUN/explain-*/, or a folder whose explain.json / attention_scores.json names this run,
  e.g. the demo's DEMO/attention/): the GIFs with their labels, the frame grids, and the pointing
  game / attention mass table against the centre prior;
- the resolved config (RUN/config.yaml).

A demo folder (DEMO/run, DEMO/eval, DEMO/attention) is accepted as RUN too.

Self-contained: images are inlined as base64 data URIs, CSS is inline, there is no script and no
font or file fetched from anywhere; a Content-Security-Policy (`default-src 'none'`) makes the
browser refuse any request that could slip in. Every text from the run is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from egoattn.errors import BadInputError
from egoattn.fileio import read_json, read_yaml, write_text_atomic

#: A class is "weak" when it is in the split and its F1 is 0 or this far below the macro F1.
WEAK_GAP = 0.20
#: The headline cards, in order: (metrics.json key, label).
CARDS = (
    ("top1", "Top-1 accuracy"),
    ("top5", "Top-5 accuracy"),
    ("mean_class_accuracy", "Mean class accuracy"),
    ("macro_f1", "Macro F1"),
    ("verb_accuracy", "Verb accuracy"),
    ("noun_accuracy", "Noun accuracy"),
)
#: Matrix images wider than this (pixels) are shown one per row, at full width.
WIDE_FIGURE = 1100
IMAGE_TYPES = {".png": ("image/png", (b"\x89PNG",)), ".gif": ("image/gif", (b"GIF87a", b"GIF89a")),
               ".jpg": ("image/jpeg", (b"\xff\xd8",)), ".jpeg": ("image/jpeg", (b"\xff\xd8",))}

e = html.escape  # quote=True: safe in text and in attribute values


# --- finding the files ----------------------------------------------------------------------------

@dataclass
class RunFiles:
    """The run directory and the evaluation / attention folders that belong to it."""

    run: Path
    evals: list[Path] = field(default_factory=list)  # newest first
    attention: list[Path] = field(default_factory=list)


def _same_run(recorded: Any, run: Path) -> bool:
    """Whether a path recorded by evaluate/explain (absolute, or relative to their cwd) is `run`."""
    if not isinstance(recorded, str) or not recorded:
        return False
    p = Path(recorded)
    if p.is_absolute():
        return p.resolve() == run.resolve()
    parts = [x for x in p.parts if x != "."]
    if not parts or ".." in parts:
        return (Path.cwd() / p).resolve() == run.resolve()
    return list(run.resolve().parts[-len(parts):]) == parts


def _json_or_none(path: Path) -> Any:
    try:
        return read_json(path) if path.is_file() else None
    except BadInputError:
        return None


def _is_eval_of(d: Path, run: Path) -> bool:
    if not (d / "metrics.json").is_file():
        return False
    if d.parent == run and d.name.startswith("eval-"):
        return True
    m = _json_or_none(d / "metrics.json")
    return isinstance(m, dict) and "top1" in m and _same_run(m.get("run"), run)


def _has_media(d: Path) -> bool:
    return any(d.glob("*.gif")) or any(d.glob("*.png")) or (d / "attention_scores.json").is_file()


def _is_attention_of(d: Path, run: Path) -> bool:
    if d.parent == run and d.name.startswith("explain-"):
        return _has_media(d)
    ex = _json_or_none(d / "explain.json")
    if isinstance(ex, dict) and isinstance(ex.get("runs"), dict) and any(_same_run(r, run) for r in ex["runs"].values()):
        return True
    sc = _json_or_none(d / "attention_scores.json")
    models = sc.get("models") if isinstance(sc, dict) else None
    return isinstance(models, dict) and any(isinstance(m, dict) and _same_run(m.get("run"), run) for m in models.values())


def find_run_files(run: str | Path, eval_dirs: Sequence[str | Path] = (),
                   attention_dirs: Sequence[str | Path] = ()) -> RunFiles:
    """The run and its evaluation and attention folders: those given, plus those found in RUN and
    beside it (a folder beside RUN counts only when its metrics.json / explain.json names RUN)."""
    run = Path(run)
    if not run.is_dir():
        raise BadInputError(run, "run directory not found")
    if not (run / "config.yaml").is_file() and (run / "run" / "config.yaml").is_file():
        run = run / "run"  # a demo folder: DEMO/run, DEMO/eval, DEMO/attention
    evals, attention = [], []
    for d in map(Path, eval_dirs):
        if not (d / "metrics.json").is_file():
            raise BadInputError(d, "not an evaluation folder (no metrics.json); run `egoattn evaluate` first")
        evals.append(d)
    for d in map(Path, attention_dirs):
        if not d.is_dir() or not _has_media(d):
            raise BadInputError(d, "not an attention folder (no GIF, PNG or attention_scores.json)")
        attention.append(d)
    candidates = sorted(p for p in run.iterdir() if p.is_dir())
    candidates += sorted(p for p in run.parent.iterdir() if p.is_dir() and p.resolve() != run.resolve())
    seen_e = {d.resolve() for d in evals}
    seen_a = {d.resolve() for d in attention}
    for d in candidates:
        if d.resolve() not in seen_e and _is_eval_of(d, run):
            evals.append(d)
            seen_e.add(d.resolve())
        elif d.resolve() not in seen_a and _is_attention_of(d, run):
            attention.append(d)
            seen_a.add(d.resolve())
    evals.sort(key=lambda d: (d / "metrics.json").stat().st_mtime, reverse=True)
    known = ("config.yaml", "metrics.csv", "metrics.json", "classes.txt")
    if not evals and not attention and not any((run / k).is_file() for k in known):
        raise BadInputError(run, "not a run directory: no config.yaml, metrics.csv, metrics.json, eval-*/ or "
                                 "attention folder")
    return RunFiles(run=run, evals=evals, attention=attention)


# --- small HTML pieces ----------------------------------------------------------------------------

def _pct(x: Any) -> str:
    return f"{100 * float(x):.1f}%" if isinstance(x, (int, float)) else "–"


def _when(path: Path) -> str:
    return dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _size(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n / 2 ** 10:.1f} KiB"


def _note(text: str, kind: str = "notice") -> str:
    return f'<p class="{kind}">{e(text)}</p>'


def data_uri(path: Path) -> str | None:
    """The image as a base64 data URI, or None when it is not a PNG/GIF/JPEG (checked by its magic bytes)."""
    kind = IMAGE_TYPES.get(path.suffix.lower())
    if kind is None or not path.is_file():
        return None
    raw = path.read_bytes()
    if not raw.startswith(kind[1]):
        return None
    return f"data:{kind[0]};base64,{base64.b64encode(raw).decode('ascii')}"


def image_width(path: Path) -> int:
    """Pixel width of a PNG or GIF from its header (0 when unknown)."""
    with path.open("rb") as f:
        head = f.read(24)
    if head.startswith(b"\x89PNG") and len(head) >= 24:
        return int.from_bytes(head[16:20], "big")
    if head.startswith(b"GIF8") and len(head) >= 8:
        return int.from_bytes(head[6:8], "little")
    return 0


def _img(path: Path, alt: str, css: str = "") -> str:
    uri = data_uri(path)
    if uri is None:
        return _note(f"{path}: not a readable image", "warn")
    cls = f' class="{e(css)}"' if css else ""
    return f'<img{cls} src="{uri}" alt="{e(alt)}" loading="eager">'


def _figure(path: Path, caption: str, css: str = "") -> str:
    return f"<figure>{_img(path, caption, css)}<figcaption>{e(caption)}</figcaption></figure>"


def _cards(items: Iterable[tuple[str, str, str]]) -> str:
    """(label, value, hint) cards."""
    cells = [f'<div class="card"><div class="label">{e(label)}</div><div class="value">{e(value)}</div>'
             + (f'<div class="hint">{e(hint)}</div>' if hint else "") + "</div>" for label, value, hint in items]
    return f'<div class="cards">{"".join(cells)}</div>' if cells else ""


def metric_cards(metrics: dict[str, Any]) -> str:
    """Top-1, top-k, mean class accuracy, macro F1, verb/noun accuracy and the clip count."""
    items = []
    for key, label in CARDS:
        if not isinstance(metrics.get(key), (int, float)):
            continue
        if key == "top5":
            k = metrics.get("top5_k", 5)
            if k >= metrics.get("num_classes", 10 ** 9):
                continue  # top-K of K classes is always 100%
            label = f"Top-{k} accuracy"
        items.append((label, _pct(metrics[key]), ""))
    if "num_samples" in metrics:
        items.append(("Clips", str(metrics["num_samples"]), f"{metrics.get('num_classes', '?')} classes"))
    return _cards(items)


# --- sections -------------------------------------------------------------------------------------

def _per_class_rows(eval_dir: Path, metrics: dict[str, Any]) -> list[tuple[str, float, float, float, int]] | None:
    pc = metrics.get("per_class")
    if isinstance(pc, dict) and pc:
        names = metrics.get("classes") or list(pc)
        return [(c, float(pc[c]["precision"]), float(pc[c]["recall"]), float(pc[c]["f1"]), int(pc[c]["support"]))
                for c in names if c in pc]
    path = eval_dir / "per_class.csv"
    if not path.is_file():
        return None
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        for i, r in enumerate(csv.DictReader(f)):
            try:
                rows.append((r["class"], float(r["precision"]), float(r["recall"]), float(r["f1"]), int(r["support"])))
            except (KeyError, TypeError, ValueError):
                raise BadInputError(f"{path}:{i + 2}", "expected columns class,precision,recall,f1,support") from None
    return rows


def weak_classes(rows: Sequence[tuple[str, float, float, float, int]], macro_f1: float) -> set[str]:
    """Classes in the split whose F1 is 0 or at least WEAK_GAP below the macro F1."""
    return {c for c, _, _, f1, support in rows if support > 0 and (f1 == 0 or f1 < macro_f1 - WEAK_GAP)}


def per_class_table(rows: Sequence[tuple[str, float, float, float, int]], macro_f1: float) -> str:
    weak = weak_classes(rows, macro_f1)
    body = []
    for i, (c, p, r, f1, support) in enumerate(rows):
        cls = "weak" if c in weak else "absent" if support == 0 else ""
        tag = ' <span class="tag weak">weak</span>' if c in weak else \
              ' <span class="tag">absent</span>' if support == 0 else ""
        body.append(
            f'<tr class="{cls}"><td class="num">{i}</td><td class="name">{e(c)}{tag}</td><td>{_pct(p)}</td>'
            f'<td>{_pct(r)}</td><td><div class="f1"><span>{_pct(f1)}</span><div class="bar"><i style="width:'
            f'{100 * min(max(f1, 0.0), 1.0):.1f}%"></i></div></div></td><td>{support}</td></tr>')
    legend = (f"{len(weak)} weak class{'es' if len(weak) != 1 else ''} highlighted: F1 = 0, or more than "
              f"{100 * WEAK_GAP:.0f} points below the macro F1 ({_pct(macro_f1)}).")
    return (f'<p class="muted">{e(legend)}</p><div class="table-wrap"><table class="per-class"><thead><tr>'
            '<th class="num">#</th><th class="name">Class</th><th>Precision</th><th>Recall</th><th>F1</th>'
            f'<th>Support</th></tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def eval_section(eval_dir: Path, primary: bool, index: int) -> str:
    try:
        metrics = read_json(eval_dir / "metrics.json")
    except BadInputError as err:
        return f'<section id="eval-{index}"><h2>Evaluation</h2>{_note(str(err), "warn")}</section>'
    if not isinstance(metrics, dict):
        warning = _note(f"{eval_dir / 'metrics.json'}: not a metrics object", "warn")
        return f'<section id="eval-{index}"><h2>Evaluation</h2>{warning}</section>'
    split = metrics.get("split", eval_dir.name)
    parts = [f'<section id="eval-{index}"><h2>Evaluation on {e(str(split))}</h2>',
             f'<p class="muted">{e(str(eval_dir))} · evaluated {e(_when(eval_dir / "metrics.json"))}'
             + (f" · checkpoint {e(str(metrics['checkpoint']))}" if "checkpoint" in metrics else "")
             + (f" · {e(str(metrics['crops']))} crop(s)" if metrics.get("crops", 1) != 1 else "")
             + "</p>"]
    if not primary:
        parts.append(metric_cards(metrics))
    extra = [(label, _pct(metrics[key])) for key, label in (("macro_precision", "Macro precision"),
                                                           ("macro_recall", "Macro recall"),
                                                           ("weighted_f1", "Weighted F1"))
             if isinstance(metrics.get(key), (int, float))]
    if extra:
        parts.append('<p class="inline-metrics">' + " · ".join(f"{e(k)} <b>{e(v)}</b>" for k, v in extra) + "</p>")
    if metrics.get("absent_classes"):
        parts.append(_note("Classes absent from this split (support 0, left out of the macro averages): "
                           + ", ".join(map(str, metrics["absent_classes"])) + ".", "muted"))
    try:
        rows = _per_class_rows(eval_dir, metrics)
    except (BadInputError, KeyError, TypeError, ValueError) as err:
        rows = None
        parts.append(_note(f"per-class numbers unreadable: {err}", "warn"))
    figs = [_figure(eval_dir / name, caption) for name, caption in
            (("confusion.png", "Row-normalised confusion matrix (true label vertical, prediction horizontal)"),
             ("correlation.png", "Correlation of the predicted class probabilities"))
            if (eval_dir / name).is_file()]
    if figs:
        # Matrices of many classes are drawn large: side by side they would shrink below legibility.
        wide = any(image_width(eval_dir / n) > WIDE_FIGURE for n in ("confusion.png", "correlation.png")
                   if (eval_dir / n).is_file())
        parts.append(f'<h3>Confusion and correlation</h3><div class="figs{" stacked" if wide else ""}">'
                     f'{"".join(figs)}</div>')
    if rows:
        parts.append("<h3>Per-class precision, recall and F1</h3>")
        parts.append(per_class_table(rows, float(metrics.get("macro_f1", 0.0))))
    parts.append("</section>")
    return "".join(parts)


def curves_section(files: RunFiles, name: str) -> str:
    run = files.run
    parts = ['<section id="training"><h2>Training</h2>']
    summary = _json_or_none(run / "metrics.json")
    if isinstance(summary, dict):
        items = [(label, fmt(summary[key]), "") for key, label, fmt in (
            ("epochs", "Epochs", str), ("best_epoch", "Best epoch", str), ("best_val_acc", "Best val. accuracy", _pct),
            ("final_val_acc", "Final val. accuracy", _pct), ("final_train_acc", "Final train accuracy", _pct),
            ("final_train_loss", "Final train loss", lambda v: f"{float(v):.3f}"))
            if summary.get(key) is not None]
        parts.append(_cards(items))
        if summary.get("stopped"):
            parts.append(_note(f"training stopped: {summary['stopped']}", "warn"))
    curves = None
    if (run / "metrics.csv").is_file():
        from egoattn.evaluation.plots import plot_learning_curves

        with tempfile.TemporaryDirectory() as tmp:
            try:
                png = plot_learning_curves(run / "metrics.csv", Path(tmp) / "curves.png", title=f"{name}: learning curves")
                curves = _figure(png, "Loss and accuracy per epoch (RUN/metrics.csv)", "wide")
            except BadInputError as err:
                parts.append(_note(f"no learning curves: {err}", "muted"))
    if curves is None:
        existing = [d / "learning_curves.png" for d in files.evals if (d / "learning_curves.png").is_file()]
        if existing:
            curves = _figure(existing[0], "Loss and accuracy per epoch", "wide")
    parts.append(curves or _note("No learning curves: the run has no metrics.csv yet.", "muted"))
    parts.append("</section>")
    return "".join(parts)


def scores_table(scores: dict[str, Any]) -> str:
    """Pointing game and attention mass inside the active-object mask: each model vs the centre prior."""
    models = [(n, m) for n, m in scores.get("models", {}).items() if isinstance(m, dict) and m.get("attention")]
    prior = scores.get("centre_prior", {})
    columns = models + [("centre prior", prior)]
    head = "".join(f'<th colspan="2">{e(n)}</th>' for n, _ in columns)
    sub = "<th>pointing</th><th>mass</th>" * len(columns)

    def row(label: str, pick: Any, bold: bool) -> str:
        base = pick(prior) or {}
        cells = []
        for n, m in columns:
            s = pick(m)
            for key in ("pointing_game", "mass_inside"):
                if not s or key not in s:
                    cells.append("<td>–</td>")
                    continue
                mark = ""
                if n != "centre prior" and key in base:
                    mark = ' class="better"' if s[key] > base[key] else ' class="worse"' if s[key] < base[key] else ""
                cells.append(f"<td{mark}>{_pct(s[key])}</td>")
        frames = base.get("frames", "–")
        name = f"<b>{e(label)}</b>" if bold else e(label)
        return f'<tr><td class="name">{name}</td><td>{e(str(frames))}</td>{"".join(cells)}</tr>'

    body = [row("overall", lambda m: m.get("overall"), True)]
    for c in prior.get("per_class", {}):
        body.append(row(c, lambda m, c=c: m.get("per_class", {}).get(c), False))
    sigma = scores.get("centre_prior_sigma")
    legend = ("Pointing game: share of frames whose attention peak lies inside the active-object mask. Mass: share "
              "of the attention inside the mask. Centre prior: a Gaussian at the frame centre"
              + (f" (sigma {sigma} of each side)" if sigma is not None else "")
              + ", the baseline a model must beat; green = better than the prior, red = worse.")
    dropped = [n for n, m in scores.get("models", {}).items() if isinstance(m, dict) and not m.get("attention")]
    if dropped:
        legend += f" Without spatial attention (not scored): {', '.join(dropped)}."
    return (f'<p class="muted">{e(legend)}</p><div class="table-wrap"><table class="scores"><thead><tr>'
            f'<th class="name" rowspan="2">Class</th><th rowspan="2">Frames</th>{head}</tr><tr>{sub}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def attention_section(d: Path, index: int) -> str:
    parts = [f'<section id="attention-{index}"><h2>Attention</h2><p class="muted">{e(str(d))}</p>']
    scores_path = d / "attention_scores.json"
    if scores_path.is_file():
        try:
            scores = read_json(scores_path)
            parts.append(f"<h3>Does it look at the active object? ({e(str(scores.get('clips', '?')))} clips"
                         + (f", {e(str(scores['split']))}" if scores.get("split") else "") + ")</h3>")
            parts.append(scores_table(scores))
        except (BadInputError, AttributeError, KeyError, TypeError) as err:
            parts.append(_note(f"{scores_path}: unreadable attention scores ({err})", "warn"))
    explain = _json_or_none(d / "explain.json")
    info = {c.get("clip_id"): c for c in explain.get("clips", []) if isinstance(c, dict)} \
        if isinstance(explain, dict) else {}
    gifs = sorted(d.glob("*.gif"))
    grids = {p.stem: p for p in sorted(d.glob("*.png"))}
    cards = []
    for gif in gifs:
        clip = info.get(gif.stem, {})
        lines = [f"<b>{e(gif.stem)}</b>"]
        if clip.get("true"):
            lines.append(f"true: {e(str(clip['true']))}")
        for model, p in (clip.get("predictions") or {}).items():
            if isinstance(p, dict) and "label" in p:
                ok = clip.get("true") is not None and p["label"] == clip["true"]
                mark = "✓" if ok else "✗" if clip.get("true") else ""
                prob = f" ({_pct(p['prob'])})" if isinstance(p.get("prob"), (int, float)) else ""
                lines.append(f'<span class="{"ok" if ok else "bad" if mark else ""}">{e(model)}: '
                             f"{e(str(p['label']))}{prob} {mark}</span>")
        grid = grids.pop(gif.stem, None)
        more = (f"<details><summary>all frames</summary>{_img(grid, f'{gif.stem}: frames and attention')}</details>"
                if grid else "")
        cards.append(f'<div class="clip">{_img(gif, f"{gif.stem}: attention over the clip")}'
                     f'<div class="caption">{"<br>".join(lines)}</div>{more}</div>')
    for stem, png in grids.items():  # images without an animation beside them
        cards.append(f'<div class="clip">{_img(png, stem)}<div class="caption"><b>{e(stem)}</b></div></div>')
    if cards:
        parts.append(f'<h3>Attention over the clips</h3><div class="clips">{"".join(cards)}</div>')
    parts.append("</section>")
    return "".join(parts)


def config_section(run: Path) -> str:
    path = run / "config.yaml"
    body = (f"<pre>{e(path.read_text(encoding='utf-8', errors='replace'))}</pre>" if path.is_file()
            else _note("No config.yaml in the run directory.", "muted"))
    classes = run / "classes.txt"
    if classes.is_file():
        names = [c for c in classes.read_text(encoding="utf-8", errors="replace").splitlines() if c.strip()]
        body += (f"<details><summary>Classes ({len(names)})</summary><ol start=\"0\" class=\"classes\">"
                 + "".join(f"<li>{e(c)}</li>" for c in names) + "</ol></details>")
    ckpts = sorted((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").is_dir() else []
    if ckpts:
        body += ('<p class="muted">Checkpoints: ' + ", ".join(
            f"{e(p.name)} ({_size(p.stat().st_size)}, {e(_when(p))})" for p in ckpts) + "</p>")
    return f'<section id="config"><h2>Resolved config</h2>{body}</section>'


# --- the page -------------------------------------------------------------------------------------

CSS = """
:root{--fg:#1f2933;--muted:#637083;--line:#e3e7ec;--bg:#f4f6f9;--card:#fff;--accent:#2563eb;
--weak:#fdecec;--weak-fg:#b42318;--good:#067647}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue","Liberation Sans",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:28px 24px 56px}
header h1{font-size:28px;line-height:1.2;margin:0 0 6px;letter-spacing:-.01em}
header .desc{margin:0 0 10px;color:var(--muted)}
.meta{display:flex;flex-wrap:wrap;gap:6px 8px;margin:8px 0 0;padding:0;list-style:none}
.meta li{background:var(--card);border:1px solid var(--line);border-radius:999px;padding:2px 12px;font-size:13px}
.meta li b{color:var(--muted);font-weight:500;margin-right:4px}
nav{margin:16px 0 0;font-size:14px}
nav a{color:var(--accent);text-decoration:none;margin-right:16px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:18px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
.card .label{font-size:12px;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
.card .value{font-size:28px;font-weight:650;font-variant-numeric:tabular-nums;line-height:1.25}
.card .hint{font-size:12px;color:var(--muted)}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:20px 24px;margin:20px 0;
box-shadow:0 1px 2px rgba(16,24,40,.04)}
section .cards .card{background:var(--bg)}
h2{font-size:20px;margin:0 0 4px}
h3{font-size:16px;margin:22px 0 8px}
.muted{color:var(--muted);font-size:13px;margin:4px 0 10px}
.notice{background:#fff8eb;border:1px solid #fcd9a4;color:#93370d;padding:12px 16px;border-radius:8px}
.warn{background:var(--weak);border:1px solid #f8c6c2;color:var(--weak-fg);padding:8px 12px;border-radius:8px}
.inline-metrics{margin:6px 0;font-variant-numeric:tabular-nums}
.table-wrap{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:14px;font-variant-numeric:tabular-nums}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em;
background:var(--card);position:sticky;top:0}
th.name,td.name{text-align:left}
td.num,th.num{color:var(--muted);width:2.5em}
table.per-class{width:auto;min-width:min(100%,760px)}
table.per-class td.name{padding-right:32px}
tbody tr:hover td{background:#f8fafc}
tr.weak td{background:var(--weak)}
tr.weak td.name{color:var(--weak-fg);font-weight:600}
tr.absent td{color:#98a2b3}
.tag{display:inline-block;font-size:11px;font-weight:600;padding:0 6px;border-radius:4px;margin-left:6px;
background:#eef1f5;color:var(--muted);vertical-align:1px}
.tag.weak{background:var(--weak-fg);color:#fff}
.f1{display:flex;align-items:center;justify-content:flex-end;gap:8px}
.f1 span{min-width:3.6em}
.bar{width:110px;height:8px;background:#e7ebf0;border-radius:4px;overflow:hidden}
.bar i{display:block;height:100%;background:var(--accent)}
tr.weak .bar i{background:var(--weak-fg)}
table.scores td.better{color:var(--good);font-weight:600}
table.scores td.worse{color:var(--weak-fg)}
figure{margin:0}
figcaption{color:var(--muted);font-size:13px;margin-top:6px}
img{display:block;max-width:100%;height:auto;border-radius:6px}
img.wide{max-width:1000px;width:100%}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:20px;align-items:start}
.figs.stacked{grid-template-columns:1fr}
.clips{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:16px}
.clip{border:1px solid var(--line);border-radius:10px;padding:10px;background:var(--bg)}
.clip img{margin:0 auto}
.caption{font-size:13px;margin-top:8px;line-height:1.6}
.caption .ok{color:var(--good)}
.caption .bad{color:var(--weak-fg)}
details{margin-top:8px}
summary{cursor:pointer;color:var(--accent);font-size:13px}
pre{background:#0f172a;color:#e2e8f0;padding:16px 18px;border-radius:8px;overflow:auto;max-height:640px;
font:13px/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace}
ol.classes{columns:3;font-size:13px}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:28px}
"""

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def render_report(files: RunFiles) -> str:
    """The HTML page of a run (see the module docstring)."""
    run = files.run
    config = read_yaml(run / "config.yaml") if (run / "config.yaml").is_file() else None
    config = config if isinstance(config, dict) else {}
    train_summary = _json_or_none(run / "metrics.json")
    train_summary = train_summary if isinstance(train_summary, dict) else {}
    primary = _json_or_none(files.evals[0] / "metrics.json") if files.evals else None
    primary = primary if isinstance(primary, dict) else None

    name = str(config.get("name") or train_summary.get("name") or (primary or {}).get("name") or run.name)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    model_name = str(model.get("name") or train_summary.get("model") or "unknown")
    options = model.get("options") if isinstance(model.get("options"), dict) else {}
    if options.get("backbone"):
        model_name += f" ({options['backbone']})"
    data_cfg = config.get("data") if isinstance(config.get("data"), dict) else {}
    meta = [("run", str(run)), ("model", model_name)]
    if primary:
        meta += [("dataset", str(primary.get("data", "unknown"))), ("split", str(primary.get("split", "?"))),
                 ("evaluated", _when(files.evals[0] / "metrics.json"))]
    elif data_cfg.get("split"):
        meta.append(("split", str(data_cfg["split"])))
    for marker in ("metrics.json", "config.yaml"):
        if (run / marker).is_file():
            meta.append(("trained", _when(run / marker)))
            break
    if "seed" in config:
        meta.append(("seed", str(config["seed"])))

    sections = []
    if primary:
        summary = metric_cards(primary)
    else:
        summary = _note(f"Not evaluated yet: run `egoattn evaluate {run} --data DATA` to get the test metrics, "
                        "per-class table and confusion matrix.")
        if isinstance(train_summary.get("best_val_acc"), (int, float)):
            summary = _cards([("Best val. accuracy", _pct(train_summary["best_val_acc"]),
                               f"epoch {train_summary.get('best_epoch', '?')}")]) + summary
    links = [("training", "Training")]
    sections.append(curves_section(files, name))
    for i, d in enumerate(files.evals):
        sections.append(eval_section(d, primary=i == 0 and primary is not None, index=i))
        links.append((f"eval-{i}", "Evaluation" if len(files.evals) == 1 else f"Evaluation {i + 1}"))
    for i, d in enumerate(files.attention):
        sections.append(attention_section(d, i))
        links.append((f"attention-{i}", "Attention" if len(files.attention) == 1 else f"Attention {i + 1}"))
    sections.append(config_section(run))
    links.append(("config", "Config"))

    description = f'<p class="desc">{e(str(config["description"]))}</p>' if config.get("description") else ""
    meta_html = "".join(f"<li><b>{e(k)}</b>{e(v)}</li>" for k, v in meta)
    nav = "".join(f'<a href="#{e(anchor)}">{e(label)}</a>' for anchor, label in links)
    generated = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{e(CSP)}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(name)} · egoattn report</title><style>{CSS}</style></head><body><main>"
        f'<header><h1>{e(name)}</h1>{description}<ul class="meta">{meta_html}</ul>{summary}<nav>{nav}</nav></header>'
        + "".join(sections)
        + f"<footer>egoattn report · generated {e(generated)}</footer></main></body></html>\n"
    )


def write_report(run: str | Path, out: str | Path | None = None, eval_dirs: Sequence[str | Path] = (),
                 attention_dirs: Sequence[str | Path] = ()) -> Path:
    """Write the report of `run` to `out` (default RUN/report.html) atomically; returns its path."""
    files = find_run_files(run, eval_dirs, attention_dirs)
    out = Path(out) if out is not None else files.run / "report.html"
    write_text_atomic(out, render_report(files))
    return out
