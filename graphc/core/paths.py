"""Where graphc keeps what it builds: one cache folder, found the same way by every layer."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$GRAPHC_CACHE_DIR, else $XDG_CACHE_HOME/graphc, else ~/.cache/graphc."""
    if os.environ.get("GRAPHC_CACHE_DIR"):
        return Path(os.environ["GRAPHC_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "graphc"
    return Path.home() / ".cache" / "graphc"
