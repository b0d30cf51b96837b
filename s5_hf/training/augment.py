"""Training augmentations of S4P and MoE-MDF as the official S5 (UniMatch-style) code applies them, in pure torch.

Conventions: an image is a (C, H, W) tensor, uint8 in 0..255 or float in 0..1 (colour operations clamp to that
range); a mask is an (H, W) integer tensor of class ids. Geometric operations keep the image dtype. Every random
operation takes an explicit `torch.Generator` and draws from nothing else, so the same seed gives the same
output: that is what makes a killed and resumed run see exactly the same samples (see `sample_generator` and
`AugmentedDataset`).

- weak (every sample): random rescale of the long side by 0.5-2.0 (bilinear image, nearest mask), random crop
  (padding: 0 for the image, 255 = void for the mask), horizontal and vertical flips with p=0.5. The paper also
  lists a random rotation; the official code has none, and neither do we.
- strong (the two strong views of an unlabeled sample): colour jitter (0.5, 0.5, 0.5, 0.25) with p=0.8, random
  grayscale p=0.2, Gaussian blur p=0.5 (sigma 0.1-2.0), and a CutMix box with p=0.5.

Colour operations need the RGB bands first: on an N-band image they change bands 0-2 and keep the others; an
image with fewer than three bands raises a ValueError.

Data that is not 8-bit RGB (any band count, values in the data's own units: `s5_hf.data.normalization`) gets
`strong_augment_bands` instead: brightness and contrast jitter of every band (`band_jitter`) and the same blur; no
hue, saturation or grayscale, which only mean something for R, G, B.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..image_processing_s5 import S5_IMAGE_MEAN, S5_IMAGE_STD
from ..label_sets import VOID_ID

# ITU-R 601-2 luma, the weights of PIL's and torchvision's grayscale conversion.
_LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------------------------------------------------------
# Random draws: all from an explicit generator, one scalar at a time, so the sequence of draws is easy to follow.


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator: torch.Generator, low: int, high: int) -> int:
    """An integer in [low, high], both inclusive."""
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _chance(generator: torch.Generator, p: float) -> bool:
    """True with probability p. Always consumes one draw, whatever p, so later draws do not shift."""
    return torch.rand((), generator=generator).item() < p


def sample_generator(seed: int, *keys: int) -> torch.Generator:
    """A generator seeded from `seed` and any integer keys (e.g. epoch and sample index) by NumPy's SeedSequence
    mixing, so nearby keys give unrelated streams."""
    if any(int(value) < 0 for value in (seed, *keys)):
        raise ValueError(f"Seed and keys must be non-negative integers, got {(seed, *keys)}.")
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator()
    generator.manual_seed(int(state))
    return generator


# ---------------------------------------------------------------------------------------------------------------
# Conversion


def image_to_tensor(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A (C, H, W) uint8 or float tensor from a PIL image (modes RGB, L, F), a NumPy array (H, W) or (H, W, C),
    or a tensor (C, H, W) (returned as is)."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"An image tensor must be (C, H, W), got shape {tuple(image.shape)}.")
        array = None
        tensor = image
    elif isinstance(image, Image.Image):
        if image.mode not in ("RGB", "L", "F"):
            raise ValueError(
                f"Unsupported PIL image mode {image.mode!r}; convert it first (e.g. image.convert('RGB'))."
            )
        array = np.asarray(image)
    else:
        array = np.asarray(image)
    if array is not None:
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise ValueError(f"An image array must be (H, W) or (H, W, C), got shape {array.shape}.")
        tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())  # a writable, contiguous copy
    if tensor.dtype != torch.uint8 and not tensor.is_floating_point():
        raise ValueError(f"Images must be uint8 (0..255) or float (0..1), got dtype {tensor.dtype}.")
    return tensor


def mask_to_tensor(mask: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """An (H, W) int64 tensor of class ids from a PIL image (any single-band mode), an array or a tensor."""
    tensor = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.array(mask))
    if tensor.ndim != 2:
        raise ValueError(
            f"A mask must be 2-D class ids (H, W), got shape {tuple(tensor.shape)} "
            "(colour-coded masks must be converted to ids first)."
        )
    if tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(f"A mask must hold integer class ids, got dtype {tensor.dtype}.")
    return tensor.long()


def _to_float(image: torch.Tensor) -> torch.Tensor:
    return image.float() / 255.0 if image.dtype == torch.uint8 else image


def _cast(image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float result of a geometric operation (same value scale as the input) back to the input dtype."""
    if dtype == torch.uint8:
        return image.round().clamp(0, 255).to(torch.uint8)
    return image.to(dtype)


