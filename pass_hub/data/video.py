"""A SynthPerson video with known identities, for tracking: people walk across one camera's scene, cross each
other, pass behind a pillar, a lamp post and a hedge, leave and come back, in MOTChallenge layout.

Each identity walks across the scene ``passes`` times (every pass after the first is a re-entry, from either
side, after a pause off-screen), along a depth line that drifts a little, at a walking pace scaled by
perspective. People are drawn far to near, so nearer people hide farther ones. Identities come in families of
look-alikes that differ in one part only (as in :mod:`.synth`), so re-identifying someone takes more than colour.

The ground truth is exact: a person's box is the extent of their drawn pixels inside the frame, and visibility is
the share of their pixels that nobody and nothing hides and that lie inside the frame (MOTChallenge's
``visibility`` column: someone half out of the frame is at most half visible). ``det/det.txt``
holds what a decent detector would return: the boxes of people at least ``min_visibility`` visible, jittered,
some missed, scored lower when occluded (:func:`detections_from_ground_truth`).

Everything is a pure function of :class:`SynthVideoConfig`.

Example:
    >>> import tempfile
    >>> config = SynthVideoConfig(frames=4, people=2, width=320, height=180)
    >>> root = write_mot_sequence(Path(tempfile.mkdtemp()) / "seq", config, progress=False)
    >>> sorted(p.name for p in root.iterdir())
    ['det', 'gt', 'img1', 'seqinfo.ini']
    >>> from pass_hub.data.motchallenge import read_sequence_info
    >>> read_sequence_info(root).frames
    4
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from tqdm.auto import tqdm

from ..atomic import atomic_directory
from .appearance import Appearance, Viewpoint, draw_person, sample_family
from .cameras import Camera, apply_camera, render_background, sample_camera
from .motchallenge import DETECTIONS_FILE, GT_FILE, SequenceInfo, box_corners, write_boxes, write_sequence_info
from .options import CommandLineOptions, option

# Stream ids keep identities, walks, frames and detections independent random draws.
_IDENTITY_STREAM, _WALK_STREAM, _FRAME_STREAM, _DETECTION_STREAM = 0x71DE, 0x3A1C, 0xF4A3E, 0xDE7
HORIZON = 0.4  # fraction of the frame height where the ground starts; people's feet are below it
NEAREST_FEET, FARTHEST_FEET = 0.97, 0.6  # feet rows (fractions of the height) of the nearest / farthest walkers
PERSON_SCALE = 0.95  # a person standing with feet at row y is PERSON_SCALE * (y - horizon) tall, times their height
MIN_VISIBILITY = 0.25  # a detector finds people at least this visible
WALKING_SPEED = (0.022, 0.032)  # body heights per frame at 30 fps (about 1.1-1.6 m/s for 1.7 m)


@dataclass(frozen=True)
class SynthVideoConfig(CommandLineOptions):
    """Length, size, crowd and seed of a SynthPerson video.

    The defaults: 450 frames of 640x360 at 30 fps (15 s), 10 identities (5 look-alike pairs) who each cross the
    scene twice, about 6 people in view at a time; it renders in about half a minute on one core.

    Example:
        >>> SynthVideoConfig.from_options({"frames": "100", "people": "4"}).frames
        100
    """

    OPTIONS_NAME = "video"

    seed: int = option(0, "seed of identities and walks")
    frames: int = option(450, "frames of the video")
    people: int = option(10, "identities walking through the scene")
    passes: int = option(2, "times each identity crosses the scene (the second and later ones are re-entries)")
    family_size: int = option(2, "identities per family of look-alikes that differ in one part")
    width: int = option(640, "frame width in pixels")
    height: int = option(360, "frame height in pixels")
    frame_rate: int = option(30, "frames per second")
    domain: int = option(0, "camera network the scene is drawn from (as for the ReID images)")
    camera: int = option(0, "camera of that network whose scene and sensor are used")
    min_visibility: float = option(MIN_VISIBILITY, "det/det.txt: people less visible than this are not detected")
    box_noise: float = option(0.04, "det/det.txt: standard deviation of the box edges, as a share of the box size")
    drop: float = option(0.05, "det/det.txt: share of visible people the detector misses")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = float if isinstance(f.default, float) else int
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise ValueError(f"SynthVideoConfig.{f.name} must be a{'n integer' if kind is int else ' number'}, "
                                 f"got {value!r}")
        checks = [
            (self.frames >= 1, "frames must be >= 1"),
            (self.people >= 1 and self.passes >= 1 and self.family_size >= 1, "people, passes, family_size >= 1"),
            (self.width >= 64 and self.height >= 64, "width and height must be >= 64"),
            (self.frame_rate >= 1, "frame_rate must be >= 1"),
            (self.seed >= 0 and self.domain >= 0 and self.camera >= 0, "seed, domain and camera must be >= 0"),
            (0 <= self.min_visibility <= 1 and 0 <= self.drop < 1, "min_visibility in [0, 1], drop in [0, 1)"),
            (self.box_noise >= 0, "box_noise must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid SynthVideoConfig: {message} ({self})")

    @property
    def name(self) -> str:
        """The sequence name (``seqinfo.ini``, tracker result files)."""
        return f"SYNTHPERSON-{self.seed:02d}"


@dataclass(frozen=True)
class Walk:
    """One pass of one identity across the scene: where its feet are at each frame, and which way it faces."""

    pid: int
    person: Appearance
    start: int  # first frame index (0-based; negative: already walking when the video starts)
    end: int  # last frame index, inclusive
    foot_x: float  # feet position at ``start``
    foot_y: float
    speed_x: float  # pixels per frame (negative: walking left)
    speed_y: float

    def feet(self, frame: int) -> tuple[float, float]:
        return self.foot_x + self.speed_x * (frame - self.start), self.foot_y + self.speed_y * (frame - self.start)


def person_height(config: SynthVideoConfig, person: Appearance, foot_y: float) -> float:
    """Pixel height of ``person`` standing with feet at row ``foot_y`` (perspective of a camera above the ground)."""
    return PERSON_SCALE * (foot_y - HORIZON * config.height) * person.height


def plan_walks(config: SynthVideoConfig) -> list[Walk]:
    """Every walk of the video (cheap; the frames are rendered from it). Ordered by identity, then pass."""
    people: list[Appearance] = []
    family = 0
    while len(people) < config.people:
        people += sample_family(np.random.default_rng([_IDENTITY_STREAM, config.seed, family]), config.family_size)
        family += 1
    walks = []
    width, height = config.width, config.height
    for index, person in enumerate(people[: config.people]):
        rng = np.random.default_rng([_WALK_STREAM, config.seed, index])
        # First walks start over the first quarter of the video, or began before it (the person is in view at frame 0,
        # part of the way across): a video of any length opens with people in it.
        start_share = rng.uniform(-0.9, 0.25)
        rightwards = bool(rng.random() < 0.5)
        for walk_number in range(config.passes):
            foot_y = rng.uniform(FARTHEST_FEET, NEAREST_FEET) * height
            tall = person_height(config, person, foot_y)
            speed = rng.uniform(*WALKING_SPEED) * tall * 30 / config.frame_rate
            drift = rng.uniform(-0.08, 0.08) * speed  # walking slightly towards or away from the camera
            margin = 0.5 * tall  # start and stop fully outside the frame
            distance = width + 2 * margin
            duration = int(np.ceil(distance / speed))
            if walk_number == 0:
                start = int(start_share * (duration if start_share < 0 else config.frames))
            foot_x = -margin if rightwards else width + margin
            walks.append(Walk(index + 1, person, start, start + duration, foot_x, foot_y,
                              speed if rightwards else -speed, drift))
            # Off-screen for a while, then back: from where it left (turning round) or from the other side.
            start += duration + int(rng.uniform(0.5, 3.0) * config.frame_rate)
            rightwards = rightwards if rng.random() < 0.5 else not rightwards
    return walks


def scene_camera(config: SynthVideoConfig) -> Camera:
    """The camera of ``config`` with its horizon where the video's ground starts."""
    return dataclasses.replace(sample_camera(config.domain, config.camera), horizon=HORIZON)


