"""A small built-in calibration set for machines with no data of their own.

The photos are the sample images shipped inside scikit-image's wheel (``skimage.data``), so
they load offline. They are everyday scenes (a person, a cat, a cup, a motorcycle, a rocket,
a clock...) rather than a real detection dataset: good enough to produce a working INT8 model,
not a replacement for a few hundred images from the deployment domain.
"""

from __future__ import annotations

import numpy as np

from convert.errors import BackendMissing, ConvertError

BUILTIN_IMAGES: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right",
    "camera", "clock", "coins", "hubble_deep_field",
)
"""Names of the built-in images, in their fixed order."""


def load_builtin(name: str) -> np.ndarray:
    """Loads one built-in image as HxWx3 uint8 RGB.

    Args:
        name: One of :data:`BUILTIN_IMAGES`.

    Raises:
        BackendMissing: scikit-image is not installed.
        ConvertError: Unknown name, or the image is not part of the installed scikit-image.
    """
    if name not in BUILTIN_IMAGES:
        raise ConvertError(f"unknown built-in calibration image {name!r}.",
                           hint=f"known: {', '.join(BUILTIN_IMAGES)}.")
    try:
        from skimage import data
    except ImportError:
        raise BackendMissing("the built-in calibration set needs scikit-image, which is not installed.",
                             hint="pip install 'convert[samples]', or give calibration data "
                             "(an image folder, a list file, a YOLO or COCO dataset).") from None
    try:
        if name.startswith("motorcycle_"):
            left, right, _ = data.stereo_motorcycle()
            img = left if name == "motorcycle_left" else right
        else:
            img = getattr(data, name)()
    except (ModuleNotFoundError, OSError, ValueError) as e:  # images fetched on demand need pooch + network
        raise ConvertError(f"built-in calibration image {name!r} cannot be loaded ({e}).",
                           hint="give calibration data instead of the built-in set.") from None
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3], dtype=np.uint8)
