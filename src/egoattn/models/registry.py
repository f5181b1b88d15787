"""Model registry: a plain dict from name to builder, and ``create_model`` (timm style)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import nn

from egoattn.errors import BadInputError, ConfigError
from egoattn.models.egornn import egornn
from egoattn.models.flow_stream import flow
from egoattn.models.frame_average import frame_average
from egoattn.models.pose_attention import pose_granularity, pose_lstm, pose_parts, pose_separable
from egoattn.models.stanet import stanet, stanet_rgb
from egoattn.models.two_in_one import two_in_one
from egoattn.models.twostream import twostream
from egoattn.models.videolstm import videolstm, videolstm_motion

MODELS: dict[str, Callable[..., nn.Module]] = {
    "egornn": egornn,
    "flow": flow,
    "twostream": twostream,
    "two_in_one": two_in_one,
    "frame_average": frame_average,
    "videolstm": videolstm,
    "videolstm_motion": videolstm_motion,
    "pose_lstm": pose_lstm,  # pose-encoder pretraining on the action labels
    "pose_separable": pose_separable,
    "pose_parts": pose_parts,
    "pose_granularity": pose_granularity,
    "stanet_rgb": stanet_rgb,  # STANet stage 1: Ego-RNN with attention="cam"|"channel"|"none"
    "stanet": stanet,  # STANet stage 3: [flow, RGB] per step -> second-order attentional pooling
}


def list_models() -> list[str]:
    return sorted(MODELS)


def model_options(name: str) -> dict[str, Any]:
    """The options of model ``name`` and their defaults (everything but num_classes)."""
    builder = _builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values() if p.name != "num_classes"}


def create_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` for ``num_classes`` actions; unknown names and options raise ConfigError."""
    builder = _builder(name)
    known = model_options(name)
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; "
                          f"its options are: {', '.join(known)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    return builder(num_classes, **options)


def _builder(name: str) -> Callable[..., nn.Module]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return MODELS[name]


def model_inputs(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``model.forward`` taken from a loader batch (the one place that maps them).

    The keys are the model's ``input_keys``. Cached ``frame_features`` stand in for ``rgb``; the
    loader's ``warp`` (camera-compensated flow) feeds a ``flow`` input when the batch has no plain
    flow. ``order_rgb`` is optional (present only while training an order head).
    """
    inputs: dict[str, Any] = {}
    for key in getattr(model, "input_keys", ("rgb",)):
        if key == "rgb" and "frame_features" in batch:
            inputs["frame_features"] = batch["frame_features"]
        elif key in batch:
            inputs[key] = batch[key]
        elif key == "flow" and "warp" in batch:
            inputs["flow"] = batch["warp"]
        elif key != "order_rgb":
            raise BadInputError(None, f"the model {type(model).__name__} needs {key!r}, but the batch holds "
                                      f"{sorted(batch)}: add it to data.modalities")
    return inputs
