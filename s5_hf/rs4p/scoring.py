"""Scoring pool chunks with a segmentation model, and the Parquet score shards that hold the results.

Every image of a chunk gets one row in the chunk's score shard, in chunk order: scores for the images the
model saw, or the reason it could not (`error`), so nothing is dropped silently. Batches never span chunks,
which makes a chunk's scores independent of which process scored it and of earlier interrupted runs, as
long as the numeric environment is the same: CPU kernels split work by intra-op thread, so a chunk scored
with 1 thread (torchrun's default OMP_NUM_THREADS) and with 2 differs in the last bits of the logits. Each
shard records its environment (`scoring_environment`) and the merge warns when they differ.

Image handling (documented choice; the paper's pool is 512x512 patches): images are decoded with Pillow and
resized bilinearly to `image_size` x `image_size` if they are not already that size. Pseudo-labels are at
`image_size`. Cutting large scenes into patches is a preprocessing step before selection. Only images that
become 8-bit RGB exactly are scored (RGB, grey-scale, palette, with or without alpha); 16-bit, float and
other band layouts are reported and skipped with their format as the reason, since a scaling to 8 bits would
be a guess (a 16-bit tile read as 8 bits is nearly black, and black images have the lowest entropy, so they
would win the ranking). Constant images (every pixel the same colour, e.g. no-data tiles) are skipped with
the reason "constant image" for the same reason.

Models of other bands (`num_channels` other than 3, or data that is not 8-bit): the scorer takes the image processor
saved with the model (`ChunkScorer(..., processor=...)`) and scores images of exactly the model's band count, read
in their own dtype (GeoTIFFs through rasterio, any band count; Pillow formats as stored), normalized by the
processor (its percentile clipping, scale and per-band mean/std, as `s5-segment` does) and resized bilinearly in
float. An image of another band count or dtype is skipped with that as its reason; a processor that normalizes
another band count than the model's is refused when the scorer is built.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from ..data.images import pixel_format_problem, stored_format
from ..files import atomic_path
from ..image_processing_s5 import S5_IMAGE_MEAN, S5_IMAGE_STD, S5ImageProcessor
from .entropy import score_logits
from .kmeans import l2_normalize
from .pool import Chunk, RawImage

logger = logging.getLogger(__name__)


@dataclass
class ScoringOptions:
    """How images are scored.

    Attributes:
        image_size: side of the square the model sees (a multiple of the patch size).
        batch_size: images per forward pass.
        background_id: class excluded from the entropy sum (None: none excluded).
        task: task (dataset head) of a multi-task model; None uses the model's default task.
        features_only: compute only the pooled feature (backbone forward; used for the labeled set).
    """

    image_size: int = 512
    batch_size: int = 16
    background_id: int | None = 0
    task: str | None = None
    features_only: bool = False


def _without_addresses(error: Exception) -> str:
    # Pillow's messages name the BytesIO object by memory address; drop it so reports are reproducible.
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(error))


def image_digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class UnusableImage(ValueError):
    """An image that decodes but cannot be scored as it is; the message is the reason recorded for it."""


CONSTANT_IMAGE = "constant image"


def _is_constant(pixels: np.ndarray) -> bool:
    """Every pixel the same colour; the first row settles almost every real image at a fraction of the cost."""
    first = pixels[:1, :1]
    return bool((pixels[0] == first[0]).all() and (pixels == first).all())


def decode_image(data: bytes, image_size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to `(image_size, image_size, 3)` uint8 RGB; also returns the original (height, width).

    Raises `UnusableImage` for pixel formats that are not 8-bit RGB-convertible (see the module docstring),
    and whatever Pillow raises on a corrupt file; callers record either as a per-image failure.
    """
    with Image.open(io.BytesIO(data)) as image:
        stored = stored_format(image)  # before load(): Pillow narrows some formats while loading
        image.load()
        problem = pixel_format_problem(image, *stored)
        if problem is not None:
            raise UnusableImage(problem)
        size = (image.height, image.width)
        rgb = image.convert("RGB")
    if rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb), size


