"""`egoattn compare`: one table over runs, mean and standard deviation over seeds.

Each argument is a run directory or a metrics.json file. For a run directory the numbers come from
its evaluation, RUN/eval-*/metrics.json (the newest one when there are several, which is noted),
and only without any evaluation from the training's RUN/metrics.json: an evaluation is the
explicit, complete measurement on the chosen split, whereas the training file holds what the
validation loop saw.

Runs are grouped by a key of their config.yaml (a dotted path such as `name` or `model.name`); the
seeds of a group are averaged. A metrics.json without a config.yaml beside its run (the handcrafted
baselines) is grouped by the same dotted key inside the metrics.json, else by its `name` field.
Cells read "mean ± std (n)" in percent, std being the sample standard deviation (ddof = 1) over the
n runs of the group; the best mean of each column is bold.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from egoattn.errors import BadInputError
from egoattn.fileio import read_json, read_yaml, write_text_atomic

#: (key in metrics.json, column title); a column appears when at least one run has the metric.
METRICS = (
    ("top1", "Top-1"),
    ("mean_class_accuracy", "Mean class acc."),
    ("macro_f1", "Macro F1"),
    ("verb_accuracy", "Verb acc."),
    ("noun_accuracy", "Noun acc."),
)
#: Other names the training's metrics.json may use for the same numbers (first match wins).
ALIASES = {
    "top1": ("top1", "best_val_top1", "best_val_acc", "val_top1", "val_acc", "accuracy"),
    "mean_class_accuracy": ("mean_class_accuracy", "val_mean_class_accuracy"),
    "macro_f1": ("macro_f1", "val_macro_f1"),
    "verb_accuracy": ("verb_accuracy", "val_verb_accuracy"),
    "noun_accuracy": ("noun_accuracy", "val_noun_accuracy"),
}
#: Config keys that may differ between the runs of a group without a warning.
PER_RUN_KEYS = ("seed",)


def dotted(obj: Any, key: str) -> Any:
    """obj["a"]["b"] for key "a.b"; KeyError when a part is missing."""
    node = obj
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in obj.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def find_metrics(path: str | Path) -> tuple[Path, Path]:
    """(metrics.json, run directory) for a run directory or a metrics.json path (see module docstring)."""
    path = Path(path)
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name.startswith("eval-") else path.parent
        return path, run_dir
    if not path.is_dir():
        raise BadInputError(path, "no such run directory or metrics file")
    evals = sorted(path.glob("eval-*/metrics.json"), key=lambda p: (p.stat().st_mtime, str(p)))
    if evals:
        if len(evals) > 1:
            print(f"note: {path} has {len(evals)} evaluations; using the newest, {evals[-1].parent.name}")
        return evals[-1], path
    if (path / "metrics.json").is_file():
        return path / "metrics.json", path
    raise BadInputError(path, "no eval-*/metrics.json and no metrics.json (evaluate or train the run first)")


def _metric_values(metrics: dict[str, Any], source: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    for key, names in ALIASES.items():
        for name in names:
            if name in metrics and metrics[name] is not None:
                try:
                    v = float(metrics[name])
                except (TypeError, ValueError):
                    raise BadInputError(source, f"{name} = {metrics[name]!r} is not a number") from None
                if not 0.0 <= v <= 1.0:
                    raise BadInputError(source, f"{name} = {v} is not a fraction in [0, 1]")
                values[key] = v
                break
    if not values:
        raise BadInputError(source, f"none of the metrics {[k for k, _ in METRICS]} is present")
    return values


def load_run_result(path: str | Path, group_by: str = "name") -> dict[str, Any]:
    """One run: its group, seed, metric values, config and where they came from."""
    metrics_path, run_dir = find_metrics(path)
    metrics = read_json(metrics_path)
    if not isinstance(metrics, dict):
        raise BadInputError(metrics_path, "expected a JSON object")
    config_path = run_dir / "config.yaml"
    config: dict[str, Any] = {}
    if config_path.is_file():
        config = read_yaml(config_path) or {}
        if not isinstance(config, dict):
            raise BadInputError(config_path, "expected a mapping")
        try:
            group = dotted(config, group_by)
        except KeyError:
            raise BadInputError(config_path, f"no key {group_by!r} to group by") from None
    else:
        try:
            group = dotted(metrics, group_by)
        except KeyError:
            if "name" not in metrics:
                raise BadInputError(metrics_path, f"no config.yaml beside the run and no {group_by!r} "
                                                  "or 'name' field to group by") from None
            group = metrics["name"]
    seed = config.get("seed", metrics.get("seed"))
    return {"path": str(metrics_path), "run_dir": str(run_dir), "group": str(group), "seed": seed,
            "values": _metric_values(metrics, metrics_path), "config": config}


def _warn_mixed(group: str, runs: Sequence[dict[str, Any]], group_by: str) -> None:
    """Runs averaged together should differ only by seed; say so when their configs differ otherwise."""
    configs = [_flatten(r["config"]) for r in runs if r["config"]]
    if len(configs) < 2:
        return
    keys = sorted(set().union(*configs))
    differ = [k for k in keys if k.split(".")[-1] not in PER_RUN_KEYS and k != group_by
              and len({repr(c.get(k)) for c in configs}) > 1]
    if differ:
        print(f"warning: the runs of group {group!r} differ in more than the seed: {', '.join(differ[:8])}")


def cell_stat(values: Sequence[float]) -> dict[str, Any]:
    """A table cell: mean, sample std (ddof 1; None for one value) and n of a non-empty list."""
    vals = np.asarray(values, dtype=np.float64)
    return {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if vals.size > 1 else None, "n": int(vals.size)}


def aggregate(results: Sequence[dict[str, Any]], group_by: str = "name") -> list[dict[str, Any]]:
    """Rows (one per group, in order of first appearance) with mean, std and n of every metric."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault(r["group"], []).append(r)
    present = [k for k, _ in METRICS if any(k in r["values"] for r in results)]
    rows = []
    for group, runs in groups.items():
        _warn_mixed(group, runs, group_by)
        stats = {}
        for key in present:
            vals = [r["values"][key] for r in runs if key in r["values"]]
            if vals:
                stats[key] = cell_stat(vals)
        rows.append({"group": group, "n": len(runs), "runs": [r["path"] for r in runs],
                     "seeds": [r["seed"] for r in runs], "metrics": stats, "best": []})
    for key in present:
        means = [row["metrics"][key]["mean"] for row in rows if key in row["metrics"]]
        top = max(means)
        for row in rows:
            if key in row["metrics"] and math.isclose(row["metrics"][key]["mean"], top, rel_tol=0, abs_tol=1e-12):
                row["best"].append(key)
    return rows


