"""The MOTChallenge sequence layout: ``seqinfo.ini``, ``img1/000001.jpg``..., ``gt/gt.txt``, ``det/det.txt``.

Box files are comma-separated rows ``frame, id, left, top, width, height, score, ...`` with 1-based frames:

* ``gt/gt.txt``: ``frame, id, left, top, width, height, consider (1/0), class (1 = pedestrian), visibility``;
* ``det/det.txt`` (detections) and tracker results: ``frame, id (-1 for detections), left, top, width, height,
  score, -1, -1, -1``.

Reading needs nothing beyond numpy, so sequences can be made and inspected without the tracking extra.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp()) / "SEQ-01"
    >>> info = SequenceInfo("SEQ-01", frames=2, width=64, height=48, frame_rate=25)
    >>> write_sequence_info(root, info) == root / "seqinfo.ini"
    True
    >>> read_sequence_info(root)
    SequenceInfo(name='SEQ-01', frames=2, width=64, height=48, frame_rate=25, image_dir='img1', image_ext='.jpg')
    >>> rows = np.array([[1, 3, 10, 5, 8, 20, 1, 1, 0.75]])
    >>> _ = write_boxes(root / "gt" / "gt.txt", rows)
    >>> read_boxes(root / "gt" / "gt.txt")[:, :6].tolist()
    [[1.0, 3.0, 10.0, 5.0, 8.0, 20.0]]
"""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_file

SEQUENCE_SECTION = "Sequence"
GT_FILE, DETECTIONS_FILE = Path("gt") / "gt.txt", Path("det") / "det.txt"


@dataclass(frozen=True)
class SequenceInfo:
    """What ``seqinfo.ini`` says of a sequence."""

    name: str
    frames: int
    width: int
    height: int
    frame_rate: int
    image_dir: str = "img1"
    image_ext: str = ".jpg"

    def frame_path(self, root: str | Path, frame: int) -> Path:
        """The image of 1-based ``frame`` (MOTChallenge names frames with six digits)."""
        return Path(root) / self.image_dir / f"{frame:06d}{self.image_ext}"


_INI_KEYS = {
    "name": "name", "frames": "seqLength", "width": "imWidth", "height": "imHeight", "frame_rate": "frameRate",
    "image_dir": "imDir", "image_ext": "imExt",
}


def write_sequence_info(root: str | Path, info: SequenceInfo) -> Path:
    """Write ``root/seqinfo.ini`` (atomically)."""
    lines = [f"[{SEQUENCE_SECTION}]"] + [f"{key}={getattr(info, field)}" for field, key in _INI_KEYS.items()]
    path = Path(root) / "seqinfo.ini"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as temporary:
        temporary.write_text("\n".join(lines) + "\n")
    return path


def read_sequence_info(root: str | Path) -> SequenceInfo:
    """Read ``root/seqinfo.ini``; raises naming the file and the key when it is missing or malformed."""
    path = Path(root) / "seqinfo.ini"
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a MOTChallenge sequence: no {path}")
    parser = configparser.ConfigParser()
    parser.optionxform = str  # MOTChallenge keys are camelCase
    try:
        parser.read(path)
    except configparser.Error as err:
        raise ValueError(f"{path} cannot be parsed: {err}") from None
    if not parser.has_section(SEQUENCE_SECTION):
        raise ValueError(f"{path} has no [{SEQUENCE_SECTION}] section")
    section = parser[SEQUENCE_SECTION]
    values: dict[str, object] = {}
    for field, key in _INI_KEYS.items():
        if key not in section:
            if field in ("image_dir", "image_ext"):
                continue
            raise ValueError(f"{path} has no {key}=")
        text = section[key].strip()
        if field in ("frames", "width", "height", "frame_rate"):
            try:
                values[field] = int(float(text))
            except ValueError:
                raise ValueError(f"{path}: {key}={text!r} is not a number") from None
            if values[field] <= 0:
                raise ValueError(f"{path}: {key}={text!r} must be positive")
        else:
            values[field] = text
    return SequenceInfo(**values)  # type: ignore[arg-type]


def box_corners(rows: np.ndarray) -> np.ndarray:
    """``x1, y1, x2, y2`` of the ``left, top, width, height`` columns (2-5) of box rows.

    Example:
        >>> box_corners(np.array([[1, 3, 10, 5, 8, 20, 1]])).tolist()
        [[10.0, 5.0, 18.0, 25.0]]
    """
    table = np.asarray(rows, dtype=np.float64)
    return np.concatenate([table[:, 2:4], table[:, 2:4] + table[:, 4:6]], axis=1)


def _number(value: float) -> str:
    """Up to 3 decimals without trailing zeros (``12``, ``0.5``, ``-1``)."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def write_boxes(path: str | Path, rows: np.ndarray) -> Path:
    """Write box rows (frame and id as integers, the rest with up to 3 decimals) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = np.asarray(rows, dtype=np.float64)
    lines = []
    for row in table if table.size else []:
        fields = [f"{int(row[0])}", f"{int(row[1])}"] + [_number(value) for value in row[2:]]
        lines.append(",".join(fields))
    with atomic_file(path) as temporary:
        temporary.write_text("".join(line + "\n" for line in lines))
    return path


def read_boxes(path: str | Path, *, min_columns: int = 7) -> np.ndarray:
    """Rows of a MOTChallenge box file as float64 ``(N, C)``, sorted by frame; an empty file gives ``(0, C)``.

    Raises naming the file and line when a row has fewer than ``min_columns`` numbers or a frame below 1.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no box file {path}")
    rows: list[list[float]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(value) for value in line.replace(" ", "").split(",") if value != ""]
        except ValueError:
            raise ValueError(f"{path}, line {number}: {line.strip()!r} is not comma-separated numbers") from None
        if len(values) < min_columns:
            raise ValueError(f"{path}, line {number}: {len(values)} values, expected at least {min_columns}")
        if values[0] < 1 or values[0] != int(values[0]):
            raise ValueError(f"{path}, line {number}: frame {values[0]:g} is not a 1-based frame number")
        rows.append(values)
    if not rows:
        return np.zeros((0, min_columns))
    width = min(len(row) for row in rows)
    table = np.array([row[:width] for row in rows])
    return table[np.argsort(table[:, 0], kind="stable")]
