"""Build the Hugging Face Space folder of the demo from this repository.

    python demo/build_space.py build/space                 (then upload build/space as the Space's files)
    python demo/build_space.py --update-requirements       (re-pin demo/requirements.txt to this environment)

`s5-hf` is not on PyPI, so a Space cannot `pip install s5-hf`. The Space folder therefore carries its own copy of
the package: `app.py` and `README.md` (the Space card) from demo/, the whole `s5_hf/` package next to `app.py`
(Python imports it from the app's folder, sample scenes included), and `requirements.txt` = demo/requirements.txt:
the package's dependencies (pyproject.toml, plus rasterio for GeoTIFF uploads) pinned to the versions this
repository was tested with, torch from the CPU wheel index (a CPU Space; the default CUDA wheels are gigabytes).
Gradio itself is the Space's `sdk_version` (README.md); requirements.txt pins the same version.

The folder is written to a staging folder and renamed into place when complete; an existing folder is replaced
only with `--overwrite`.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import shutil
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "demo"
REQUIREMENTS = DEMO / "requirements.txt"
#: Extras of the package the Space needs besides its dependencies: rasterio reads multi-band GeoTIFF uploads.
SPACE_EXTRAS = ("geo",)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: What is not copied from the package: byte code and caches.
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache")


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement.strip())[0]


def package_requirements() -> list[str]:
    """The requirement strings of the package's dependencies and the Space's extras, from pyproject.toml."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return list(project["dependencies"]) + [r for extra in SPACE_EXTRAS for r in extras.get(extra, [])]


def sdk_version() -> str:
    """The Gradio version the Space runs (`sdk_version` of demo/README.md)."""
    match = re.search(r"^sdk_version:\s*([\w.]+)\s*$", (DEMO / "README.md").read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{DEMO / 'README.md'}: no sdk_version in the Space metadata.")
    return match[1]


def pinned_requirements() -> str:
    """requirements.txt text: every dependency pinned to the version installed here (local version labels such as
    +cpu dropped: `torch==2.x.y` matches the CPU wheel of the index below)."""
    lines = [
        "# The Space's Python packages, pinned: written by `python demo/build_space.py --update-requirements` from",
        "# pyproject.toml and the environment the repository was tested in. s5-hf itself is not listed: the Space",
        "# folder built by demo/build_space.py carries its own copy of the s5_hf package next to app.py.",
        f"--extra-index-url {CPU_INDEX}",
    ]
    for requirement in package_requirements():
        name = _name(requirement)
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{name} ({requirement}) is not installed here: install the package with its "
                             f"{'/'.join(SPACE_EXTRAS)} extra before pinning.") from None
        lines.append(f"{name}=={version.split('+', 1)[0]}")
    lines.append(f"gradio=={sdk_version()}")
    return "\n".join(lines) + "\n"


def build_space(output: str | Path, overwrite: bool = False) -> Path:
    """Write the Space folder at `output` (see the module docstring); returns its path."""
    sys.path.insert(0, str(REPO))
    from s5_hf import files

    output = Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists; pass --overwrite to replace it.")
    if output.resolve().is_relative_to(REPO / "s5_hf"):
        raise ValueError(f"{output}: inside the package it would copy; choose a folder outside s5_hf/.")
    listed = [line.split("==")[0].strip() for line in REQUIREMENTS.read_text().splitlines()
              if line.strip() and not line.startswith(("#", "-"))] if REQUIREMENTS.is_file() else ["s5-hf"]
    if "s5-hf" in listed:
        raise ValueError(f"{REQUIREMENTS}: must pin the package's dependencies, not s5-hf (not on PyPI); run "
                         "python demo/build_space.py --update-requirements.")
    with files.staged_directory(output) as staging:
        shutil.copy2(DEMO / "app.py", staging / "app.py")
        shutil.copy2(DEMO / "README.md", staging / "README.md")
        shutil.copy2(REQUIREMENTS, staging / "requirements.txt")
        shutil.copytree(REPO / "s5_hf", staging / "s5_hf", ignore=IGNORED)
        license_file = REPO / "LICENSE"
        if license_file.is_file():
            shutil.copy2(license_file, staging / "LICENSE")
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", nargs="?", help="the Space folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--update-requirements", action="store_true",
                        help=f"re-pin {REQUIREMENTS.relative_to(REPO)} to this environment's versions")
    args = parser.parse_args(argv)
    if args.update_requirements:
        sys.path.insert(0, str(REPO))
        from s5_hf import files

        files.write_text(REQUIREMENTS, pinned_requirements())
        print(f"wrote {REQUIREMENTS}")
    if args.output:
        print(f"Space folder: {build_space(args.output, args.overwrite)}")
    elif not args.update_requirements:
        parser.error("give the output folder (or --update-requirements)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
