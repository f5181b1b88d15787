"""`egoattn export`: a trained RGB model as ONNX or TorchScript, for use without egoattn.

The exported graph takes one clip `rgb` (1, T, 3, H, W) float32, already pre-processed, and returns
`logits` (1, K) and, for attention models, `attention` (1, T, h, w). The pre-processing (frame
sampler, resize, centre crop, mean/std) and the class names are written beside the model as JSON
(`model.onnx` -> `model.json`), so a deployment can reproduce `egoattn predict` exactly.

Shapes are fixed at export (batch 1, the recipe's T and crop size): the ConvLSTM's time loop is
unrolled by tracing. After writing, the file is loaded back and checked against PyTorch on a random
clip; the largest difference is recorded in the JSON.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from egoattn.errors import BadInputError, ConfigError
from egoattn.fileio import atomic_path, write_json
from egoattn.inference.predict import Predictor

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17


class ExportWrapper(nn.Module):
    """rgb -> logits or (logits, attention): plain tensors instead of the model's dict."""

    def __init__(self, model: nn.Module, with_attention: bool) -> None:
        super().__init__()
        self.model = model
        self.with_attention = with_attention

    def forward(self, rgb: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model(rgb=rgb)
        if self.with_attention:
            return out["logits"], out["attention"]
        return out["logits"]


def _example(predictor: Predictor) -> torch.Tensor:
    p = predictor.prep
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, p.num_frames, 3, p.size, p.size, generator=generator)
    return x.to(predictor.device)


def _reference(wrapper: ExportWrapper, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = wrapper(x)
    return [t.detach().cpu() for t in (out if isinstance(out, tuple) else (out,))]


@contextlib.contextmanager
def quiet_tracing() -> Iterator[None]:
    """Tracing warns that shape checks become constants (intended: shapes are fixed at export) and that
    torch.jit is deprecated; neither is the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _export_onnx(wrapper: ExportWrapper, x: torch.Tensor, path: Path, names: list[str]) -> None:
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(wrapper, (x,), str(tmp), input_names=["rgb"], output_names=names,
                          opset_version=ONNX_OPSET, dynamo=False)


def _export_torchscript(wrapper: ExportWrapper, x: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(wrapper, (x,), check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))


def run_exported(path: str | Path, rgb: torch.Tensor) -> list[torch.Tensor]:
    """Run an exported model file (.onnx with onnxruntime, .pt with torch.jit) on one clip."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"rgb": rgb.detach().cpu().numpy()})
        return [torch.from_numpy(o) for o in outputs]
    with quiet_tracing():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        out = module(rgb.detach().cpu())
    return [t for t in (out if isinstance(out, tuple) else (out,))]


def _max_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise BadInputError(None, f"exported outputs {[tuple(x.shape) for x in b]} differ from PyTorch's "
                                  f"{[tuple(x.shape) for x in a]}")
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a, b))


def export_model(predictor: Predictor, out: str | Path, format: str = "onnx",
                 extra: dict[str, Any] | None = None) -> Path:
    """Write `predictor`'s model to `out` in `format` and its pre-processing to `out` with suffix .json."""
    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    out = Path(out)
    model = predictor.model.eval()
    x = _example(predictor)
    with torch.inference_mode():
        probe = model(rgb=x)
    with_attention = isinstance(probe, dict) and "attention" in probe
    wrapper = ExportWrapper(model, with_attention).eval()
    names = ["logits", "attention"] if with_attention else ["logits"]
    reference = _reference(wrapper, x)
    with quiet_tracing():
        if format == "onnx":
            _export_onnx(wrapper, x, out, names)
        else:
            _export_torchscript(wrapper, x, out)
        try:
            check: dict[str, Any] = {"max_abs_difference": _max_difference(reference, run_exported(out, x)),
                                     "input": "randn(1, T, 3, H, W), seed 0"}
        except ImportError as e:  # onnxruntime missing: the file is still valid
            check = {"skipped": str(e)}
    p = predictor.prep
    shapes = {"logits": [1, len(predictor.classes)]}
    if with_attention:
        shapes["attention"] = list(reference[1].shape)
    description = {
        "format": format, "file": out.name,
        "opset": ONNX_OPSET if format == "onnx" else None,
        "input": {"name": "rgb", "shape": [1, p.num_frames, 3, p.size, p.size], "dtype": "float32"},
        "outputs": [{"name": n, "shape": shapes[n]} for n in names],
        "preprocessing": p.to_json(),
        "classes": list(predictor.classes),
        "check": check,
        **(extra or {}),
    }
    write_json(out.with_suffix(".json"), description)
    return out


def export_run(run: str | Path, format: str = "onnx", out: str | Path | None = None, which: str = "best") -> Path:
    """Export a run's model (default RUN/export/model.onnx or model.pt); returns the model file's path."""
    from egoattn.training.run import load_run

    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    loaded = load_run(run, which=which)
    predictor = Predictor.from_loaded(loaded, device=next(loaded.model.parameters()).device)
    target = Path(out) if out is not None else Path(run) / "export" / f"model{FORMATS[format]}"
    if target.suffix == ".json":
        raise ConfigError(f"{target}: the model file cannot end in .json (the pre-processing JSON goes beside it)")
    return export_model(predictor, target, format, extra={
        "run": str(run), "checkpoint": which, "recipe": loaded.recipe.name, "model": loaded.recipe.model.name})