def decode_bands(data: bytes) -> np.ndarray:
    """Decode to `(H, W, C)` pixels in the stored dtype and band count: TIFFs through rasterio (any band count and
    dtype; Pillow narrows some), other formats through Pillow (palette images as RGB, alpha dropped)."""
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        try:
            import rasterio
            from rasterio.io import MemoryFile
        except ImportError:
            rasterio = None
        if rasterio is not None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with MemoryFile(data) as memory, memory.open() as src:
                    if len(set(src.dtypes)) != 1:
                        raise UnusableImage(f"bands of different dtypes {sorted(set(src.dtypes))}")
                    return src.read().transpose(1, 2, 0)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode == "P":
            image = image.convert("RGB")
        elif image.mode in ("RGBA", "LA", "PA"):
            image = image.convert("RGB" if image.mode != "LA" else "L")
        pixels = np.asarray(image)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def to_pixel_values(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack uint8 HWC RGB images into normalised `(B, 3, H, W)` float32 (the S5 image processor's constants)."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(S5_IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(S5_IMAGE_STD).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)


def encode_mask(mask: np.ndarray) -> bytes:
    """Lossless PNG of a class-id map (8-bit, or 16-bit for models with more than 256 classes)."""
    image = Image.fromarray(mask if mask.dtype == np.uint8 else mask.astype(np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


ENVIRONMENT_KEY = b"s5_scoring_environment"


def scoring_environment(device: torch.device, dtype: torch.dtype) -> str:
    """What the bits of the scores depend on besides the model and the images: torch version, device, dtype
    and intra-op threads (CPU kernels split reductions by thread, so 1 and 2 threads differ in the last bits)."""
    device = torch.device(device)
    if device.type == "cuda":
        where = f"cuda ({torch.cuda.get_device_name(device)})"
    else:
        where = f"{device.type}, intra-op threads: {torch.get_num_threads()}"
    return f"torch {torch.__version__}, {where}, {str(dtype).removeprefix('torch.')}"


def environment_of(schema: pa.Schema) -> str:
    """The scoring environment recorded in a score shard's schema (see `scoring_environment`)."""
    value = (schema.metadata or {}).get(ENVIRONMENT_KEY)
    return value.decode() if value else "unknown (shard written without an environment record)"


def score_schema(num_classes: int, feature_dim: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("source", pa.string()),
        ("error", pa.string()),  # null for scored images
        ("height", pa.int32()),  # original size
        ("width", pa.int32()),
        ("entropy", pa.float64()),
        ("confidence", pa.float64()),
        ("class_counts", pa.list_(pa.int64(), num_classes)),
        ("feature", pa.list_(pa.float16(), feature_dim)),  # L2-normalised pooled feature
        ("pseudo_label", pa.binary()),  # PNG
        ("digest", pa.string()),  # of the encoded bytes, to detect files changed between scoring and export
    ])


class ChunkScorer:
    """Scores the images of one chunk in batches and returns its score table (one row per image, in order)."""

    def __init__(self, model: torch.nn.Module, options: ScoringOptions, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, processor: S5ImageProcessor | None = None):
        config = model.config
        # Without a processor: 8-bit RGB with the S5 constants (the paper's pool). With one: the model's own bands.
        self.normalization = None
        if processor is not None:
            from ..inference.sliding_window import Normalization

            self.normalization = Normalization.from_processor(processor)
            bands = len(self.normalization.mean)
            if bands not in (1, config.num_channels):
                raise ValueError(f"The model takes {config.num_channels} band(s) but the processor normalizes "
                                 f"{bands}: score with the processor saved with the model.")
        elif config.num_channels != 3:
            raise ValueError(f"The model takes {config.num_channels} bands: pass the image processor saved with it "
                             "(ChunkScorer(..., processor=AutoImageProcessor.from_pretrained(model folder))), whose "
                             "per-band normalization the pool images need.")
        if options.image_size % config.patch_size:
            raise ValueError(
                f"image_size ({options.image_size}) must be a multiple of the patch size ({config.patch_size})."
            )
        task = config.get_task(options.task or config.default_task)
        self.task_name = task.name
        self.id2label = task.id2label
        self.num_classes = len(self.id2label)
        if options.background_id is not None and not 0 <= options.background_id < self.num_classes:
            raise ValueError(
                f"background_id {options.background_id} is not a class of task {self.task_name!r} "
                f"(0..{self.num_classes - 1}); pass None to exclude no class."
            )
        self.model = model.to(device=device, dtype=dtype).eval()
        self.options = options
        self.device = torch.device(device)
        self.dtype = dtype
        self.feature_dim = config.hidden_size
        self.schema = score_schema(self.num_classes, self.feature_dim)
        self.images_scored = 0

    def score(self, images: Iterable[RawImage]) -> pa.Table:
        rows: list[dict] = []
        pending: list[tuple[int, np.ndarray]] = []  # (row, decoded image) waiting for a forward pass
        for raw in images:
            row = {"id": raw.id, "source": raw.source, "error": raw.error}
            rows.append(row)
            if raw.error is not None:
                continue
            row["digest"] = image_digest(raw.data)
            try:
                if self.normalization is not None:
                    pixels, (row["height"], row["width"]) = self._decode_bands(raw.data)
                else:
                    pixels, (row["height"], row["width"]) = decode_image(raw.data, self.options.image_size)
            except UnusableImage as error:
                row["error"] = str(error)
                continue
            except Exception as error:  # per-image policy: any decoding failure is recorded, never fatal
                row["error"] = f"cannot decode image: {type(error).__name__}: {_without_addresses(error)}"
                continue
            if _is_constant(pixels):
                row["error"] = CONSTANT_IMAGE
                continue
            pending.append((len(rows) - 1, pixels))
            if len(pending) == self.options.batch_size:
                self._forward(pending, rows)
                pending = []
        if pending:
            self._forward(pending, rows)
        for row in rows:
            if row["error"] is not None:
                logger.warning("Skipping image %s (source %s): %s", row["id"], row["source"], row["error"])
        return self._to_table(rows)

    def _decode_bands(self, data: bytes) -> tuple[torch.Tensor, tuple[int, int]]:
        """(normalized (C, S, S) float32 tensor, original (height, width)) of an image of the model's bands."""
        from ..inference.sliding_window import _check_scale
        from ..inference.scenes import ArrayScene, SceneError

        pixels = decode_bands(data)
        expected = self.model.config.num_channels
        if pixels.shape[2] != expected:
            raise UnusableImage(f"{pixels.shape[2]} band(s) but the model takes {expected}")
        if _is_constant(pixels):
            raise UnusableImage(CONSTANT_IMAGE)
        if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
            raise UnusableImage("NaN/Inf pixel values")
        try:
            _check_scale(ArrayScene(pixels, "image"), self.normalization, explicit=False)
        except SceneError as error:
            raise UnusableImage(str(error).removeprefix("image: ")) from None
        tensor = self.normalization(pixels.transpose(2, 0, 1))[None]
        size = self.options.image_size
        if tensor.shape[-2:] != (size, size):
            tensor = torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False)
        return tensor[0], pixels.shape[:2]

    @torch.inference_mode()
    def _forward(self, pending: list[tuple[int, np.ndarray]], rows: list[dict]) -> None:
        if isinstance(pending[0][1], torch.Tensor):
            pixel_values = torch.stack([pixels for _, pixels in pending]).to(self.device, self.dtype)
        else:
            pixel_values = to_pixel_values([pixels for _, pixels in pending]).to(self.device, self.dtype)
        if self.options.features_only:
            pooled = self.model.base_model(pixel_values, task=self.task_name).pooler_output
            scores = None
        else:
            output = self.model(pixel_values, task=self.task_name)
            pooled = output.pooler_output
            scores = score_logits(output.logits, self.options.background_id)
        features = l2_normalize(pooled).half().cpu().numpy()
        finite = torch.isfinite(pooled).all(dim=1).cpu()
        if scores is not None:
            finite &= scores.finite.cpu()
            labels = scores.pseudo_labels.cpu().numpy()
            entropy, confidence = scores.entropy.cpu().numpy(), scores.confidence.cpu().numpy()
            counts = scores.class_counts.cpu().numpy()
        for i, (row_index, _) in enumerate(pending):
            row = rows[row_index]
            if not finite[i]:
                row["error"] = "the model produced NaN or infinite outputs for this image"
                continue
            row["feature"] = features[i]
            if scores is not None:
                row["entropy"], row["confidence"] = float(entropy[i]), float(confidence[i])
                row["class_counts"] = counts[i]
                row["pseudo_label"] = encode_mask(labels[i])
        self.images_scored += len(pending)

    def _to_table(self, rows: list[dict]) -> pa.Table:
        ok = np.array([row["error"] is None for row in rows], dtype=bool)
        has_scores = ok & np.array(["entropy" in row for row in rows], dtype=bool)  # not for features_only
        features = np.zeros((len(rows), self.feature_dim), dtype=np.float16)
        counts = np.zeros((len(rows), self.num_classes), dtype=np.int64)
        for i in np.flatnonzero(ok):
            features[i] = rows[i]["feature"]
        for i in np.flatnonzero(has_scores):
            counts[i] = rows[i]["class_counts"]

        def column(key: str, kind: pa.DataType, present: np.ndarray | None = None) -> pa.Array:
            return pa.array([row.get(key) if present is None or present[i] else None for i, row in enumerate(rows)],
                            kind)

        columns = {
            "id": column("id", pa.string()),
            "source": column("source", pa.string()),
            "error": column("error", pa.string()),
            "height": column("height", pa.int32()),
            "width": column("width", pa.int32()),
            "entropy": column("entropy", pa.float64(), has_scores),
            "confidence": column("confidence", pa.float64(), has_scores),
            "class_counts": pa.FixedSizeListArray.from_arrays(
                pa.array(counts.ravel(), pa.int64()), self.num_classes, mask=pa.array(~has_scores)
            ),
            "feature": pa.FixedSizeListArray.from_arrays(
                pa.array(features.ravel(), pa.float16()), self.feature_dim, mask=pa.array(~ok)
            ),
            "pseudo_label": column("pseudo_label", pa.binary(), has_scores),
            "digest": column("digest", pa.string()),
        }
        table = pa.table(columns, schema=self.schema)
        return table.replace_schema_metadata({ENVIRONMENT_KEY: scoring_environment(self.device, self.dtype).encode()})


SHARD_NAME = re.compile(r"^chunk-\d{6,}\.parquet$")
TEMPORARY_NAME = re.compile(r"^\.chunk-\d{6,}\.parquet\.[0-9a-f]{8}\.tmp$")  # files.temporary_sibling


class ScoreStore:
    """A folder of score shards, `chunk-<index>.parquet`, each written atomically (temporary name, rename)."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def path(self, chunk_index: int) -> Path:
        return self.directory / f"chunk-{chunk_index:06d}.parquet"

    def write(self, chunk_index: int, table: pa.Table) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path(chunk_index)
        with atomic_path(final) as temporary:  # a killed run leaves a stray temporary, never a half shard
            pq.write_table(table, temporary)
        return final

    def shards(self) -> list[Path]:
        """The score shards in the folder."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if SHARD_NAME.match(p.name))

    def temporaries(self) -> list[Path]:
        """Unfinished shards that killed runs left behind."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if TEMPORARY_NAME.match(p.name))

    def remove_temporaries(self) -> int:
        """Delete temporaries left by killed runs (call while no process is writing)."""
        stale = self.temporaries()
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def clear(self) -> int:
        """Delete the score shards and temporaries (only those: names this class writes)."""
        removed = self.shards() + self.temporaries()
        for path in removed:
            path.unlink(missing_ok=True)
        return len(removed)

    def is_complete(self, chunk: Chunk, expected_ids: Sequence[str]) -> bool:
        """Whether the chunk's shard exists and holds exactly its images; a damaged shard is reported."""
        path = self.path(chunk.index)
        if not path.exists():
            return False
        try:
            ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        except Exception as error:  # unreadable shard: re-score rather than fail the whole run
            logger.warning("Score shard %s is unreadable (%s): its chunk will be scored again.", path, error)
            return False
        if ids != list(expected_ids):
            logger.warning("Score shard %s does not hold the images of chunk %d: it will be scored again.",
                           path, chunk.index)
            return False
        return True


__all__ = ["CONSTANT_IMAGE", "ChunkScorer", "ScoreStore", "ScoringOptions", "UnusableImage", "decode_image",
           "encode_mask", "environment_of", "image_digest", "score_schema", "scoring_environment", "to_pixel_values"]