def _occluders(config: SynthVideoConfig, camera: Camera) -> Image.Image:
    """The static things in front of every walker (pillar, lamp post, hedge) as an RGBA layer."""
    width, height = config.width, config.height
    layer = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    pillar = (*(int(c * 0.8) for c in camera.wall), 255)
    draw.rectangle([0.46 * width, 0, 0.52 * width, height], fill=pillar)
    draw.rectangle([0.205 * width, 0.15 * height, 0.215 * width, height], fill=(45, 45, 50, 255))
    draw.rectangle([0.19 * width, 0.13 * height, 0.23 * width, 0.16 * height], fill=(45, 45, 50, 255))
    hedge = (50, 100, 45, 255)
    draw.rounded_rectangle([0.72 * width, 0.8 * height, 0.92 * width, height + 20], radius=10, fill=hedge)
    return layer


def _sprite(config: SynthVideoConfig, walk: Walk, frame: int) -> tuple[Image.Image, int, int]:
    """The walker drawn alone on a transparent patch, and the patch's top-left corner in the frame."""
    foot_x, foot_y = walk.feet(frame)
    tall = person_height(config, walk.person, foot_y)
    patch_width, patch_height = int(np.ceil(0.9 * tall)) + 4, int(np.ceil(tall)) + 4
    sprite = Image.new("RGBA", (patch_width, patch_height), (0, 0, 0, 0))
    walked = abs(foot_x - walk.foot_x) / max(tall, 1.0)
    stride = abs(np.sin(np.pi * walked / 0.45))  # one step every 0.45 body heights
    # Walking right the camera sees the person's left side; the figure is drawn facing right, mirrored otherwise.
    rightwards = walk.speed_x > 0
    viewpoint = Viewpoint.LEFT if rightwards else Viewpoint.RIGHT
    draw_person(sprite, walk.person, viewpoint, center_x=patch_width / 2, top=2, height=tall, stride=float(stride))
    if not rightwards:
        sprite = ImageOps.mirror(sprite)
    return sprite, round(foot_x - patch_width / 2), round(foot_y - tall - 2)