def format_cell(stat: dict[str, Any] | None) -> str:
    """'mean ± std (n)' in percent with one decimal; no ± for a single run; '–' when missing."""
    if stat is None:
        return "–"
    if stat["std"] is None:
        return f"{100 * stat['mean']:.1f} ({stat['n']})"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f} ({stat['n']})"


def _columns(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(k, title) for k, title in METRICS if any(k in row["metrics"] for row in rows)]


def table_markdown(rows: Sequence[dict[str, Any]], group_by: str) -> str:
    cols = _columns(rows)
    lines = ["| Configuration | " + " | ".join(t for _, t in cols) + " |", "|---" + "|---:" * len(cols) + "|"]
    for row in rows:
        cells = []
        for key, _ in cols:
            text = format_cell(row["metrics"].get(key))
            cells.append(f"**{text}**" if key in row["best"] else text)
        lines.append(f"| {row['group']} | " + " | ".join(cells) + " |")
    lines += ["", f"Grouped by `{group_by}`. Cells: mean ± sample std (ddof 1) over the runs of a group, in %, "
                  "with the number of runs in brackets. Best per column in **bold**."]
    return "\n".join(lines) + "\n"


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    cols = _columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["configuration", "runs", *[f"{k}_{s}" for k, _ in cols for s in ("mean", "std", "n")],
                     "best"])
    for row in rows:
        cells: list[Any] = [row["group"], row["n"]]
        for key, _ in cols:
            stat = row["metrics"].get(key)
            cells += ["", "", 0] if stat is None else [repr(stat["mean"]), "" if stat["std"] is None else repr(stat["std"]),
                                                       stat["n"]]
        writer.writerow([*cells, ";".join(row["best"])])
    return buf.getvalue()


def print_table(rows: Sequence[dict[str, Any]], group_by: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    cols = _columns(rows)
    table = Table(title=f"Runs grouped by {group_by}", caption="mean ± std (n) in %; best per column in bold")
    table.add_column("Configuration")
    for _, title in cols:
        table.add_column(title, justify="right")
    for row in rows:
        cells = [Text(format_cell(row["metrics"].get(k)), style="bold" if k in row["best"] else "") for k, _ in cols]
        table.add_row(Text(row["group"]), *cells)
    Console().print(table)


def _out_paths(out: Path) -> tuple[Path, Path]:
    base = out.with_suffix("") if out.suffix.lower() in (".md", ".csv") else out
    return base.with_name(base.name + ".md"), base.with_name(base.name + ".csv")


def compare_runs(paths: Sequence[str | Path], group_by: str = "name", out: str | Path | None = None) -> list[dict[str, Any]]:
    """Aggregate runs per configuration, print the table and, with `out`, write OUT.md and OUT.csv."""
    if not paths:
        raise BadInputError(None, "no runs given")
    results, seen = [], set()
    for p in paths:
        result = load_run_result(p, group_by)
        key = str(Path(result["path"]).resolve())
        if key in seen:
            print(f"note: {p} given twice; counted once")
            continue
        seen.add(key)
        results.append(result)
    rows = aggregate(results, group_by)
    print_table(rows, group_by)
    if out is not None:
        md, csv_path = _out_paths(Path(out))
        write_text_atomic(md, table_markdown(rows, group_by))
        write_text_atomic(csv_path, table_csv(rows))
    return rows
