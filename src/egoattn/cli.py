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

PRECISION_HELP = ("32 (float32), bf16-mixed (bfloat16 autocast: faster on CPUs with bfloat16 instructions and "
                  "on GPUs) or 16-mixed (float16 on a GPU).")


@app.callback()
def _process_setup() -> None:
    """Runs before every command: reuse freed memory (see egoattn.memory; a large speed-up on CPU) and
    flush denormal floats (egoattn.denormals; up to 10x on Intel CPUs)."""
    from egoattn.denormals import flush_denormals
    from egoattn.memory import keep_freed_memory

    keep_freed_memory()
    flush_denormals()


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Output folder of the synthetic source dataset (videos + ground truth)."),
    preset: str = typer.Option("default", help="small (56 clips of 16 frames) | compact (336) | default (672) | large (840 of 48 frames)."),
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
    source: Path = typer.Argument(..., help="Source dataset (or, with --check, a prepared dataset or source layout)."),
    out: Optional[Path] = typer.Argument(None, help="Output folder of the prepared dataset."),
    format: str = typer.Option("synthetic", "--format", help="synthetic | gtea61 | gtea61-course | videos | segments."),
    check: bool = typer.Option(False, "--check", help="Only report what is wrong with the dataset SOURCE."),
    merge: bool = typer.Option(False, "--merge", help="Join the finished shards' manifests in OUT (after --shard runs)."),
    short_side: int = typer.Option(256, help="Resize frames so that their short side is this many pixels (0 = keep)."),
    flow: str = typer.Option("dis", help="Optical flow method: dis | tvl1 | farneback | none."),
    warp: bool = typer.Option(True, help="Also compute camera-compensated warp flow."),
    motion: bool = typer.Option(True, help="Also compute motion maps (moving vs static, camera removed)."),
    motion_source: str = typer.Option("flow", help="Motion maps from warp flow (flow) or the synthetic ground truth (gt)."),
    recompute_flow: bool = typer.Option(False, help="Recompute flow and motion maps a GTEA61 source already has."),
    bound: float = typer.Option(20.0, help="Flow range +-bound px mapped to 0..255."),
    classes: Optional[Path] = typer.Option(None, help="Explicit class list (one per line); default: sorted union."),
    segments: Optional[Path] = typer.Option(None, help="Segment CSV video,start,end,label[,subject] in frames (format 'segments')."),
    split_dir: Optional[Path] = typer.Option(None, help="Folder with UCF101 split files trainlist01/testlist01 (format 'videos')."),
    workers: int = typer.Option(0, help="Worker processes (0 = one per core)."),
    shard: Optional[str] = typer.Option(None, help="K/N: prepare only the K-th of N shards (1-based); then --merge."),
    skip_bad: bool = typer.Option(False, help="Skip bad inputs (listed in OUT/skipped.csv) instead of stopping."),
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
        from egoattn.data.prepare import PrepareOptions, merge_shards, prepare_dataset

        if merge:
            report = merge_shards(out)
            typer.echo(f"merged: {len(report.records)} clips in {out / 'manifest.csv'}")
            return
        options = PrepareOptions(
            format=format, short_side=short_side, flow=flow, warp=warp, motion=motion, motion_source=motion_source,
            recompute_flow=recompute_flow, bound=bound, classes=classes, segments=segments, split_dir=split_dir,
            workers=workers, shard=shard, skip_bad=skip_bad,
        )
        report = prepare_dataset(source, out, options)
        typer.echo(f"prepared {report.prepared}, already done {report.skipped}, bad {len(report.bad)} "
                   f"in {report.seconds:.1f} s -> {out}")
        if report.bad:
            typer.echo(f"skipped bad inputs are listed in {out}/skipped*.csv")
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
    runs: list[Path] = typer.Argument(..., help="Run directory of a trained model; several runs: their late fusion."),
    data: Path = typer.Option(..., help="Prepared dataset folder."),
    split: Optional[str] = typer.Option(None, help="Split to evaluate (default: the run's split), e.g. gtea61, loso:S2."),
    out: Optional[Path] = typer.Option(None, help="Where to write (default RUN/eval-<split>; required for several runs)."),
    flow_stacks: int = typer.Option(1, help="Average flow logits over this many evenly spaced stacks."),
    crops: int = typer.Option(1, help="1 = centre crop, 5 = four corners and centre, averaged."),
    precision: str = typer.Option("32", help=PRECISION_HELP),
) -> None:
    """Accuracy, per-class precision/recall/F1, verb/noun accuracy, confusion and correlation matrices.

    Several runs (e.g. the RGB and the flow stream) are evaluated as their late fusion: the mean of their logits."""
    from egoattn.evaluation.evaluate import evaluate_late_fusion, evaluate_run

    try:
        if len(runs) == 1:
            evaluate_run(runs[0], data=data, split=split, out=out, flow_stacks=flow_stacks, crops=crops,
                         precision=precision)
        else:
            evaluate_late_fusion(runs, data=data, split=split, out=out, flow_stacks=flow_stacks, crops=crops,
                                 precision=precision)
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
def protect(
    input: Path = typer.Argument(..., help="An image, a folder of images (and videos), a video, or a prepared "
                                           "dataset (folder with manifest.csv and clips/)."),
    out: Path = typer.Argument(..., help="Output folder: protected PNG/MP4 files (or a protected dataset copy), "
                                         "report.json, report.md."),
    classifier: str = typer.Option("bundled", help="Classifier to mislead: bundled (offline ImageNet EfficientNet-Lite0)."),
    sigma: float = typer.Option(0.99, help="Private classes = the smallest top set reaching this cumulative probability."),
    private: Optional[List[str]] = typer.Option(
        None, "--private", help="A fixed private class (ImageNet name or id) instead of the sigma rule (repeatable); "
                                "'screens' = monitors, screens, laptops, phones."),
    eps: float = typer.Option(8.0, help="Maximum change per pixel, in grey levels (of 255)."),
    delta: float = typer.Option(1.0, help="Step size, in grey levels (of 255)."),
    max_iter: int = typer.Option(100, help="Maximum number of signed-gradient steps."),
    stop_confidence: float = typer.Option(0.99, help="Stop once the target class has this probability."),
    lossless: bool = typer.Option(False, "--lossless", help="Lossless H.264 video (lossy H.264 can undo the perturbation)."),
    crf: int = typer.Option(18, help="H.264 quality of lossy video output."),
    seed: int = typer.Option(0, help="Seed of the target draws."),
    batch_size: int = typer.Option(8, help="Images or frames per P-FGSM batch."),
    device: Optional[str] = typer.Option(None, help="torch device (default: cuda if available, else cpu)."),
) -> None:
    """Privacy protection (P-FGSM): imperceptibly change images/videos so that a classifier no longer sees their private classes."""
    from egoattn.errors import ConfigError
    from egoattn.privacy.pfgsm import SCREEN_AND_PHONE_CLASSES
    from egoattn.privacy.protect import make_options, protect as run_protect

    try:
        if eps < 1 or delta < 1:
            raise ConfigError(f"--eps and --delta are in grey levels of 255 (e.g. --eps 8), got eps={eps}, delta={delta}")
        classes = None
        if private:
            classes = []
            for c in private:
                classes.extend(SCREEN_AND_PHONE_CLASSES if c.strip().lower() == "screens" else [c])
        options = make_options(sigma=sigma, eps=eps / 255, delta=delta / 255, max_iter=max_iter,
                               stop_confidence=stop_confidence, private_classes=classes, lossless=lossless,
                               crf=crf, seed=seed, batch_size=batch_size)
        report = run_protect(input, out, classifier=classifier, options=options, device=device)
        agg = report["aggregate"]
        typer.echo(f"{agg['protected_units']}/{agg['units']} images/frames protected; mean PSNR "
                   f"{agg['mean_psnr'] or float('nan'):.2f} dB; report: {out / 'report.md'}")
    except EgoattnError as e:
        _fail(e)


