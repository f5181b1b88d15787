"""The `egoattn` command line. Each subcommand parses its options and calls one library function.

Heavy imports (torch, cv2) happen inside the commands so that `egoattn --help` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from egoattn.errors import EgoattnError

app = typer.Typer(
    help="egoattn: spatio-temporal attention action recognition for egocentric video.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Output folder of the synthetic source dataset (videos + ground truth)."),
    preset: str = typer.Option("default", help="small | default | large."),
    seed: int = typer.Option(0, help="The same seed gives the same decoded frames."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per core)."),
) -> None:
    """Generate the synthetic egocentric dataset: a hand acting on objects on a table, filmed by a moving camera."""
    from egoattn.data.synth import generate_synthetic

    try:
        generate_synthetic(out, preset=preset, seed=seed, workers=workers)
    except EgoattnError as e:
        _fail(e)


@app.command()
def prepare(
    source: Path = typer.Argument(..., help="Source dataset (or, with --check, a prepared dataset)."),
    out: Optional[Path] = typer.Argument(None, help="Output folder of the prepared dataset."),
    format: str = typer.Option("synthetic", "--format", help="synthetic | gtea61 | gtea61-course | videos | segments."),
    check: bool = typer.Option(False, "--check", help="Only report what is wrong with the dataset SOURCE."),
    short_side: int = typer.Option(256, help="Resize frames so that their short side is this many pixels."),
    flow: str = typer.Option("dis", help="Optical flow method: dis | tvl1 | farneback | none."),
    warp: bool = typer.Option(True, help="Also compute camera-compensated warp flow."),
    motion: bool = typer.Option(True, help="Also compute motion maps (moving vs static, camera removed)."),
    segments: Optional[Path] = typer.Option(None, help="Segment annotation CSV (format 'segments')."),
    split_dir: Optional[Path] = typer.Option(None, help="Folder of split files (format 'videos', UCF101/HMDB51 style)."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per core)."),
    shard: Optional[str] = typer.Option(None, help="K/N: prepare only the K-th of N shards (1-based)."),
    skip_bad: bool = typer.Option(False, help="Skip bad inputs and report them instead of stopping."),
) -> None:
    """Normalise a source dataset into egoattn's prepared layout (frames, flow, warp flow, motion maps)."""
    try:
        if check:
            from egoattn.data.check import check_dataset, print_problems

            problems = check_dataset(source)
            print_problems(source, problems)
            raise typer.Exit(1 if problems else 0)
        if out is None:
            raise typer.BadParameter("OUT is required unless --check is given")
        from egoattn.data.prepare import PrepareOptions, prepare_dataset

        options = PrepareOptions(
            format=format, short_side=short_side, flow=flow, warp=warp, motion=motion, segments=segments,
            split_dir=split_dir, workers=workers, shard=shard, skip_bad=skip_bad,
        )
        prepare_dataset(source, out, options)
    except EgoattnError as e:
        _fail(e)


@app.command()
def train(
    recipe: str = typer.Argument(..., help="A shipped recipe name (see `egoattn recipes`) or a YAML file."),
    data: Path = typer.Option(..., help="Prepared dataset folder."),
    out: Path = typer.Option(..., help="Run directory to create (or resume)."),
    init: Optional[Path] = typer.Option(None, help="Start from this earlier run's best checkpoint."),
    set: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe value: key=value (repeatable)."),
    devices: Optional[int] = typer.Option(None, help="Number of devices (GPUs, or CPU processes for DDP)."),
    num_nodes: int = typer.Option(1, help="Number of nodes for multi-node DDP."),
    resume: bool = typer.Option(False, help="Resume an interrupted run from its last checkpoint."),
    cache_features: bool = typer.Option(False, help="Compute the frozen backbone's features once and reuse them."),
) -> None:
    """Train a model with a recipe; writes checkpoints, metrics and the resolved config to the run directory."""
    from egoattn.training.run import train as run_train

    try:
        run_train(recipe, data=data, out=out, init=init, overrides=set or [], devices=devices,
                  num_nodes=num_nodes, resume=resume, cache_features=cache_features)
    except EgoattnError as e:
        _fail(e)


@app.command()
def recipes() -> None:
    """List the shipped training recipes."""
    from egoattn.training.config import list_recipes

    for name, description in list_recipes().items():
        typer.echo(f"{name:28s} {description}")


@app.command()
def evaluate(
    run: Path = typer.Argument(..., help="Run directory of a trained model."),
    data: Path = typer.Option(..., help="Prepared dataset folder."),
    split: Optional[str] = typer.Option(None, help="Split to evaluate (default: the run's split), e.g. gtea61, loso:S2."),
    out: Optional[Path] = typer.Option(None, help="Where to write (default RUN/eval-<split>)."),
    flow_stacks: int = typer.Option(1, help="Average flow logits over this many evenly spaced stacks."),
    crops: int = typer.Option(1, help="1 = centre crop, 5 = four corners and centre, averaged."),
) -> None:
    """Accuracy, per-class precision/recall/F1, verb/noun accuracy, confusion and correlation matrices."""
    from egoattn.evaluation.evaluate import evaluate_run

    try:
        evaluate_run(run, data=data, split=split, out=out, flow_stacks=flow_stacks, crops=crops)
    except EgoattnError as e:
        _fail(e)


@app.command()
def compare(
    runs: List[Path] = typer.Argument(..., help="Run directories (or their metrics.json files)."),
    group_by: str = typer.Option("name", help="Group runs by this config key (e.g. model.name); seeds are averaged."),
    out: Optional[Path] = typer.Option(None, help="Write the table as OUT.md and OUT.csv."),
) -> None:
    """One table over runs, mean and std over seeds, best per column marked."""
    from egoattn.evaluation.compare import compare_runs

    try:
        compare_runs(runs, group_by=group_by, out=out)
    except EgoattnError as e:
        _fail(e)


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the dataset, the run and the results."),
    preset: str = typer.Option("default", help="Synthetic preset."),
    seed: int = typer.Option(0, help="Seed of the dataset and the training run."),
) -> None:
    """The main job: synthesise data, prepare it, train the attention model, evaluate on the held-out subject."""
    from egoattn.demo import run_demo

    try:
        run_demo(out, preset=preset, seed=seed)
    except EgoattnError as e:
        _fail(e)


if __name__ == "__main__":
    app()
