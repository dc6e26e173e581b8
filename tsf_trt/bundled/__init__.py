"""Models that ship inside the package.

``demo``: the compact configuration (``PRESETS["demo"]``) trained on phantoms with
``tsf-trt train`` on a 2-core CPU; see ``demo/MODEL_CARD.md`` for data, command, steps and
measured quality. It is every command's default ``--model``: the tool works with no download.
It has never seen a real MRI: use it to try the tool, not to read patients' images.
"""

from __future__ import annotations

from pathlib import Path

from tsf_trt.errors import TsfError

BUNDLED = {"demo": Path(__file__).resolve().parent / "demo"}
DEFAULT = "demo"


def resolve_model(spec: str | Path | None) -> Path:
    """A model or export directory; None or a bundled name ('demo') gives the bundled model."""
    if spec is None or str(spec) in BUNDLED:
        path = BUNDLED[DEFAULT if spec is None else str(spec)]
        if not (path / "config.json").is_file():
            raise TsfError(f"the bundled model is missing from {path} (a broken install?): "
                           "reinstall tsf-trt or pass --model MODEL_DIR")
        return path
    return Path(spec)
