"""Where modnet-batch keeps what it fetches and derives: the model, its built variants and the
torch engine's conversions. One directory, `$MODNET_BATCH_CACHE`, else the user's cache dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "MODNET_BATCH_CACHE"


def cache_dir() -> Path:
    """The model cache: $MODNET_BATCH_CACHE, else the user's cache dir."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(platformdirs.user_cache_dir("modnet-batch"))