def _from_unit(image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float result in 0..1 of a colour operation back to the input dtype (uint8: scaled to 0..255)."""
    return _cast(image * 255, dtype) if dtype == torch.uint8 else image.to(dtype)


def normalize(
    image: torch.Tensor, mean: Sequence[float] = S5_IMAGE_MEAN, std: Sequence[float] = S5_IMAGE_STD
) -> torch.Tensor:
    """Float32 `(image - mean) / std` per band, on 0..1 values (uint8 input is divided by 255 first). The
    defaults are the ImageNet statistics of `S5ImageProcessor`."""
    if len(mean) != image.shape[0] or len(std) != image.shape[0]:
        raise ValueError(f"The image has {image.shape[0]} bands but mean/std have {len(mean)}/{len(std)} values.")
    image = _to_float(image).float()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    return (image - mean_t) / std_t


# ---------------------------------------------------------------------------------------------------------------
# Weak (geometric) augmentation


def _check_pair(image: torch.Tensor, mask: torch.Tensor) -> None:
    if image.ndim != 3 or mask.ndim != 2 or image.shape[-2:] != mask.shape:
        raise ValueError(f"Expected an image (C, H, W) and a mask (H, W) of the same size, got "
                         f"{tuple(image.shape)} and {tuple(mask.shape)}.")


def resize_pair(image: torch.Tensor, mask: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize to `size` (height, width): bilinear with antialiasing for the image (like PIL's resize), nearest
    neighbour with pixel-centre sampling for the mask."""
    _check_pair(image, mask)
    height, width = size
    resized = F.interpolate(image[None].float(), size=(height, width), mode="bilinear", align_corners=False,
                            antialias=True)[0]
    rows = ((torch.arange(height) + 0.5) * (mask.shape[0] / height)).floor().long().clamp(max=mask.shape[0] - 1)
    cols = ((torch.arange(width) + 0.5) * (mask.shape[1] / width)).floor().long().clamp(max=mask.shape[1] - 1)
    return _cast(resized, image.dtype), mask[rows.to(mask.device)][:, cols.to(mask.device)]


def random_rescale(
    image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, ratio_range: tuple[float, float] = (0.5, 2.0)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale so the long side becomes a random integer in [ratio_min * long, ratio_max * long]; the short side
    follows the aspect ratio (rounded). One draw."""
    _check_pair(image, mask)
    height, width = mask.shape
    long_side = max(height, width)
    new_long = _randint(generator, int(long_side * ratio_range[0]), int(long_side * ratio_range[1]))
    if height > width:
        size = (new_long, max(1, int(width * new_long / height + 0.5)))
    else:
        size = (max(1, int(height * new_long / width + 0.5)), new_long)
    return resize_pair(image, mask, size)


def random_crop(
    image: torch.Tensor,
    mask: torch.Tensor,
    crop_size: int | tuple[int, int],
    generator: torch.Generator,
    mask_fill: int = VOID_ID,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random `crop_size` window. A side shorter than the crop is first padded at the bottom/right with 0
    (image) and `mask_fill` (mask, void by default, so padding is never trained on). Two draws (x, then y)."""
    _check_pair(image, mask)
    crop_h, crop_w = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    pad_h, pad_w = max(crop_h - mask.shape[0], 0), max(crop_w - mask.shape[1], 0)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0)
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=mask_fill)
    x = _randint(generator, 0, mask.shape[1] - crop_w)
    y = _randint(generator, 0, mask.shape[0] - crop_h)
    return image[:, y : y + crop_h, x : x + crop_w], mask[y : y + crop_h, x : x + crop_w]


