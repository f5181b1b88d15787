"""Privacy protection of images and videos against classifiers (P-FGSM, seed 000)."""

from egoattn.privacy.pfgsm import (
    SCREEN_AND_PHONE_CLASSES,
    ImageClassifier,
    PFGSMResult,
    bundled_classifier,
    load_classifier,
    pfgsm,
    psnr,
    ssim,
)

__all__ = [
    "SCREEN_AND_PHONE_CLASSES", "ImageClassifier", "PFGSMResult", "bundled_classifier", "load_classifier",
    "pfgsm", "psnr", "ssim",
]
