"""P-FGSM privacy protection (Li, Chen & Cavallaro, ICASSP 2019; seed 000, models.md section 6).

An image is *protected* when a classifier no longer recognises its private classes, while the
change stays invisible (at most ``eps`` grey levels per pixel). The private classes of an image are
either the smallest top set of the classifier's softmax whose cumulative probability reaches
``sigma`` (the paper's rule, default) or a fixed list of class ids given by the user (e.g. screens,
monitors, laptops, phones for egocentric office video). A target class ``y_T`` is drawn uniformly
from the classes *outside* the private set (the public code's bug - any class but the top-1 - is not
copied), and the image is pushed towards it by iterated signed gradient steps:

    x <- clip_{[x0 - eps, x0 + eps] and [0, 1]}( x - delta * sign(grad_x CE(M(x), y_T)) )

until p(y_T | x) > ``stop_confidence`` or ``max_iter`` steps.

8-bit output: the saved image is 8-bit, so the iterate is projected onto the 8-bit grid after every
step (round(x * 255) / 255, inside the grid-aligned eps box). With the default delta = 1/255 and an
8-bit input the iterate never leaves the grid anyway, so this only removes float drift; for other
inputs it means the attack *continues on the quantised image*. Either way the stop test, the
reported confidences and the ``protected`` flag are computed on exactly the image that is returned,
so quantisation cannot undo the protection after the fact. (Lossy re-encoding afterwards - JPEG,
lossy H.264 - can; see ``egoattn.privacy.protect``.)

Also here: PSNR and SSIM (Wang et al. 2004, Gaussian window) to report the image quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egoattn.errors import ConfigError

# ImageNet classes that typically carry private information in egocentric office video (seed 000:
# faces, computer monitors, mobile phones; ImageNet has no "face" class). torchvision's names.
SCREEN_AND_PHONE_CLASSES: tuple[str, ...] = (
    "monitor", "screen", "desktop computer", "laptop", "notebook", "television", "web site",
    "cellular telephone", "dial telephone", "pay-phone", "iPod", "hand-held computer",
)


class ImageClassifier(nn.Module):
    """Images in [0, 1] (N, 3, H, W) -> logits (N, K); the model's own resize and normalisation inside.

    Both steps are differentiable, so P-FGSM's gradient reaches the image at its full resolution and
    the protected image keeps its size. ``model`` may return a tensor or a dict with ``logits`` (as
    egoattn backbones do). ``input_size`` (h, w) resizes the whole image (no crop, so every pixel is
    seen); None keeps the input size.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 class_names: Sequence[str], input_size: tuple[int, int] | None = (224, 224),
                 name: str = "classifier") -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, -1, 1, 1), persistent=False)
        self.class_names = list(class_names)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.name = name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        out = self.model((x - self.mean) / self.std)
        return out["logits"] if isinstance(out, dict) else out

    def class_ids(self, classes: Sequence[int | str]) -> list[int]:
        """Class ids from ids or names (names matched exactly, case-insensitive)."""
        index = {n.lower(): i for i, n in enumerate(self.class_names)}
        ids: list[int] = []
        for c in classes:
            if isinstance(c, int) or (isinstance(c, str) and c.strip().isdigit()):
                i = int(c)
                if not 0 <= i < self.num_classes:
                    raise ConfigError(f"class id {i} out of range 0..{self.num_classes - 1} of {self.name}")
            else:
                key = str(c).strip().lower()
                if key not in index:
                    raise ConfigError(f"unknown class name {c!r} for {self.name}")
                i = index[key]
            if i not in ids:
                ids.append(i)
        return ids


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in class-id order (torchvision's list; no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def bundled_classifier() -> ImageClassifier:
    """The offline ImageNet EfficientNet-Lite0 (``build_backbone(..., weights="bundled")``) at 224 x 224."""
    from egoattn.models.backbones import build_backbone

    model = build_backbone("efficientnet_lite0", weights="bundled")
    model.eval().requires_grad_(False)
    clf = ImageClassifier(model, model.mean, model.std, imagenet_class_names(), (224, 224),
                          name="bundled EfficientNet-Lite0 (ImageNet)")
    return clf.eval()


CLASSIFIERS: dict[str, Callable[[], ImageClassifier]] = {"bundled": bundled_classifier}


def load_classifier(name: str) -> ImageClassifier:
    """A named classifier: "bundled" (offline ImageNet EfficientNet-Lite0). Pass an ImageClassifier
    object to the library functions to use any other model."""
    if name not in CLASSIFIERS:
        raise ConfigError(f"unknown classifier {name!r}; choose one of {', '.join(sorted(CLASSIFIERS))}")
    return CLASSIFIERS[name]()


# --------------------------------------------------------------------------------------------------
# Private set and target


def private_mask(probs: Tensor, sigma: float) -> Tensor:
    """(N, K) bool: the smallest top set of each row whose cumulative probability reaches sigma."""
    if not 0.0 < sigma < 1.0:
        raise ConfigError(f"sigma must be in (0, 1), got {sigma}")
    sorted_p, order = probs.sort(dim=1, descending=True)
    before = sorted_p.cumsum(dim=1) - sorted_p  # cumulative probability of the classes ranked above
    in_set_sorted = before < sigma  # rank r is needed while the classes above it are still short of sigma
    mask = torch.zeros_like(in_set_sorted)
    mask.scatter_(1, order, in_set_sorted)
    return mask


def draw_targets(mask: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Tensor:
    """(N,) one class per row drawn uniformly from the classes where ``mask`` is False.

    ``generator`` may be one CPU generator for the batch or one per row (so that an image's target
    does not depend on which other images share its batch - needed for resumable folders).
    """
    allowed = (~mask).float().cpu()
    empty = allowed.sum(dim=1) == 0
    if bool(empty.any()):
        raise ConfigError(f"image {int(empty.nonzero()[0])}: every class is private, no target class is left "
                          "(lower sigma or give fewer private classes)")
    if isinstance(generator, Sequence):
        if len(generator) != allowed.shape[0]:
            raise ValueError(f"{len(generator)} generators for {allowed.shape[0]} images")
        rows = [torch.multinomial(a, 1, generator=g) for a, g in zip(allowed, generator)]
        return torch.cat(rows).to(mask.device)
    return torch.multinomial(allowed, 1, generator=generator).squeeze(1).to(mask.device)


def private_set(classifier: ImageClassifier, x: Tensor, sigma: float = 0.99,
                private_classes: Sequence[int | str] | None = None) -> tuple[Tensor, Tensor]:
    """(mask (N, K) bool, probabilities (N, K)) of images x in [0, 1]: the sigma rule or the fixed set."""
    with torch.no_grad():
        probs = classifier(x).softmax(dim=1)
    if private_classes is None:
        return private_mask(probs, sigma), probs
    mask = torch.zeros_like(probs, dtype=torch.bool)
    mask[:, classifier.class_ids(private_classes)] = True
    return mask, probs


# --------------------------------------------------------------------------------------------------
# Image quality


def psnr(x: Tensor, y: Tensor) -> Tensor:
    """(N,) PSNR in dB of images in [0, 1]; inf for identical images."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(dim=1)
    return (10.0 * torch.log10(1.0 / mse)).float()


def _gaussian_window(sigma: float, truncate: float, device: torch.device) -> Tensor:
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    g = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> Tensor:
    """(N,) mean SSIM (Wang et al. 2004) of (N, C, H, W) images, averaged over channels.

    Gaussian window sigma 1.5 truncated at 3.5 sigma (11 x 11), K1 0.01, K2 0.03, statistics over the
    valid region only (no padding) - the settings of the paper and of skimage's gaussian_weights mode.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of one shape, got {tuple(x.shape)}, {tuple(y.shape)}")
    x, y = x.double(), y.double()
    c = x.shape[1]
    g = _gaussian_window(sigma, 3.5, x.device)
    if min(x.shape[-2:]) < g.numel():
        raise ValueError(f"ssim needs images of at least {g.numel()} x {g.numel()} pixels, got {tuple(x.shape[-2:])}")
    gh = g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    gv = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, gh, groups=c), gv, groups=c)

    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1).float()


