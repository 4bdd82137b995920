"""Seeding: ``random`` always; numpy and torch only if the script imports them (now or
later); and ``rngg``, a per-name source of independent reproducible numpy Generators."""

from __future__ import annotations

import hashlib
import random as _random
import threading
from types import ModuleType
from typing import Any

from . import _imphook

# The session's patched numpy.random.default_rng, restored at close.
_state: dict[str, Any] = {}


def _name_key(name: str) -> int:
    # hash() is salted per process; a digest is the same in every run. The first 32 bits
    # of the name's MD5 (big-endian) are what the published package adds to the seed, so
    # the same (seed, name) gives the same stream there and here.
    return int.from_bytes(hashlib.md5(name.encode("utf-8"), usedforsecurity=False).digest()[:4],
                          "big")


def name_seed(seed: int, name: str) -> int:
    """The 32-bit seed of ``rngg(name)``: ``(seed + md5(name)[:32 bits]) mod 2**32``."""
    return (int(seed) + _name_key(name)) % 2**32


def _seed_numpy(np: ModuleType, seed: int) -> None:
    np.random.seed(seed)
    original = np.random.default_rng
    counter = {"n": 0}
    lock = threading.Lock()

    def default_rng(seed_arg: Any = None) -> Any:
        # An unseeded default_rng() is the one numpy call a global seed does not reach;
        # give the k-th unseeded call of the run the k-th child of the session seed.
        if seed_arg is None:
            with lock:
                k = counter["n"]
                counter["n"] += 1
            seed_arg = np.random.SeedSequence(seed, spawn_key=(k,))
        return original(seed_arg)

    default_rng.__doc__ = original.__doc__
    default_rng.__wrapped__ = original  # type: ignore[attr-defined]
    np.random.default_rng = default_rng
    _state["numpy"] = (np, original)


def _seed_torch(torch: ModuleType, seed: int) -> None:
    torch.manual_seed(seed)  # seeds the CPU and every CUDA device


def seed_all(seed: int) -> list[str]:
    """Seed what is imported; arrange seeding of numpy/torch when they get imported.
    Returns the names seeded right now."""
    _random.seed(seed)
    import sys

    now = ["random"]
    for name, fn in (("numpy", _seed_numpy), ("torch", _seed_torch)):
        if name in sys.modules:
            now.append(name)
        _imphook.when_imported(name, lambda mod, fn=fn: fn(mod, seed))
    return now


def unseed() -> None:
    """Undo the patching done by seed_all (pending import hooks and default_rng)."""
    _imphook.cancel("numpy")
    _imphook.cancel("torch")
    entry = _state.pop("numpy", None)
    if entry is not None:
        np, original = entry
        np.random.default_rng = original


class RandomStateManager:
    """``rngg("name")`` -> a numpy Generator that depends only on (seed, name), and is the
    same stream the published scitex-session gives for that seed and name.

    The same name returns the same Generator object within a run (so a stream continues
    where it left off) and the same draws in every run with the same seed; different names
    give statistically independent streams. numpy is imported on first use only."""

    def __init__(self, seed: int = 42) -> None:
        self.seed = int(seed)
        self._gens: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str = "default") -> Any:
        return self.get_np_generator(name)

    def get_np_generator(self, name: str = "default") -> Any:
        with self._lock:
            gen = self._gens.get(name)
            if gen is None:
                import numpy as np

                # default_rng(int) is PCG64 over SeedSequence(int): matches published runs.
                gen = self._gens[name] = np.random.default_rng(name_seed(self.seed, name))
            return gen

    get_generator = get_np_generator

    def get_torch_generator(self, name: str = "default") -> Any:
        import torch

        g = torch.Generator()
        g.manual_seed(name_seed(self.seed, name))
        return g

    def clear_cache(self) -> None:
        with self._lock:
            self._gens.clear()

    def __repr__(self) -> str:
        return f"RandomStateManager(seed={self.seed}, names={sorted(self._gens)})"
