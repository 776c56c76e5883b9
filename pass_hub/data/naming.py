"""How the ReID benchmarks encode identity and camera in their image file names.

One :class:`FileNameConvention` per benchmark parses a name into ``(pid, camid)`` and formats one back, so the
SynthPerson writers, the loaders and the tests share a single definition of each convention. Cameras are
numbered from 1 in file names and returned **0-based** (``camid = camera - 1``), the convention of every
pass-hub dataset.

Example:
    >>> MARKET1501.parse("0002_c3s1_000451_01.jpg")
    (2, 2)
    >>> MARKET1501.format(pid=2, camid=2, sequence=1, frame=451, box=1)
    '0002_c3s1_000451_01.jpg'
    >>> MSMT17.parse("0000_000_01_0303morning_0008_0.jpg")
    (0, 0)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_EXTENSION = r"\.(?:jpe?g|png|bmp|webp)"


@dataclass(frozen=True)
class FileNameConvention:
    """A benchmark's file-name convention: a regex with ``pid`` and ``camera`` groups and a format template."""

    dataset: str
    pattern: re.Pattern[str]
    template: str
    example: str

    def parse(self, file_name: str) -> tuple[int, int]:
        """``(pid, camid)`` of ``file_name``; ``camid`` is 0-based. Raises ``ValueError`` naming the file."""
        match = self.pattern.fullmatch(file_name)
        if match is None:
            raise ValueError(f"{file_name!r} does not follow the {self.dataset} naming (e.g. {self.example})")
        camera = int(match["camera"])
        if camera < 1:
            raise ValueError(f"{file_name!r}: camera numbers start at 1 in {self.dataset} names, got {camera}")
        return int(match["pid"]), camera - 1

    def format(self, pid: int, camid: int, **fields: object) -> str:
        """The file name of an image of ``pid`` seen by camera ``camid`` (0-based); ``fields`` fill the rest."""
        return self.template.format(pid=pid, camera=camid + 1, **fields)


# 0002_c3s1_000451_01.jpg: pid, camera 1..6, video sequence, frame, box index; pid -1 is junk, 0000 a distractor.
MARKET1501 = FileNameConvention(
    dataset="market1501",
    pattern=re.compile(rf"(?P<pid>-1|\d+)_c(?P<camera>\d+)s\d+_\d+_\d+{_EXTENSION}", re.IGNORECASE),
    template="{pid:04d}_c{camera}s{sequence}_{frame:06d}_{box:02d}.jpg",
    example="0002_c3s1_000451_01.jpg",
)
# 0001_c2_f0046182.jpg: pid, camera 1..8, frame.
DUKEMTMC = FileNameConvention(
    dataset="dukemtmc",
    pattern=re.compile(rf"(?P<pid>\d+)_c(?P<camera>\d+)_f\d+{_EXTENSION}", re.IGNORECASE),
    template="{pid:04d}_c{camera}_f{frame:07d}.jpg",
    example="0001_c2_f0046182.jpg",
)
# 0001_c1_1.png: pid, camera 1..2 (the two views of a CUHK03 camera pair), index.
CUHK03NP = FileNameConvention(
    dataset="cuhk03np",
    pattern=re.compile(rf"(?P<pid>\d+)_c(?P<camera>\d+)_\d+{_EXTENSION}", re.IGNORECASE),
    template="{pid:04d}_c{camera}_{index}.png",
    example="0001_c1_1.png",
)
# 0000_000_01_0303morning_0008_0.jpg: pid, running index, camera 1..15, date + time of day, frame, box.
MSMT17 = FileNameConvention(
    dataset="msmt17",
    pattern=re.compile(rf"(?P<pid>\d+)_\d+_(?P<camera>\d+)_[0-9a-z]+_\d+_\d+{_EXTENSION}", re.IGNORECASE),
    template="{pid:04d}_{index:03d}_{camera:02d}_{time}_{frame:04d}_{box}.jpg",
    example="0000_000_01_0303morning_0008_0.jpg",
)
# A camera token in a user's own file names ("cam3", "_c3_", "c3s1"), for the custom layout.
CAMERA_TOKEN = re.compile(r"(?:^|[_\-.])c(?:am)?(?P<camera>\d+)(?=s\d|[_\-.])", re.IGNORECASE)


def camera_from_name(file_name: str) -> int:
    """0-based camera of a file name carrying a ``c<N>`` / ``cam<N>`` token, else -1 (unknown)."""
    match = CAMERA_TOKEN.search(file_name)
    return int(match["camera"]) - 1 if match and int(match["camera"]) >= 1 else -1
