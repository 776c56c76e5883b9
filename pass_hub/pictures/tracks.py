"""Pictures of tracks: frames with each box drawn in its track's colour and labelled with its id
(:func:`draw_tracks`), a sheet of frames (:func:`draw_track_sheet`) and a short video (:func:`write_track_video`).
Works for ground truth too (its ids are the people's).

Example:
    >>> from PIL import Image
    >>> rows = np.array([[1, 4, 10, 10, 20, 50, 1, -1, -1, -1]])
    >>> draw_tracks(Image.new("RGB", (80, 80)), rows).size
    (80, 80)
"""

from __future__ import annotations

import colorsys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_file
from ..data.motchallenge import SequenceInfo, read_sequence_info
from .visualize import BACKGROUND, CAPTION_SIZE, TEXT_COLOR

VIDEO_SUFFIXES = (".gif", ".mp4", ".avi")


def track_color(track_id: int) -> tuple[int, int, int]:
    """A bright colour per id, far from its neighbours' (golden-ratio hues)."""
    hue = (track_id * 0.618033988749895) % 1.0
    red, green, blue = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return round(255 * red), round(255 * green), round(255 * blue)


def draw_tracks(image: Image.Image, rows: np.ndarray, *, caption: str | None = None) -> Image.Image:
    """A copy of ``image`` with the boxes of MOTChallenge ``rows`` (``frame, id, left, top, width, height, ...``)
    drawn in their id's colour, the id above each box, and ``caption`` in the top-left corner."""
    picture = image.convert("RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=CAPTION_SIZE)
    for _, track_id, left, top, width, height, *_ in np.asarray(rows, dtype=np.float64):
        color = track_color(int(track_id))
        draw.rectangle([left, top, left + width, top + height], outline=color, width=2)
        label = str(int(track_id))
        text_box = draw.textbbox((left, top - CAPTION_SIZE - 3), label, font=font)
        draw.rectangle([text_box[0] - 2, text_box[1] - 1, text_box[2] + 2, text_box[3] + 1], fill=color)
        draw.text((left, top - CAPTION_SIZE - 3), label, fill=TEXT_COLOR, font=font)
    if caption:
        box = draw.textbbox((6, 6), caption, font=font)
        draw.rectangle([box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3], fill=BACKGROUND)
        draw.text((6, 6), caption, fill=TEXT_COLOR, font=font)
    return picture


def spread_frames(frames: int, count: int = 6) -> list[int]:
    """``count`` frame numbers spread evenly over 1..``frames`` (first and last included).

    Example:
        >>> spread_frames(450), spread_frames(3)
        ([1, 91, 181, 270, 360, 450], [1, 2, 3])
    """
    return sorted({int(frame) for frame in np.linspace(1, frames, count).round()})


def _frames_with_tracks(
    sequence: str | Path, tracks: np.ndarray, frames: Sequence[int], title: str, size: tuple[int, int]
) -> Iterator[Image.Image]:
    """Each of ``frames`` with its tracks drawn, resized to ``size``, one at a time (a long video stays small)."""
    info = read_sequence_info(sequence)
    tracks = np.asarray(tracks, dtype=np.float64)
    for frame in frames:
        if not 1 <= frame <= info.frames:
            raise ValueError(f"frame {frame} is not in {info.name} (frames 1..{info.frames})")
        path = info.frame_path(sequence, frame)
        if not path.is_file():
            raise FileNotFoundError(f"frame {frame} of {info.name} is missing: {path}")
        with Image.open(path) as image:
            picture = draw_tracks(image, tracks[tracks[:, 0] == frame], caption=f"{title} frame {frame}")
        yield picture.resize(size, Image.Resampling.LANCZOS)


def _scaled_size(info: SequenceInfo, scale: float) -> tuple[int, int]:
    return round(info.width * scale) // 2 * 2, round(info.height * scale) // 2 * 2  # codecs want even sizes


def draw_track_sheet(
    sequence: str | Path,
    tracks: np.ndarray,
    path: str | Path,
    *,
    frames: Sequence[int] | None = None,
    columns: int = 2,
    title: str = "",
    scale: float = 1.0,
) -> Path:
    """Save a PNG of ``frames`` (default: six spread over the sequence) of a MOTChallenge sequence with ``tracks``
    drawn on them, ``columns`` per row, each scaled by ``scale``."""
    info = read_sequence_info(sequence)
    frames = list(frames) if frames else spread_frames(info.frames)
    size = _scaled_size(info, scale)
    rows = (len(frames) + columns - 1) // columns
    gap = 4
    sheet = Image.new("RGB", (columns * size[0] + (columns - 1) * gap, rows * size[1] + (rows - 1) * gap), BACKGROUND)
    for index, picture in enumerate(_frames_with_tracks(sequence, tracks, frames, title, size)):
        sheet.paste(picture, ((index % columns) * (size[0] + gap), (index // columns) * (size[1] + gap)))
    with atomic_file(path) as temporary:
        sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(temporary, format="PNG", optimize=True)
    return Path(path)


def write_track_video(
    sequence: str | Path,
    tracks: np.ndarray,
    path: str | Path,
    *,
    frames: Sequence[int] | None = None,
    title: str = "",
    scale: float = 1.0,
) -> Path:
    """Save the sequence's ``frames`` (default: all) with ``tracks`` drawn as a video: ``.gif`` (Pillow) or
    ``.mp4`` / ``.avi`` (OpenCV, installed with the tracking extra), at the sequence's frame rate."""
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise ValueError(f"video file {path} must end with {', '.join(VIDEO_SUFFIXES)}")
    info = read_sequence_info(sequence)
    size = _scaled_size(info, scale)
    pictures = _frames_with_tracks(sequence, tracks, list(frames or range(1, info.frames + 1)), title, size)
    with atomic_file(path) as temporary:
        if path.suffix == ".gif":
            first = next(pictures)
            first.save(temporary, format="GIF", save_all=True, append_images=pictures, loop=0,
                       duration=round(1000 / info.frame_rate), optimize=True)
        else:
            import cv2

            codec = "mp4v" if path.suffix == ".mp4" else "MJPG"
            writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*codec), info.frame_rate, size)
            if not writer.isOpened():
                raise ValueError(f"OpenCV cannot write {path.suffix} videos here (codec {codec}); try a .gif")
            for picture in pictures:
                writer.write(np.asarray(picture)[..., ::-1].copy())  # OpenCV takes BGR
            writer.release()
    return path