def random_flip(
    image: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, p: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip with probability p, then vertical flip with probability p. Two draws."""
    if _chance(generator, p):
        image, mask = image.flip(-1), mask.flip(-1)
    if _chance(generator, p):
        image, mask = image.flip(-2), mask.flip(-2)
    return image, mask


def weak_augment(
    image: torch.Tensor,
    mask: torch.Tensor,
    crop_size: int | tuple[int, int],
    generator: torch.Generator,
    ratio_range: tuple[float, float] = (0.5, 2.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale, crop (mask padded with 255) and flip, in the official order. No rotation (see module docstring)."""
    image, mask = random_rescale(image, mask, generator, ratio_range)
    image, mask = random_crop(image, mask, crop_size, generator)
    return random_flip(image, mask, generator)


# ---------------------------------------------------------------------------------------------------------------
# Strong (photometric) augmentation


def _split_rgb(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if image.ndim != 3 or image.shape[0] < 3:
        raise ValueError(
            f"Colour augmentation needs an image (C, H, W) whose first three bands are R, G, B; got shape "
            f"{tuple(image.shape)}."
        )
    return image[:3], image[3:]


def _grayscale(rgb: torch.Tensor) -> torch.Tensor:
    """(1, H, W) luma of a float RGB image."""
    return (rgb * torch.tensor(_LUMA, dtype=rgb.dtype, device=rgb.device).view(3, 1, 1)).sum(0, keepdim=True)


def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """HSV of a float RGB image (3, ...) in 0..1; hue in [0, 1) (0 = red), saturation and value in 0..1."""
    r, g, b = rgb.unbind(0)
    value, _ = rgb.max(0)
    minimum, _ = rgb.min(0)
    delta = value - minimum
    saturation = torch.where(value > 0, delta / value.clamp(min=1e-12), torch.zeros_like(value))
    safe = delta.clamp(min=1e-12)
    hue = torch.where(
        value == r,
        ((g - b) / safe) % 6,
        torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue)) % 1.0
    return torch.stack((hue, saturation, value))


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `rgb_to_hsv`."""
    hue, saturation, value = hsv.unbind(0)
    sector = torch.floor(hue * 6)
    fraction = hue * 6 - sector
    sector = sector.long() % 6
    p = value * (1 - saturation)
    q = value * (1 - saturation * fraction)
    t = value * (1 - saturation * (1 - fraction))
    # (R, G, B) for each of the six hue sectors.
    choices = torch.stack((
        torch.stack((value, t, p)), torch.stack((q, value, p)), torch.stack((p, value, t)),
        torch.stack((p, q, value)), torch.stack((t, p, value)), torch.stack((value, p, q)),
    ))
    return torch.gather(choices, 0, sector.expand(1, 3, *sector.shape))[0]


def adjust_brightness(rgb: torch.Tensor, factor: float) -> torch.Tensor:
    return (rgb * factor).clamp(0, 1)


def adjust_contrast(rgb: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean grey level of the image."""
    mean = _grayscale(rgb).mean()
    return (factor * rgb + (1 - factor) * mean).clamp(0, 1)


def adjust_saturation(rgb: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image's own grayscale version."""
    return (factor * rgb + (1 - factor) * _grayscale(rgb)).clamp(0, 1)


def adjust_hue(rgb: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5])."""
    hsv = rgb_to_hsv(rgb)
    hsv = torch.stack(((hsv[0] + shift) % 1.0, hsv[1], hsv[2]))
    return hsv_to_rgb(hsv).clamp(0, 1)


def color_jitter(
    image: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.5,
    contrast: float = 0.5,
    saturation: float = 0.5,
    hue: float = 0.25,
    p: float = 0.8,
) -> torch.Tensor:
    """With probability p, brightness/contrast/saturation factors from [1 - x, 1 + x] and a hue shift from
    [-hue, hue], applied in a random order (torchvision's ColorJitter semantics) to the RGB bands.

    Draws: one for p; if applied, a permutation of the four operations, then the four factors."""
    if not 0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}.")
    rgb, rest = _split_rgb(image)
    if not _chance(generator, p):
        return image
    order = torch.randperm(4, generator=generator).tolist()
    factors = [
        _uniform(generator, max(0.0, 1 - brightness), 1 + brightness),
        _uniform(generator, max(0.0, 1 - contrast), 1 + contrast),
        _uniform(generator, max(0.0, 1 - saturation), 1 + saturation),
        _uniform(generator, -hue, hue),
    ]
    operations = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
    out = _to_float(rgb)
    for index in order:
        out = operations[index](out, factors[index])
    return torch.cat((_from_unit(out, image.dtype), rest))


def random_grayscale(image: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """With probability p, replace R, G and B by their luma. One draw."""
    rgb, rest = _split_rgb(image)
    if not _chance(generator, p):
        return image
    gray = _grayscale(_to_float(rgb)).expand(3, -1, -1)
    return torch.cat((_from_unit(gray, image.dtype), rest))


def gaussian_blur(
    image: torch.Tensor, generator: torch.Generator, p: float = 0.5, sigma_range: tuple[float, float] = (0.1, 2.0)
) -> torch.Tensor:
    """With probability p, a Gaussian blur of every band with sigma drawn from `sigma_range` (PIL's
    GaussianBlur radius, as the official code uses it, is this sigma). Kernel radius ceil(3 sigma), edges
    replicated. One draw, plus one for sigma when applied."""
    if not _chance(generator, p):
        return image
    sigma = _uniform(generator, *sigma_range)
    radius = math.ceil(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=image.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    bands = image.shape[0]
    out = F.pad(image[None].float(), (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(bands, 1, 1, -1), groups=bands)
    out = F.conv2d(out, kernel.view(1, 1, -1, 1).expand(bands, 1, -1, 1), groups=bands)
    return _cast(out[0], image.dtype)


def strong_augment(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Colour jitter (p=0.8), grayscale (p=0.2), Gaussian blur (p=0.5), in the official order."""
    image = color_jitter(image, generator)
    image = random_grayscale(image, generator)
    return gaussian_blur(image, generator)


def band_jitter(
    image: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.5,
    contrast: float = 0.5,
    p: float = 0.8,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """With probability p, brightness and contrast factors from [1 - x, 1 + x] in a random order, for an image of
    any band count in its own units (no clamping to [0, 1]; uint8 stays within 0..255): brightness multiplies the
    values, contrast blends each band with its own mean over the `valid` pixels ((H, W) bool; default all).

    One factor of each for all bands, as ColorJitter's brightness and contrast apply one factor to R, G and B: the
    ratios between bands (spectral indices such as NDVI) survive brightness, and every band's contrast changes
    alike. Pixels outside `valid` (nodata, padding) keep their values. Draws: one for p; if applied, a permutation
    of the two operations, then the two factors."""
    if not _chance(generator, p):
        return image
    order = torch.randperm(2, generator=generator).tolist()
    factors = (_uniform(generator, max(0.0, 1 - brightness), 1 + brightness),
               _uniform(generator, max(0.0, 1 - contrast), 1 + contrast))
    original = image.float()
    keep = torch.ones(image.shape[-2:], dtype=torch.bool, device=image.device) if valid is None else valid.bool()
    if not keep.any():
        return image
    out = original
    for index in order:
        if index == 0:
            out = out * factors[0]
        else:
            mean = out[:, keep].mean(dim=1).view(-1, 1, 1)
            out = factors[1] * out + (1 - factors[1]) * mean
    return _cast(torch.where(keep, out, original), image.dtype)


def strong_augment_bands(image: torch.Tensor, generator: torch.Generator,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """The strong augmentation of data that is not 8-bit RGB: `band_jitter` (p=0.8), then Gaussian blur (p=0.5)."""
    image = band_jitter(image, generator, valid=valid)
    return gaussian_blur(image, generator)


def cutmix_box(
    height: int,
    width: int,
    generator: torch.Generator,
    p: float = 0.5,
    area_range: tuple[float, float] = (0.02, 0.4),
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    max_tries: int = 1000,
) -> torch.Tensor:
    """An (H, W) uint8 mask that is 1 inside a random box, with probability p (otherwise all 0).

    The box area is a fraction of the image drawn from `area_range`; its aspect ratio (height / width) is drawn
    from `aspect_range` together with a top-left corner until the box fits, as UniMatch does. Draws: one for p;
    if applied, the area, then three per attempt (ratio, x, y)."""
    box = torch.zeros(height, width, dtype=torch.uint8)
    if not _chance(generator, p):
        return box
    area = _uniform(generator, *area_range) * height * width
    for _ in range(max_tries):
        ratio = _uniform(generator, *aspect_range)
        box_w, box_h = int(math.sqrt(area / ratio)), int(math.sqrt(area * ratio))
        x, y = _randint(generator, 0, width - 1), _randint(generator, 0, height - 1)
        if x + box_w <= width and y + box_h <= height:
            box[y : y + box_h, x : x + box_w] = 1
            return box
    raise RuntimeError(f"No CutMix box of area {area:.0f} fits a {height}x{width} image after {max_tries} tries.")


def cutmix_images(images: torch.Tensor, partner_images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images with the pixels inside each (B, H, W) box taken from the partner images."""
    if images.shape != partner_images.shape or images.ndim != 4 or boxes.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"Expected images and partners (B, C, H, W) and boxes (B, H, W), got {tuple(images.shape)}, "
                         f"{tuple(partner_images.shape)} and {tuple(boxes.shape)}.")
    return torch.where(boxes.bool()[:, None], partner_images, images)


# ---------------------------------------------------------------------------------------------------------------
# Per-sample transforms for `datasets` rows


class LabeledTransform:
    """Turns a `datasets` row (`image` PIL image, `mask` PIL id mask) into a training pair:
    `(image float32 (C, S, S) normalised, mask int64 (S, S) with 255 where padded)` after weak augmentation.

    `generator` in `__call__` overrides the transform's own generator (seeded with `seed`); pass a per-sample
    one (`sample_generator` / `AugmentedDataset`) when samples are loaded by several workers or a run resumes.
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        ratio_range: tuple[float, float] = (0.5, 2.0),
        mean: Sequence[float] = S5_IMAGE_MEAN,
        std: Sequence[float] = S5_IMAGE_STD,
        seed: int = 0,
        image_key: str = "image",
        mask_key: str = "mask",
    ):
        self.crop_size = crop_size
        self.ratio_range = ratio_range
        self.mean, self.std = tuple(mean), tuple(std)
        self.image_key, self.mask_key = image_key, mask_key
        self.generator = sample_generator(seed)

    def __call__(
        self, row: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        generator = generator if generator is not None else self.generator
        image, mask = image_to_tensor(row[self.image_key]), mask_to_tensor(row[self.mask_key])
        image, mask = weak_augment(image, mask, self.crop_size, generator, self.ratio_range)
        return normalize(image, self.mean, self.std), mask


class UnlabeledTransform:
    """Turns a `datasets` row (`image` PIL image or array; an optional `valid` (H, W) bool column, False where the
    image is nodata; any other column is ignored) into UniMatch's unlabeled sample:
    `(weak, strong1, strong2, ignore_mask, cutmix_box1, cutmix_box2)`.

    The three images are float32 (C, S, S), normalised: the weak view, and two independent strong augmentations
    of it. `ignore_mask` is int64 (S, S): 255 where the crop is padding or nodata (`valid` False), 0 elsewhere. The
    CutMix boxes are uint8 (S, S) 0/1 masks (the official S4P step uses only strong1 and box1). Draw order: weak,
    strong1, strong2, box1, box2.

    `photometric`: ``"rgb"`` (the paper's `strong_augment`, for 8-bit RGB) or ``"bands"`` (`strong_augment_bands`,
    for other data in its own units; its contrast means are over the valid pixels of the crop).
    """

    def __init__(
        self,
        crop_size: int | tuple[int, int],
        ratio_range: tuple[float, float] = (0.5, 2.0),
        mean: Sequence[float] = S5_IMAGE_MEAN,
        std: Sequence[float] = S5_IMAGE_STD,
        cutmix_p: float = 0.5,
        seed: int = 0,
        image_key: str = "image",
        photometric: str = "rgb",
    ):
        if photometric not in ("rgb", "bands"):
            raise ValueError(f"photometric must be 'rgb' or 'bands', got {photometric!r}.")
        self.crop_size = crop_size
        self.ratio_range = ratio_range
        self.mean, self.std = tuple(mean), tuple(std)
        self.cutmix_p = cutmix_p
        self.image_key = image_key
        self.photometric = photometric
        self.generator = sample_generator(seed)

    def __call__(self, row: Mapping[str, Any], generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
        generator = generator if generator is not None else self.generator
        image = image_to_tensor(row[self.image_key])
        # A zero mask (255 where nodata) through the same geometry marks the padding with 255.
        valid = torch.zeros(image.shape[-2:], dtype=torch.uint8)
        if row.get("valid") is not None:
            nodata = ~torch.from_numpy(np.asarray(row["valid"], dtype=bool))
            if nodata.shape != valid.shape:
                raise ValueError(f"The row's valid mask is {tuple(nodata.shape)} but its image {tuple(valid.shape)}.")
            valid[nodata] = VOID_ID
        weak, ignore_mask = weak_augment(image, valid, self.crop_size, generator, self.ratio_range)
        if self.photometric == "rgb":
            strong1 = strong_augment(weak, generator)
            strong2 = strong_augment(weak, generator)
        else:
            inside = ignore_mask == 0
            strong1 = strong_augment_bands(weak, generator, valid=inside)
            strong2 = strong_augment_bands(weak, generator, valid=inside)
        height, width = ignore_mask.shape
        box1 = cutmix_box(height, width, generator, p=self.cutmix_p)
        box2 = cutmix_box(height, width, generator, p=self.cutmix_p)
        views = [normalize(view, self.mean, self.std) for view in (weak, strong1, strong2)]
        return (*views, ignore_mask.long(), box1, box2)


def row_seed_key(row: Mapping[str, Any]) -> int:
    """The seeding key of a streamed row: crc32 of its ``id`` column (rows have no stable index in a stream)."""
    sample_id = row.get("id")
    if sample_id is None:
        raise KeyError("Training rows need an 'id' column (stable unique id) to seed their augmentation.")
    return zlib.crc32(str(sample_id).encode())


class AugmentedDataset(torch.utils.data.Dataset):
    """`transform(sample)` with a generator seeded from `(seed, epoch, key)`: the key is the sample's index for an
    indexable dataset, the crc32 of its ``id`` (`row_seed_key`) for a streaming one (`datasets.IterableDataset`
    or any `torch.utils.data.IterableDataset`), which then gives an `IterableDataset` of the same class.

    A sample's augmentation then depends on those three numbers only, not on the number of workers or processes,
    which worker loads it, or what ran before a resume. Call `set_epoch` before each epoch's iterator is created
    (Accelerate's prepared data loaders forward their `set_epoch` to the dataset; a streaming source is reshuffled
    for the epoch too); with `persistent_workers=True` the workers keep the epoch they started with. Use
    different seeds for two views of the same dataset (e.g. the unlabeled batch and its independent CutMix
    partner batch).
    """

    def __new__(cls, dataset: Any = None, *args, **kwargs):  # (no arguments when unpickled in a worker)
        if cls is AugmentedDataset and _is_stream(dataset):
            cls = _AugmentedStream
        return super().__new__(cls)

    def __init__(self, dataset: Any, transform: Callable, seed: int = 0, epoch: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def augment(self, sample: Any, key: int):
        return self.transform(sample, generator=sample_generator(self.seed, self.epoch, key))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.augment(self.dataset[index], index)


class _AugmentedStream(AugmentedDataset, torch.utils.data.IterableDataset):
    """`AugmentedDataset` of a streaming dataset (runs inside the loader's workers, which split the shards)."""

    def __iter__(self):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        for row in self.dataset:
            yield self.augment(row, row_seed_key(row))


def _is_stream(dataset: Any) -> bool:
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return True
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(dataset, datasets.IterableDataset)


__all__ = [
    "AugmentedDataset",
    "LabeledTransform",
    "UnlabeledTransform",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "band_jitter",
    "color_jitter",
    "cutmix_box",
    "cutmix_images",
    "gaussian_blur",
    "hsv_to_rgb",
    "image_to_tensor",
    "mask_to_tensor",
    "normalize",
    "random_crop",
    "random_flip",
    "random_grayscale",
    "random_rescale",
    "resize_pair",
    "rgb_to_hsv",
    "row_seed_key",
    "sample_generator",
    "strong_augment",
    "strong_augment_bands",
    "weak_augment",
]