# --------------------------------------------------------------------------------------------------
# P-FGSM


@dataclass
class PFGSMResult:
    """Per image (first dimension N): the protected 8-bit images and what happened to them."""

    images: Tensor  # (N, 3, H, W) uint8, protected
    private_ids: list[list[int]]  # private classes, most probable first
    private_names: list[list[str]]
    target: Tensor  # (N,) int64
    top1_before: Tensor  # (N,) int64
    conf_before: Tensor  # (N,) softmax probability of top1_before on the original
    top1_after: Tensor
    conf_after: Tensor  # probability of top1_after on the protected image
    target_conf_after: Tensor  # p(y_T | protected)
    private_conf_after: Tensor  # total probability of the private set on the protected image
    iterations: Tensor  # (N,) int64, signed-gradient steps taken
    psnr: Tensor  # (N,) dB (inf if unchanged)
    ssim: Tensor
    protected: Tensor  # (N,) bool: top-1 after is outside the private set
    class_names: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.target.numel())

    def item(self, i: int, max_private: int = 20) -> dict[str, Any]:
        """JSON-ready summary of image i; the private set (often hundreds of classes under the sigma
        rule) is listed by its ``max_private`` most probable classes and its size."""
        name = (lambda c: self.class_names[c] if c < len(self.class_names) else str(c))
        p = float(self.psnr[i])
        return {
            "private_set_size": len(self.private_ids[i]),
            "private_ids": self.private_ids[i][:max_private],
            "private_names": self.private_names[i][:max_private],
            "target": int(self.target[i]), "target_name": name(int(self.target[i])),
            "top1_before": int(self.top1_before[i]), "top1_before_name": name(int(self.top1_before[i])),
            "conf_before": float(self.conf_before[i]),
            "top1_after": int(self.top1_after[i]), "top1_after_name": name(int(self.top1_after[i])),
            "conf_after": float(self.conf_after[i]),
            "target_conf_after": float(self.target_conf_after[i]),
            "private_conf_after": float(self.private_conf_after[i]),
            "iterations": int(self.iterations[i]),
            "psnr": p if math.isfinite(p) else None,
            "ssim": float(self.ssim[i]),
            "protected": bool(self.protected[i]),
        }