def render_frames(config: SynthVideoConfig, *, progress: bool = True) -> Iterator[tuple[bytes, np.ndarray]]:
    """Yield each frame's JPEG bytes and its ground-truth rows ``(frame, id, left, top, w, h, 1, 1, visibility)``."""
    walks = plan_walks(config)
    camera = scene_camera(config)
    size = (config.height, config.width)
    background = Image.fromarray(render_background(camera, np.random.default_rng([_FRAME_STREAM, config.seed]), size))
    occluders = _occluders(config, camera)
    occluded = np.asarray(occluders)[..., 3] > 0
    for frame in tqdm(range(config.frames), desc="rendering", unit="frame", disable=None if progress else True):
        in_view = sorted((walk for walk in walks if walk.start <= frame <= walk.end), key=lambda w: w.feet(frame)[1])
        canvas = background.copy()
        owner = np.full(size, -1, dtype=np.int32)  # which walker each pixel shows
        drawn = []
        for number, walk in enumerate(in_view):  # far to near: nearer people are drawn over farther ones
            sprite, left, top = _sprite(config, walk, frame)
            canvas.paste(sprite, (left, top), sprite)
            mask = np.asarray(sprite)[..., 3] > 0
            ys, xs = np.nonzero(mask)
            ys, xs = ys + top, xs + left
            inside = (xs >= 0) & (xs < config.width) & (ys >= 0) & (ys < config.height)
            owner[ys[inside], xs[inside]] = number
            drawn.append((walk, mask.sum(), xs[inside], ys[inside]))
        canvas.paste(occluders, (0, 0), occluders)
        owner[occluded] = -1
        rows = []
        for number, (walk, pixels, xs, ys) in enumerate(drawn):
            if len(xs) == 0:
                continue
            left, top, right, bottom = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            visibility = float((owner[ys, xs] == number).sum()) / float(pixels)
            rows.append([frame + 1, walk.pid, left, top, right - left, bottom - top, 1, 1, round(visibility, 3)])
        rng = np.random.default_rng([_FRAME_STREAM, config.seed, frame])
        yield apply_camera(canvas, camera, rng), np.array(rows, dtype=np.float64).reshape(-1, 9)


