"""matplotlib for a session: backend, rcParams from start()'s parameters, COLORS.

matplotlib is imported only when the script uses it: the rcParams are applied from an import
hook, and the ``plt`` handed to a script that has not imported pyplot is a proxy that imports
it on first attribute access.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any

from . import _imphook
from ._config import DotDict

# Colour-blind-aware palette, hex so it needs no matplotlib.
_PALETTE = {
    "blue": "#0080C0",
    "green": "#14B414",
    "red": "#FF4632",
    "yellow": "#E6A014",
    "purple": "#C832FF",
    "orange": "#E45E32",
    "pink": "#FF96C8",
    "navy": "#000080",
    "brown": "#804000",
    "lightblue": "#14C8C8",
    "grey": "#808080",
    "gray": "#808080",
    "black": "#000000",
    "white": "#FFFFFF",
}

_FONT_SIZES = {
    "xx-small": 6.0, "x-small": 7.0, "small": 8.0, "medium": 10.0,
    "large": 12.0, "x-large": 14.0, "xx-large": 16.0,
}

MM_PER_INCH = 25.4


def make_colors() -> DotDict:
    """COLORS: ``COLORS.blue`` and ``COLORS["blue"]`` are the same hex string."""
    return DotDict(_PALETTE)


def rc_params(
    fig_size_mm: tuple[float, float] = (160, 100),
    fig_scale: float = 1.0,
    dpi_display: int = 100,
    dpi_save: int = 300,
    fontsize: str | float = "small",
    autolayout: bool = False,
    hide_top_right_spines: bool = True,
    alpha: float = 0.9,
    line_width: float = 1.0,
) -> dict[str, Any]:
    """The rcParams a session sets, as plain data (testable without matplotlib)."""
    w_mm, h_mm = fig_size_mm
    size = _FONT_SIZES.get(fontsize, 8.0) if isinstance(fontsize, str) else float(fontsize)
    return {
        "figure.figsize": (w_mm / MM_PER_INCH * fig_scale, h_mm / MM_PER_INCH * fig_scale),
        "figure.dpi": dpi_display,
        "savefig.dpi": dpi_save,
        "font.size": size,
        "figure.autolayout": bool(autolayout),
        "axes.spines.top": not hide_top_right_spines,
        "axes.spines.right": not hide_top_right_spines,
        "lines.linewidth": line_width,
        # matplotlib has no global alpha; the property cycle carries it to lines and patches.
        "_alpha": alpha,
    }


def configure(agg: bool, params: dict[str, Any]) -> None:
    """Apply backend and rcParams now if matplotlib is imported, else when it is."""
    if agg and "matplotlib" not in sys.modules:
        # Honoured by matplotlib's own import: no import here, no backend switch later.
        os.environ["MPLBACKEND"] = "Agg"

    def apply(mpl: ModuleType) -> None:
        if agg:
            mpl.use("Agg", force=True)
        rc = dict(params)
        alpha = rc.pop("_alpha", None)
        colors = [c for k, c in _PALETTE.items() if k not in ("gray", "white", "black")]
        from cycler import cycler

        cyc = cycler(color=colors)
        if alpha is not None:
            cyc = cyc + cycler(alpha=[alpha] * len(colors))
        rc["axes.prop_cycle"] = cyc
        mpl.rcParams.update(rc)

    _imphook.when_imported("matplotlib", apply)


class LazyPyplot:
    """Stands in for ``matplotlib.pyplot`` until the script touches it."""

    def _real(self) -> ModuleType:
        return importlib.import_module("matplotlib.pyplot")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    def __dir__(self) -> list[str]:
        return dir(self._real())

    def __repr__(self) -> str:
        return "<lazy matplotlib.pyplot>"


def session_plt(plt: Any = None) -> Any:
    """The pyplot to hand to the script: the real module if already imported, else a proxy."""
    if isinstance(plt, ModuleType):
        return plt
    mod = sys.modules.get("matplotlib.pyplot")
    return mod if mod is not None else LazyPyplot()


def cleanup() -> None:
    """Close figures (frees memory in long processes) without importing matplotlib."""
    _imphook.cancel("matplotlib")
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        try:
            plt.close("all")
        except Exception:  # noqa: BLE001 - cleanup must not fail a finished run
            pass
