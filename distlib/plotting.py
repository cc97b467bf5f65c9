"""matplotlib, imported on first use: the one optional dependency (the ``plot`` extra).

Training never draws; the figures of ``distlib-compare`` and ``distlib-topology --plot`` do.
The non-interactive Agg backend renders them on machines without a display.
"""
from __future__ import annotations

from typing import Any

from distlib.errors import ConfigError


def pyplot(what: str, instead: str = "") -> Any:
    """``matplotlib.pyplot``, or a one-line ConfigError saying that ``what`` needs matplotlib."""
    try:
        import matplotlib
    except ImportError:
        # Not "pip install distlib[plot]": on PyPI that name is another project (see README).
        raise ConfigError(f"{what} needs matplotlib, an optional dependency: pip install 'matplotlib>=3.7' "
                          f"(or install this project with its [plot] extra){instead}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def line_collection(segments: Any, **style: Any) -> Any:
    """``matplotlib.collections.LineCollection(segments, **style)``: many line segments drawn as
    one artist (after :func:`pyplot` has checked that matplotlib is there)."""
    from matplotlib.collections import LineCollection
    return LineCollection(segments, **style)
