"""The LightningModule of action recognition: one training step, top to bottom.

    batch (dict from the loader)
      -> model(**model_inputs(model, batch))  the model's input_keys (rgb / flow / keypoints ...)
      -> loss = CE(logits, label)
              + loss.ms_weight    * motion-segmentation loss   (if the model has an MS head)
              + loss.order_weight * CE(order_logits, order)    (if the model has an order head)
      -> optimiser step on the recipe's parameter groups only

What trains is written in the recipe (`params.groups`, fnmatch patterns on parameter names); every
other parameter is frozen. Modules matching `params.eval_modules` (a frozen backbone, frozen BN)
stay in eval mode while the rest trains, as in the Ego-RNN reference.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from egoattn.errors import ConfigError
from egoattn.models.heads import motion_segmentation_loss
from egoattn.models.registry import create_model, model_inputs
from egoattn.training.config import OptimSection, ParamsSection, Recipe, validate_recipe

def assign_parameter_groups(model: nn.Module, params: ParamsSection, optim: OptimSection) -> list[dict[str, Any]]:
    """Set requires_grad from the recipe and return the optimiser's parameter groups.

    A parameter belongs to the first group with a matching pattern; unmatched parameters are frozen.
    A group that matches nothing is an error (it is almost always a typo in a pattern).
    """
    named = list(model.named_parameters())
    groups: list[dict[str, Any]] = []
    taken: set[str] = set()
    for i, group in enumerate(params.groups):
        members = [(n, p) for n, p in named if n not in taken and any(fnmatch(n, pat) for pat in group.match)]
        if not members:
            examples = ", ".join(n for n, _ in named[:: max(1, len(named) // 8)][:8])
            raise ConfigError(f"params.groups[{i}] {group.match} matches no parameter of the model "
                              f"(names look like: {examples})")
        taken.update(n for n, _ in members)
        groups.append({
            "params": [p for _, p in members],
            "names": [n for n, _ in members],
            "lr": optim.lr if group.lr is None else group.lr,
            "weight_decay": optim.weight_decay if group.weight_decay is None else group.weight_decay,
        })
    for name, p in named:
        p.requires_grad_(name in taken)
    return groups


class ActionRecognitionTask(L.LightningModule):
    """Trains any registry model with the recipe's losses, parameter groups and schedule."""

    def __init__(self, recipe: Recipe | dict[str, Any], classes: list[str], model: nn.Module | None = None) -> None:
        super().__init__()
        self.recipe = recipe if isinstance(recipe, Recipe) else validate_recipe(recipe, "checkpoint hyper_parameters")
        self.classes = list(classes)
        # Plain data only, so checkpoints load with torch.load(weights_only=True).
        self.save_hyperparameters({"recipe": self.recipe.model_dump(mode="json"), "classes": self.classes})
        if model is None:
            model = create_model(self.recipe.model.name, len(self.classes), **self.recipe.model.options)
        self.model = model
        if self.recipe.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.param_groups = assign_parameter_groups(self.model, self.recipe.params, self.recipe.optim)
        self.nonfinite_at: tuple[int, int] | None = None  # (epoch, batch) where the loss became NaN/inf

    # --- modes ------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "ActionRecognitionTask":
        """Like nn.Module.train, but modules matching params.eval_modules always stay in eval mode."""
        super().train(mode)
        if mode:
            for name, module in self.model.named_modules():
                if name and any(fnmatch(name, pat) for pat in self.recipe.params.eval_modules):
                    module.eval()
        return self

    def on_train_start(self) -> None:
        """Lightning (>= 2.2) keeps the modes the modules have when fit starts and never calls `train()`,
        so a freshly built task would train with its frozen backbone in train mode (BatchNorm on batch
        statistics, running statistics drifting, dropout on). Apply the eval_modules here."""
        self.train()

    # --- the step ---------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model(**model_inputs(self.model, batch))

    def compute_losses(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each loss term (unweighted) and the model's outputs."""
        out = self(batch)
        losses = {"cls": F.cross_entropy(out["logits"], batch["label"])}
        if "ms_logits" in out:
            if "motion" not in batch:
                raise ConfigError("the model has a motion-segmentation head, but data.modalities has no 'motion'")
            cfg = self.recipe.loss
            losses["ms"] = motion_segmentation_loss(out["ms_logits"], batch["motion"], kind=cfg.ms_kind,
                                                    loss=cfg.ms_loss, threshold=cfg.ms_threshold)
        if "order_logits" in out and "order_label" in batch:
            losses["order"] = F.cross_entropy(out["order_logits"], batch["order_label"])
        if "reg_loss" in out:  # attention regularisers, already weighted inside the model
            losses["reg"] = out["reg_loss"]
        return losses, out

    def total_loss(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = {"cls": 1.0, "ms": self.recipe.loss.ms_weight, "order": self.recipe.loss.order_weight, "reg": 1.0}
        return sum(weights[k] * v for k, v in losses.items())

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        losses, out = self.compute_losses(batch)
        loss = self.total_loss(losses)

        # A NaN/inf loss: skip this step on every process and stop; the last good checkpoint stays.
        bad = self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False)
        if bad:
            self.nonfinite_at = (self.current_epoch, batch_idx)
            self.trainer.should_stop = True
            return None

        n = batch["label"].shape[0]
        acc = (out["logits"].argmax(1) == batch["label"]).float().mean()
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("train_acc", acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        for key, value in losses.items():
            if key != "cls":
                self.log(f"train_loss_{key}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self(batch)["logits"]
        n = batch["label"].shape[0]
        self.log("val_loss", F.cross_entropy(logits, batch["label"]), batch_size=n, sync_dist=True, prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == batch["label"]).float().mean(), batch_size=n, sync_dist=True,
                 prog_bar=True)

    # --- optimiser --------------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        o = self.recipe.optim
        groups = [{k: v for k, v in g.items() if k != "names"} for g in self.param_groups]
        if o.name == "adam":
            optimizer = torch.optim.Adam(groups, lr=o.lr, weight_decay=o.weight_decay, eps=o.eps)
        else:
            optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        if o.per_epoch_gamma is not None:
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=o.per_epoch_gamma)
        elif o.milestones:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=o.milestones, gamma=o.gamma)
        else:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