def to_float_images(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> float in [0, 1]; float tensors are checked and passed through."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    if images.numel() and (float(images.min()) < 0.0 or float(images.max()) > 1.0):
        raise ValueError("float images must lie in [0, 1]")
    return images


def quantise(x: Tensor) -> Tensor:
    """Round to the 8-bit grid, staying in float: round(x * 255) / 255."""
    return torch.round(x * 255.0) / 255.0


def _grid_box(x0: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The 8-bit grid points inside [x0 - eps, x0 + eps] and [0, 1] (lower, upper), in float."""
    tol = 1e-4
    lo = torch.ceil((x0 - eps) * 255.0 - tol).clamp(0, 255) / 255.0
    hi = torch.floor((x0 + eps) * 255.0 + tol).clamp(0, 255) / 255.0
    return lo, hi


def pfgsm(classifier: ImageClassifier, x0: Tensor, sigma: float = 0.99, delta: float = 1 / 255,
          eps: float = 8 / 255, max_iter: int = 100, stop_confidence: float = 0.99,
          target: int | Sequence[int] | Tensor | None = None,
          private_classes: Sequence[int | str] | None = None,
          generator: torch.Generator | Sequence[torch.Generator] | None = None) -> PFGSMResult:
    """Protect a batch of images (N, 3, H, W) in [0, 1] (or uint8) with P-FGSM; see the module docstring.

    ``private_classes`` replaces the sigma rule by a fixed set of class ids or names for every image.
    ``target`` fixes y_T (one id for all images, or one per image; a video uses one for all frames);
    otherwise it is drawn per image with ``generator`` (one CPU generator, or one per image). The
    classifier runs in eval mode (its mode is restored afterwards); gradients are taken with respect to
    the image only. ``delta`` must be at least one grey level (1/255): smaller steps would be rounded
    away on the 8-bit grid.
    """
    if x0.ndim != 4 or x0.shape[1] != 3:
        raise ValueError(f"x0 must be (N, 3, H, W), got {tuple(x0.shape)}")
    if not (delta >= (1 - 1e-6) / 255 and eps >= 0 and max_iter >= 0 and 0 < stop_confidence <= 1):
        raise ConfigError(f"bad P-FGSM settings: delta={delta}, eps={eps}, max_iter={max_iter}, "
                          f"stop_confidence={stop_confidence}")
    device = next((t.device for t in classifier.parameters()), x0.device)
    x0 = to_float_images(x0).to(device)
    n = x0.shape[0]
    was_training = classifier.training
    classifier.eval()
    try:
        mask, probs0 = private_set(classifier, x0, sigma, private_classes)
        k = probs0.shape[1]
        if target is None:
            y_t = draw_targets(mask, generator)
        else:
            y_t = torch.as_tensor(target, dtype=torch.long, device=device).flatten()
            y_t = y_t.expand(n).clone() if y_t.numel() == 1 else y_t
            if y_t.numel() != n or bool(((y_t < 0) | (y_t >= k)).any()):
                raise ConfigError(f"target must be one class id in 0..{k - 1} or one per image, got {target}")

        x, iterations = _attack(classifier, x0, y_t, delta, eps, max_iter, stop_confidence)

        with torch.no_grad():
            probs = classifier(x).softmax(dim=1)
        conf_after, top1_after = probs.max(dim=1)
        conf_before, top1_before = probs0.max(dim=1)
    finally:
        classifier.train(was_training)

    names = classifier.class_names
    private_ids: list[list[int]] = []
    for i in range(n):
        ids_i = mask[i].nonzero().flatten()
        ids_i = ids_i[probs0[i, ids_i].argsort(descending=True)].tolist()
        private_ids.append(ids_i)
    return PFGSMResult(
        images=torch.round(x * 255.0).to(torch.uint8),
        private_ids=private_ids,
        private_names=[[names[c] if c < len(names) else str(c) for c in ids] for ids in private_ids],
        target=y_t,
        top1_before=top1_before, conf_before=conf_before,
        top1_after=top1_after, conf_after=conf_after,
        target_conf_after=probs.gather(1, y_t[:, None]).squeeze(1),
        private_conf_after=(probs * mask).sum(dim=1),
        iterations=iterations,
        psnr=psnr(x, x0),
        ssim=ssim(x, x0) if min(x.shape[-2:]) >= 11 else torch.full((n,), float("nan")),
        protected=~mask.gather(1, top1_after[:, None]).squeeze(1),
        class_names=names,
    )


def _attack(classifier: ImageClassifier, x0: Tensor, y_t: Tensor, delta: float, eps: float,
            max_iter: int, stop_confidence: float) -> tuple[Tensor, Tensor]:
    """The P-FGSM loop on the 8-bit grid; only images not yet stopped are forwarded."""
    lo, hi = _grid_box(x0, eps)
    x = quantise(x0).clamp(lo, hi)
    iterations = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
    active = torch.arange(x0.shape[0], device=x0.device)
    for _ in range(max_iter + 1):
        if active.numel() == 0:
            break
        xa = x[active].detach().requires_grad_(True)
        logits = classifier(xa)
        p_t = logits.detach().softmax(dim=1).gather(1, y_t[active, None]).squeeze(1)
        going = (p_t <= stop_confidence) & (iterations[active] < max_iter)
        if not bool(going.any()):
            break
        # sum over images: each image's gradient is its own CE gradient (independent of batch size)
        loss = F.cross_entropy(logits, y_t[active], reduction="sum")
        (grad,) = torch.autograd.grad(loss, xa)
        step = xa.detach() - delta * grad.sign()
        idx = active[going]
        x[idx] = quantise(step[going]).clamp(lo[idx], hi[idx])
        iterations[idx] += 1
        active = idx
    return x.detach(), iterations
