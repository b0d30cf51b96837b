"""Small real aerial scenes bundled with the package (see README.md here for provenance and licence)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
SCENE = "YELL_2019_541000_4977000_crop.png"
GEOTIFF = "OSBS_029.tif"
# A small labeled folder dataset (images/, masks/, id2label.json): tree crowns on NEON crops.
LABELED = ROOT / "neon_labeled"


def path(name: str) -> Path:
    """Path of bundled file `name`; the error lists the available ones."""
    target = ROOT / name
    if not target.is_file():
        raise FileNotFoundError(f"No bundled sample {name!r}; available: {', '.join(p.name for p in sample_files())}.")
    return target


def sample_files() -> list[Path]:
    """The bundled images (PNG and GeoTIFF)."""
    return sorted(p for p in ROOT.iterdir() if p.suffix in {".png", ".tif"})
