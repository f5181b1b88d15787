"""A tiny trained-looking run directory for tests of the tools that read runs (explain, export)."""

from __future__ import annotations

from pathlib import Path

import torch

from egoattn.data.manifest import write_classes


def make_tiny_run(run_dir: Path, classes: list[str], size: int = 64, resize: int = 72, num_frames: int = 4,
                  channels_last: bool = False) -> Path:
    """A run directory as `egoattn train` leaves it: recipe, classes and a best checkpoint of a small
    random-weight Ego-RNN (ResNet-18, CAM attention)."""
    from egoattn.models.registry import create_model
    from egoattn.training.config import validate_recipe

    options = {"backbone": "resnet18", "weights": "none", "attention": True, "hidden": 8, "input_proj": 8,
               "input_size": size}
    recipe = validate_recipe({"name": "tiny", "model": {"name": "egornn", "options": options},
                              "data": {"num_frames": num_frames, "size": size, "resize": resize,
                                       "modalities": ["rgb"], "num_workers": 0, "batch_size": 2},
                              "train": {"channels_last": channels_last}}, "test")
    torch.manual_seed(0)
    model = create_model("egornn", len(classes), **options)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"recipe": recipe.model_dump(mode="json"), "classes": list(classes)}},
               run_dir / "checkpoints" / "best.ckpt")
    write_classes(run_dir / "classes.txt", classes)
    return run_dir
