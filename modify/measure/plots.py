"""matplotlib behind one door: the plots of `modify compare` and `modify routes` (the
``[compare]`` extra), drawn off-screen and written atomically as PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from modify.errors import ModifyError

__all__ = ["pyplot", "save_png"]


def pyplot(what: str) -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or one line naming the extra ``what`` needs."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModifyError(f"{what} needs matplotlib: pip install 'modify[compare]'") from None
    return plt


def save_png(fig: Any, path: str | os.PathLike[str], *, dpi: int) -> Path:
    """Writes ``fig`` to ``path`` as PNG (replacing it, atomically) and closes it."""
    from modify.io.files import atomic_write

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), force=True)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
