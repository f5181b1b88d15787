"""The bundled ImageNet EfficientNet-Lite0's class activation map points at the object in real photos.

Masks (../shared/data/real/images): bird_segmentation_mask.png uses VOC class ids (0 background,
3 bird, a few pixels of other ids); dog_segmentation_mask.png is an Oxford-IIIT-Pet trimap shifted to
start at 0 (0 pet, 1 background, 2 boundary) - checked by eye: the value-0 region is the dog.
"""

import numpy as np
import pytest

import paths
import torch
import torch.nn.functional as F
from PIL import Image

from egoattn.explain.scoring import mass_inside, pointing_hit
from egoattn.models.attention import cam_attention
from egoattn.models.backbones import build_backbone

IMAGES = paths.REAL / "images"
OBJECT = {"dog": lambda m: m == 0, "bird": lambda m: m == 3}


@pytest.fixture(scope="module")
def backbone():
    return build_backbone("efficientnet_lite0", weights="bundled").eval()


@pytest.mark.parametrize("name", ["dog", "bird"])
def test_cam_peaks_inside_the_object(backbone, name):
    if not IMAGES.is_dir():
        pytest.skip(f"{IMAGES} not present")
    image = np.asarray(Image.open(IMAGES / f"{name}_segmentation.png").convert("RGB"))
    mask = OBJECT[name](np.asarray(Image.open(IMAGES / f"{name}_segmentation_mask.png")))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(backbone.mean)[:, None, None]) / torch.tensor(backbone.std)[:, None, None]
    with torch.no_grad():
        attention, _, _ = cam_attention(backbone(x)["f_bn"], backbone.fc)
    a = attention[0].numpy()
    assert pointing_hit(a, mask)
    # and most of the attention lies on the object, well above its share of the image
    assert mass_inside(a, mask) > max(0.5, 1.2 * mask.mean())