@app.command()
def predict(
    run: Path = typer.Argument(..., help="Run directory of a trained RGB model."),
    videos: List[Path] = typer.Argument(..., help="Video files (anything PyAV decodes) or directories of videos."),
    window: Optional[float] = typer.Option(None, help="Cut each video into windows of this many seconds (a timeline)."),
    stride: Optional[float] = typer.Option(None, help="Seconds between window starts (default: the window length)."),
    top_k: int = typer.Option(5, "--top-k", help="How many labels to report per clip or window."),
    overlay: Optional[Path] = typer.Option(None, help="Write OUT.mp4 with the label and the attention drawn on it."),
    out: Optional[Path] = typer.Option(None, help="Folder for predictions.json and the timelines "
                                                  "(default ./predictions with --window)."),
    precision: str = typer.Option("32", help=PRECISION_HELP),
) -> None:
    """Top-k action labels of whole videos, or a timeline of windows; streams the video (flat memory)."""
    from egoattn.inference.predict import predict_videos

    try:
        report = predict_videos(run, videos, window=window, stride=stride, top_k=top_k, overlay=overlay,
                                out=out, echo=typer.echo, precision=precision)
    except EgoattnError as e:
        _fail(e)
    if report.failures:
        raise typer.Exit(1)


@app.command()
def explain(
    run: Path = typer.Argument(..., help="Run directory of a trained model."),
    input: Path = typer.Argument(..., help="A prepared dataset (clips of --split) or a video file."),
    compare: Optional[Path] = typer.Option(None, help="A second run shown side by side (and scored alongside)."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default RUN/explain-<split> or RUN/explain-<video>)."),
    num_clips: int = typer.Option(4, help="Clips to draw (one per class first, deterministic)."),
    split: Optional[str] = typer.Option(None, help="Split whose test clips are used (default: the run's split)."),
    keypoints: Optional[Path] = typer.Option(
        None, help="Keypoints of the video INPUT (COCO-style JSON, e.g. from `egoattn keypoints`), drawn as a skeleton."),
) -> None:
    """Attention overlays (GIF, MP4, grid PNG) and, with ground-truth masks, pointing game vs the centre prior."""
    from egoattn.explain.explain import explain_run

    try:
        explain_run(run, input, split=split, out=out, num_clips=num_clips, compare=compare, keypoints=keypoints)
    except EgoattnError as e:
        _fail(e)


