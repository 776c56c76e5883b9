"""Files on disk: listing image files and checking that they are usable images.

Example:
    >>> from pathlib import Path
    >>> is_image_file(Path("0002_c3s1_000451_01.jpg")), is_image_file(Path("._0002_c3s1_000451_01.jpg"))
    (True, False)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
Verify = Literal["none", "header", "full"]
VERIFY_LEVELS: tuple[str, ...] = ("none", "header", "full")
# How far from the end a JPEG's end-of-image marker may sit: some encoders pad the file after it.
_TAIL_BYTES = 64


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has an image extension and is not hidden (``.DS_Store``, ``._x.jpg`` from macOS copies)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_image_files(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` in a stable (sorted) order; other files (``Thumbs.db``, lists) are ignored."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(path for path in candidates if path.is_file() and is_image_file(path))


def check_image_file(path: Path, verify: Verify = "header") -> str | None:
    """The image mode of ``path`` (``"RGB"``, ``"L"``, ``"RGBA"`` ...), or ``None`` when ``verify="none"``.

    ``"header"`` opens the header and checks that a JPEG / PNG still ends with its end marker, which catches
    non-images and truncated copies without decoding; ``"full"`` decodes the whole image.
    Raises ``ValueError`` with the reason when the file is not a usable image.
    """
    if verify == "none":
        return None
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}, got {verify!r}")
    with image_errors(), Image.open(path) as image:
        if image.width < 1 or image.height < 1:
            raise ValueError(f"empty image ({image.width}x{image.height})")
        if verify == "full":
            image.load()
        elif image.format in ("JPEG", "PNG"):
            _check_end_marker(path, image.format)
        return image.mode


@contextlib.contextmanager
def image_errors() -> Iterator[None]:
    """Re-raise PIL's errors about a bad image file as ``ValueError`` with a short reason (no PIL traceback).

    Example:
        >>> with image_errors():
        ...     Image.open(__file__)  # this Python file
        Traceback (most recent call last):
        ValueError: not an image
    """
    try:
        yield
    except FileNotFoundError:
        raise ValueError("missing file") from None
    except UnidentifiedImageError:
        raise ValueError("not an image") from None
    except OSError as err:  # PIL reports truncated and corrupt data as OSError
        raise ValueError(f"unreadable image ({err})") from None


def _check_end_marker(path: Path, image_format: str) -> None:
    marker = b"\xff\xd9" if image_format == "JPEG" else b"IEND"
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        if marker not in handle.read():
            raise ValueError(f"truncated {image_format} (no end marker)")