def detections_from_ground_truth(
    ground_truth: np.ndarray,
    *,
    image_size: tuple[int, int],
    min_visibility: float,
    box_noise: float,
    drop: float,
    seed: int,
) -> np.ndarray:
    """Detections a decent detector would give, made from ground-truth rows: MOTChallenge ``det.txt`` rows.

    Only rows to consider (flag 1) of pedestrians (class 1) can be detected; people less visible than
    ``min_visibility`` are missed, and a share ``drop`` of the others; each box edge moves
    by a normal draw of ``box_noise`` times the box size (then clipped to the image of ``(height, width)``); the
    score falls with occlusion (about 1 for a fully visible person, 0.55 for a half-hidden one).

    Example:
        >>> gt = np.array([[1, 7, 10, 20, 30, 60, 1, 1, 1.0], [1, 8, 50, 20, 30, 60, 1, 1, 0.1]])
        >>> det = detections_from_ground_truth(gt, image_size=(100, 200), min_visibility=0.25, box_noise=0.0,
        ...                                    drop=0.0, seed=0)
        >>> det[:, :6].tolist()
        [[1.0, -1.0, 10.0, 20.0, 30.0, 60.0]]
    """
    height, width = image_size
    rng = np.random.default_rng([_DETECTION_STREAM, seed])
    rows = np.asarray(ground_truth, dtype=np.float64)
    visibility = rows[:, 8] if rows.shape[1] > 8 else np.ones(len(rows))
    # MOTChallenge marks rows not to evaluate with 0 and non-pedestrians (cars, static people ...) with class > 1.
    considered = (rows[:, 6] != 0) & (rows[:, 7] == 1) if rows.shape[1] > 7 else np.ones(len(rows), bool)
    kept = considered & (visibility >= min_visibility) & (rng.random(len(rows)) >= drop)
    rows, visibility = rows[kept], visibility[kept]
    sizes = np.column_stack([rows[:, 4], rows[:, 5], rows[:, 4], rows[:, 5]])
    corners = box_corners(rows)
    corners = corners + rng.normal(0.0, box_noise, corners.shape) * sizes
    corners[:, [0, 2]] = corners[:, [0, 2]].clip(0, width)
    corners[:, [1, 3]] = corners[:, [1, 3]].clip(0, height)
    valid = (corners[:, 2] - corners[:, 0] >= 2) & (corners[:, 3] - corners[:, 1] >= 2)
    corners, rows, visibility = corners[valid], rows[valid], visibility[valid]
    scores = (0.1 + 0.9 * visibility + rng.normal(0.0, 0.03, len(rows))).clip(0.05, 1.0)
    minus_one = -np.ones(len(rows))
    return np.column_stack([rows[:, 0], minus_one, corners[:, :2], corners[:, 2:] - corners[:, :2], scores,
                            minus_one, minus_one, minus_one]).reshape(-1, 10)


def write_mot_sequence(
    root: str | Path, config: SynthVideoConfig | None = None, *, overwrite: bool = False, progress: bool = True
) -> Path:
    """Render the video into a MOTChallenge sequence folder (``img1/``, ``gt/gt.txt``, ``det/det.txt``,
    ``seqinfo.ini``), atomically.

    Example:
        >>> write_mot_sequence("out/synth-video", SynthVideoConfig(seed=1))  # doctest: +SKIP
        PosixPath('out/synth-video')
    """
    config = config or SynthVideoConfig()
    info = SequenceInfo(config.name, config.frames, config.width, config.height, config.frame_rate)
    with atomic_directory(root, overwrite=overwrite) as staging:
        (staging / info.image_dir).mkdir()
        ground_truth = []
        for frame, (jpeg, rows) in enumerate(render_frames(config, progress=progress), start=1):
            info.frame_path(staging, frame).write_bytes(jpeg)
            ground_truth.append(rows)
        ground_truth = np.concatenate(ground_truth)
        write_boxes(staging / GT_FILE, ground_truth)
        detections = detections_from_ground_truth(
            ground_truth, image_size=(config.height, config.width), min_visibility=config.min_visibility,
            box_noise=config.box_noise, drop=config.drop, seed=config.seed,
        )
        write_boxes(staging / DETECTIONS_FILE, detections)
        write_sequence_info(staging, info)
    return Path(root)


__all__ = [
    "SynthVideoConfig", "Walk", "detections_from_ground_truth", "plan_walks", "render_frames", "write_mot_sequence",
]
