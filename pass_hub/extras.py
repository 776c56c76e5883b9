"""Optional parts of pass-hub and the extras that install them (``pip install "pass-hub[onnx]"``, ``[tracking]``).

Example:
    >>> require_extra("onnx", ["onnxruntime"], "running an ONNX file")
    >>> require_extra("tracking", ["no_such_module_here"], "tracking")
    Traceback (most recent call last):
    ...
    ImportError: tracking needs no_such_module_here, from pass-hub's tracking extra: pip install 'pass-hub[tracking]'
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence


def require_extra(extra: str, modules: Sequence[str], purpose: str) -> None:
    """Raise ``ImportError`` naming the missing modules and the extra that installs them."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"{purpose} needs {', '.join(missing)}, from pass-hub's {extra} extra: pip install 'pass-hub[{extra}]'"
        )
