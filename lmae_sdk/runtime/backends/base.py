"""One interface for every runtime: numpy in, numpy out, one object per engine (mask ratio)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


class BackendError(RuntimeError):
    """A backend cannot be built here (missing package, no GPU, wrong bundle)."""


class Backend(ABC):
    """Runs one engine: ``encode(feed) -> latent`` and ``decode(feed) -> logits``.

    ``feed`` maps graph input names to numpy arrays; a backend takes exactly the names in
    ``input_names[part]`` (the manifest's ``inputs``) and ignores the rest.
    """

    name: str = "backend"
    # a batch runs in calls of this many images (0: the whole batch in one call)
    images_per_call: int = 0

    def __init__(self, mask_ratio: float, num_visible: int, input_names: dict[str, list[str]]) -> None:
        self.mask_ratio = float(mask_ratio)
        self.num_visible = int(num_visible)
        self.input_names = {k: list(v) for k, v in input_names.items()}

    @property
    @abstractmethod
    def providers(self) -> list[str]:
        """What actually runs the graph (ORT execution providers, torch device, ...)."""

    @abstractmethod
    def encode(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    @abstractmethod
    def decode(self, feed: dict[str, np.ndarray]) -> np.ndarray: ...

    def run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Encoder then decoder; ``feed`` holds every input either graph may need."""
        if feed["ids_keep"].shape[1] != self.num_visible:
            raise ValueError(f"engine m={self.mask_ratio} takes K={self.num_visible} visible patches, "
                             f"got {feed['ids_keep'].shape[1]}")
        latent = self.encode(feed)
        return self.decode({**feed, "latent": latent})

    def run_images(self, feed: dict[str, Any]) -> list[np.ndarray]:
        """``run`` for a batch whose image-sized inputs may come as lists of per-image arrays
        (the completer's, unstacked); returns the logits per image.  This default stacks
        them; a runtime that calls its graphs a few images at a time stacks only those."""
        return list(self.run({k: np.stack(v) if isinstance(v, list) else v for k, v in feed.items()}))

    def select(self, part: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.input_names[part]
        missing = [n for n in names if feed.get(n) is None]
        if missing:
            raise ValueError(f"{self.name} {part}: missing inputs {missing}")
        return {n: feed[n] for n in names}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(m={self.mask_ratio}, K={self.num_visible}, providers={self.providers})"


@dataclass
class Engine:
    """One engine of a completer: its mask ratio, K visible and L - K masked patches, and the
    backend that runs it."""

    mask_ratio: float
    num_visible: int
    num_masked: int
    backend: Backend
