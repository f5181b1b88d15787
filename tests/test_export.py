"""`egoattn export`: ONNX (onnxruntime) and TorchScript outputs match PyTorch; the JSON describes the
pre-processing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tinyrun
from egoattn.errors import ConfigError
from egoattn.inference.export import export_model, export_run, run_exported
from egoattn.inference.predict import Predictor, Preprocessing

CLASSES = ["open_jam", "close_jam", "take_bread"]


def make_tiny_run(run_dir: Path, **kwargs) -> Path:
    return tinyrun.make_tiny_run(run_dir, CLASSES, **kwargs)


@pytest.fixture(scope="module", params=[False, True], ids=["contiguous", "channels_last"])
def run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A run as trained contiguous, and one trained channels-last (it loads, and exports, in that format)."""
    return make_tiny_run(tmp_path_factory.mktemp("export") / "run", channels_last=request.param)


def pytorch_outputs(run: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from egoattn.training.run import load_run

    model = load_run(run).model
    with torch.inference_mode():
        out = model(rgb=x)
    return out["logits"], out["attention"]


def clip(seed: int) -> torch.Tensor:
    return torch.randn(1, 4, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(run: Path, fmt: str, tmp_path: Path) -> None:
    if fmt == "onnx":  # the library call, default location
        path = export_run(run, format=fmt)
        assert path == run / "export" / "model.onnx"
    else:  # the command line, --out
        from typer.testing import CliRunner

        from egoattn.cli import app

        path = tmp_path / "deploy" / "net.pt"
        result = CliRunner().invoke(app, ["export", str(run), "--format", fmt, "--out", str(path)])
        assert result.exit_code == 0, result.output
    assert path.is_file()
    for seed in (1, 2):  # inputs other than the one traced with
        x = clip(seed)
        logits, attention = pytorch_outputs(run, x)
        got = run_exported(path, x)
        assert [tuple(t.shape) for t in got] == [(1, 3), (1, 4, 2, 2)]
        np.testing.assert_allclose(got[0].numpy(), logits.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[1].numpy(), attention.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got[1].numpy().sum(axis=(2, 3)), 1.0, atol=1e-5)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["format"] == fmt and meta["file"] == path.name
    assert meta["input"] == {"name": "rgb", "shape": [1, 4, 3, 64, 64], "dtype": "float32"}
    assert [o["name"] for o in meta["outputs"]] == ["logits", "attention"]
    assert meta["classes"] == CLASSES
    pre = meta["preprocessing"]
    assert (pre["num_frames"], pre["sampler"], pre["resize"], pre["size"], pre["crop"]) == (4, "uniform", 72, 64, "centre")
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["check"]["max_abs_difference"] < 1e-4
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        assert [i.name for i in model.graph.input] == ["rgb"]


class NoAttention(nn.Module):
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(rgb.mean(dim=(1, 3, 4))), "features": rgb.mean(dim=(1, 3, 4))}


def test_model_without_attention_exports_logits_only(tmp_path: Path) -> None:
    prep = Preprocessing(3, "consecutive", 40, 32, (0.5,) * 3, (0.5,) * 3)
    predictor = Predictor(NoAttention(), ["a", "b"], prep, device="cpu")
    path = export_model(predictor, tmp_path / "m.onnx", "onnx")
    x = torch.randn(1, 3, 3, 32, 32)
    (logits,) = run_exported(path, x)
    with torch.inference_mode():
        np.testing.assert_allclose(logits.numpy(), predictor.model(rgb=x)["logits"].numpy(), atol=1e-5)
    meta = json.loads((tmp_path / "m.json").read_text())
    assert [o["name"] for o in meta["outputs"]] == ["logits"]
    assert meta["preprocessing"]["sampler"] == "consecutive" and meta["preprocessing"]["mean"] == [0.5] * 3


def test_bad_format_and_bad_run(tmp_path: Path, run: Path) -> None:
    with pytest.raises(ConfigError, match="onnx, torchscript"):
        export_run(run, format="tflite")
    with pytest.raises(Exception, match="checkpoint not found"):
        export_run(tmp_path / "nothing", format="onnx")


def test_cli_rejects_unknown_format(run: Path) -> None:
    from typer.testing import CliRunner

    from egoattn.cli import app

    bad = CliRunner().invoke(app, ["export", str(run), "--format", "tflite"])
    assert bad.exit_code == 2 and "tflite" in bad.output