@app.command()
def keypoints(
    video: Path = typer.Argument(..., help="A video file (anything PyAV decodes)."),
    out: Path = typer.Option(..., help="COCO-style JSON file to write (read back by read_coco_keypoints)."),
    kind: str = typer.Option("body", help="body (COCO-17, one person: third-person video) | hand (21 keypoints, "
                                          "one hand: first-person video)."),
    hand: str = typer.Option("best", help="With --kind hand: best | left | right (the wearer's)."),
    min_confidence: float = typer.Option(0.5, help="Detection threshold; joints less visible than this are missing."),
) -> None:
    """Keypoints from a video, with the optional 'pose' extra (MediaPipe; its weights ship in its wheel)."""
    from egoattn.data.keypoints import keypoint_mask
    from egoattn.data.pose_estimator import extract_to_file

    try:
        points = extract_to_file(video, out, kind=kind, hand=hand, min_confidence=min_confidence)
    except EgoattnError as e:
        _fail(e)
    mask = keypoint_mask(points)
    typer.echo(f"{points.shape[0]} frames, {points.shape[1]} joints; a person/hand in {int(mask.any(axis=1).sum())} "
               f"frames, {100 * mask.mean():.1f}% of joints present -> {out}")


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run directory of a trained RGB model."),
    format: str = typer.Option("onnx", "--format", help="onnx | torchscript."),
    out: Optional[Path] = typer.Option(None, help="Model file (default RUN/export/model.onnx or model.pt)."),
) -> None:
    """A deployable model (rgb (1,T,3,H,W) -> logits [, attention]) with its preprocessing in a JSON beside it."""
    from egoattn.inference.export import export_run

    try:
        path = export_run(run, format=format, out=out)
    except EgoattnError as e:
        _fail(e)
    typer.echo(f"exported {path} (preprocessing: {path.with_suffix('.json')})")


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run directory (or a demo output folder)."),
    out: Optional[Path] = typer.Option(None, help="HTML file to write (default RUN/report.html)."),
    eval: Optional[List[Path]] = typer.Option(
        None, "--eval", help="An evaluation folder to include (repeatable; RUN/eval-* are found anyway)."),
    attention: Optional[List[Path]] = typer.Option(
        None, "--attention", help="An `egoattn explain` output folder to include (repeatable)."),
) -> None:
    """One self-contained HTML page of a run: metrics, learning curves, per-class table, matrices, attention, config."""
    from egoattn.report import write_report

    try:
        path = write_report(run, out=out, eval_dirs=eval or [], attention_dirs=attention or [])
    except EgoattnError as e:
        _fail(e)
    typer.echo(f"report: {path}")


@app.command()
def baseline(
    data: Path = typer.Option(..., help="Prepared dataset folder."),
    features: str = typer.Option("hof", help="hof | hmag | mbh, joined by '+'; prefix 'warp:' for warp flow."),
    classifier: str = typer.Option("svm", help="svm | knn."),
    split: str = typer.Option("gtea61", help="Split, e.g. gtea61, loso:S2, fpvo."),
    out: Path = typer.Option(Path("baselines"), help="Results go to OUT/<name>-<split>, the feature cache to OUT/features."),
    c: float = typer.Option(1.0, "--C", help="SVM regularisation C."),
    kernel: str = typer.Option("rbf", help="SVM kernel: rbf | linear."),
    k: int = typer.Option(1, help="KNN neighbours."),
    levels: str = typer.Option("1,2,4", help="Temporal pyramid levels, comma-separated."),
    grid: int = typer.Option(1, help="1 = whole frame, 2 = 2x2 spatial cells."),
    pool: str = typer.Option("mean", help="Temporal pooling: mean | max | mean+max."),
    max_flows: int = typer.Option(64, help="At most this many evenly spaced flow frames per clip."),
) -> None:
    """Handcrafted motion features + SVM/KNN (seed 000 Table II), written like `egoattn evaluate`."""
    from egoattn.baselines.classify import run_baseline
    from egoattn.errors import ConfigError

    try:
        try:
            level_list = tuple(int(v) for v in levels.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--levels must be comma-separated integers, got {levels!r}") from None
        metrics = run_baseline(data, features, classifier=classifier, split=split, out=out, C=c, kernel=kernel,
                               k=k, levels=level_list, grid=grid, pool=pool, max_flows=max_flows)
    except EgoattnError as e:
        _fail(e)
    typer.echo(f"{metrics['name']} on {split}: top-1 {100 * metrics['top1']:.1f}%, "
               f"macro F1 {100 * metrics['macro_f1']:.1f}% -> {metrics['run']}")


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
