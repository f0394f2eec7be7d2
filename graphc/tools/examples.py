"""Where the demos find examples/*.toml: beside the package in a checkout, else in the current
folder (the README's quickstart runs an installed wheel from the checkout)."""
from __future__ import annotations

from pathlib import Path


def example_path(name: str) -> Path | None:
    """examples/NAME beside the package, else in the current folder, else None."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        path = root / "examples" / name
        if path.is_file():
            return path
    return None
