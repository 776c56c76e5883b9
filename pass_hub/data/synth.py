"""SynthPerson: a procedurally generated person ReID benchmark that needs no download.

People are drawn from part attributes (:mod:`.appearance`) and filmed by a network of cameras (:mod:`.cameras`).
Identities come in families whose members differ in one part only, so a global descriptor confuses them and
part-level features pay off. Everything is a pure function of :class:`SynthPersonConfig`: the same config gives
byte-identical JPEGs, in memory or on disk, in any order.

Splits, as in a real benchmark:

* ``train``: ``train_ids`` identities (pids ``1..train_ids``), each seen by 2+ cameras;
* ``query`` / ``gallery``: ``test_ids`` other identities (pids ``train_ids+1..``): ``queries_per_id`` images from
  different cameras are queries, every other image of them is in the gallery, plus ``distractors`` gallery
  images of unrelated people with pid ``0``;
* ``unlabelled``: a pool of other people (pid ``-1``), about 4 images each, for self-supervised pre-training.

Example:
    >>> config = SynthPersonConfig(train_ids=6, test_ids=3, cameras=3, distractors=2, unlabelled=4)
    >>> data = generate_synthperson(config, progress=False)
    >>> {split: data[split].num_rows for split in data}
    {'train': 48, 'query': 6, 'gallery': 20, 'unlabelled': 4}
    >>> data["train"][0]["path"]
    'bounding_box_train/0001_c1s1_000001_01.jpg'
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import DatasetDict
from PIL import Image, ImageDraw, ImageFont, ImageOps
from tqdm.auto import tqdm

from ..atomic import atomic_directory, atomic_file
from .appearance import Appearance, diff_groups, draw_person, sample_appearance, sample_family
from .cameras import (
    Camera,
    apply_camera,
    domain_profile,
    draw_occluder,
    render_background,
    sample_camera,
    sample_viewpoint,
)
from .naming import MARKET1501
from .options import CommandLineOptions, option
from .schema import LABELLED_SPLITS, UNKNOWN, UNLABELLED_SPLIT, make_split

SPLITS = (*LABELLED_SPLITS, UNLABELLED_SPLIT)
MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# Stream ids keep the random draws of identities, camera visits and single images independent of each other.
_IDENTITY_STREAM, _VISIT_STREAM, _IMAGE_STREAM = 0x1D, 0x515, 0x1A6E
# Which population an identity or image belongs to; part of every random key.
_TRAIN, _TEST, _DISTRACTOR, _UNLABELLED = range(4)
_IMAGES_PER_UNLABELLED_ID = 4
_MARKET_FRAME_STEP = 25  # frames between two saved crops of one camera, as in Market-1501's 25 fps videos
_SLOPPY_DETECTION = 0.08  # share of crops whose box cuts off the head or the feet


@dataclass(frozen=True)
class SynthPersonConfig(CommandLineOptions):
    """Sizes and seed of a SynthPerson set.

    The defaults make a small set: 1,257 train images of 100 ids, 100 queries and 561 gallery images (50 ids +
    100 distractors), 600 unlabelled images; about 2,500 images that render in 15-20 s on one core, and on which
    a tiny ViT trains in minutes on CPU.

    Example:
        >>> SynthPersonConfig.from_options({"seed": "3", "train_ids": "50", "image_size": "128x64"}).image_size
        (128, 64)
    """

    OPTIONS_NAME = "SynthPerson"

    seed: int = option(0, "seed of identities and images (cameras depend on --domain only)")
    train_ids: int = option(100, "identities in the train split")
    test_ids: int = option(50, "identities in query/gallery, disjoint from the train ones")
    cameras: int = option(6, "cameras of the network (Market-1501 has 6)")
    images_per_camera: int = option(3, "images of an identity in each camera that sees it (>= 2)")
    min_cameras_per_id: int = option(2, "fewest cameras that see one identity (each sees 2..cameras)")
    queries_per_id: int = option(2, "query images per test identity, each from another camera")
    distractors: int = option(100, "gallery images of unrelated people (pid 0)")
    unlabelled: int = option(600, "images in the unlabelled pre-training pool (pid -1)")
    family_size: int = option(3, "identities per family: siblings differ from the first in one part only")
    image_size: tuple[int, int] = option((256, 128), "crop (height, width); on the command line 256x128")
    domain: int = option(0, "camera network; another value gives other cameras / lighting / scenes (UDA)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(self.image_size))  # a list from JSON / YAML is fine too
        counts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "image_size"}
        for name, value in counts.items():
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"SynthPersonConfig.{name} must be an integer >= 0, got {value!r}")
        checks = [
            (self.train_ids >= 1 and self.test_ids >= 1, "train_ids and test_ids must be >= 1"),
            (self.train_ids + self.test_ids <= 9999, "train_ids + test_ids must fit Market-1501's 4-digit pids"),
            (2 <= self.cameras <= 9, "cameras must be in 2..9 (cross-camera matching; Market names use one digit)"),
            (2 <= self.min_cameras_per_id <= self.cameras, "min_cameras_per_id must be in 2..cameras"),
            (1 <= self.queries_per_id <= self.min_cameras_per_id, "queries_per_id must be in 1..min_cameras_per_id"),
            (self.images_per_camera >= 2, "images_per_camera must be >= 2 so each query keeps gallery matches"),
            (self.family_size >= 1, "family_size must be >= 1"),
            (
                len(self.image_size) == 2 and all(isinstance(s, int) and s >= 32 for s in self.image_size),
                f"image_size must be (height, width) with both >= 32, got {self.image_size!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid SynthPersonConfig: {message} ({self})")


@dataclass(frozen=True)
class Shot:
    """One planned image: who, which camera, where it goes, and the random key that renders it."""

    split: str
    pid: int
    camid: int
    path: str
    person: Appearance
    key: tuple[int, ...]


def _identities(config: SynthPersonConfig, population: int, count: int) -> list[Appearance]:
    """The first ``count`` identities of ``population``, built family by family."""
    people: list[Appearance] = []
    family = 0
    while len(people) < count:
        rng = np.random.default_rng([_IDENTITY_STREAM, config.seed, config.domain, population, family])
        people.extend(sample_family(rng, config.family_size))
        family += 1
    return people[:count]


def plan_synthperson(config: SynthPersonConfig) -> list[Shot]:
    """Every image of the set, in a fixed order (train, query/gallery, distractors, unlabelled). Cheap."""
    shots: list[Shot] = []
    frames = [0] * config.cameras

    def market_path(split: str, pid: int, camid: int) -> str:
        frames[camid] += 1
        frame = 1 + _MARKET_FRAME_STEP * (frames[camid] - 1)
        return f"{MARKET_FOLDERS[split]}/{MARKET1501.format(pid, camid, sequence=1, frame=frame, box=1)}"

    populations = [(_TRAIN, 1, config.train_ids), (_TEST, 1 + config.train_ids, config.test_ids)]
    for population, first_pid, count in populations:
        for index, person in enumerate(_identities(config, population, count)):
            rng = np.random.default_rng([_VISIT_STREAM, config.seed, config.domain, population, index])
            seen_by = rng.integers(config.min_cameras_per_id, config.cameras + 1)
            cameras = sorted(int(c) for c in rng.choice(config.cameras, seen_by, replace=False))
            query_cameras = set(rng.choice(cameras, config.queries_per_id, replace=False).tolist())
            for camid in cameras:
                for shot in range(config.images_per_camera):
                    if population == _TRAIN:
                        split = "train"
                    else:
                        split = "query" if camid in query_cameras and shot == 0 else "gallery"
                    path = market_path(split, first_pid + index, camid)
                    shots.append(Shot(split, first_pid + index, camid, path, person, (population, index, camid, shot)))
    for index in range(config.distractors):
        rng = np.random.default_rng([_IDENTITY_STREAM, config.seed, config.domain, _DISTRACTOR, index])
        person, camid = sample_appearance(rng), int(rng.integers(config.cameras))
        shots.append(Shot("gallery", 0, camid, market_path("gallery", 0, camid), person, (_DISTRACTOR, index, camid)))
    for index in range(config.unlabelled):
        identity = index // _IMAGES_PER_UNLABELLED_ID
        person = sample_appearance(
            np.random.default_rng([_IDENTITY_STREAM, config.seed, config.domain, _UNLABELLED, identity])
        )
        visit = np.random.default_rng([_VISIT_STREAM, config.seed, config.domain, _UNLABELLED, index])
        camid = int(visit.integers(config.cameras))
        path = f"cam{camid + 1}/{index:06d}.jpg"
        shots.append(Shot(UNLABELLED_SPLIT, UNKNOWN, camid, path, person, (_UNLABELLED, index, camid)))
    return shots


def render_shot(shot: Shot, camera: Camera, config: SynthPersonConfig) -> bytes:
    """The JPEG bytes of ``shot`` filmed by ``camera`` (a pure function of its arguments)."""
    rng = np.random.default_rng([_IMAGE_STREAM, config.seed, config.domain, *shot.key])
    height, width = config.image_size
    canvas = Image.fromarray(render_background(camera, rng, config.image_size))
    viewpoint = sample_viewpoint(camera, rng)
    person_height = height * rng.uniform(*camera.person_height) * shot.person.height
    top = rng.uniform(0.2, 0.8) * (height - person_height)
    if rng.random() < _SLOPPY_DETECTION:
        top += rng.choice((-1, 1)) * rng.uniform(0.04, 0.1) * height
    center_x = width / 2 + rng.normal(0, 0.05) * width
    draw_person(canvas, shot.person, viewpoint, center_x=center_x, top=top, height=person_height, stride=rng.random())
    if rng.random() < camera.occlusion:
        half_width = 0.15 * person_height
        draw_occluder(canvas, rng, (center_x - half_width, top, center_x + half_width, top + person_height))
    if rng.random() < 0.5:
        canvas = ImageOps.mirror(canvas)
    return apply_camera(canvas, camera, rng)


def _rendered(shots: Sequence[Shot], config: SynthPersonConfig, progress: bool) -> Iterator[tuple[Shot, bytes]]:
    cameras = [sample_camera(config.domain, index) for index in range(config.cameras)]
    bar = tqdm(shots, desc="SynthPerson", unit="img", disable=None if progress else True)
    for shot in bar:
        yield shot, render_shot(shot, cameras[shot.camid], config)


def _description(config: SynthPersonConfig) -> str:
    return (
        f"SynthPerson, procedurally generated person ReID data ({domain_profile(config.domain).name} cameras); "
        f"camid is 0-based; pid 0 = gallery distractor, -1 = unlabelled. {config}"
    )


def generate_synthperson(
    config: SynthPersonConfig | None = None, *, splits: Sequence[str] = SPLITS, progress: bool = True
) -> DatasetDict:
    """Render SynthPerson in memory as a ``DatasetDict`` with splits ``train``, ``query``, ``gallery``, ``unlabelled``.

    Columns: ``image`` (JPEG bytes as ``datasets.Image``), ``pid``, ``camid`` (0-based), ``path`` (where the image
    goes in the Market-1501 layout, or in the image folder for ``unlabelled``). Nothing is cached on disk, so
    every call really regenerates.

    Args:
        config: Sizes and seed; the default :class:`SynthPersonConfig` when None.
        splits: The splits to render (rendering ``unlabelled`` is skipped when only labelled data is needed).
        progress: Show a tqdm progress bar (on a terminal).

    Example:
        >>> data = generate_synthperson(SynthPersonConfig(train_ids=4, test_ids=2), splits=["train"])
        >>> data["train"].features["image"]
        Image(mode='RGB', decode=True)
    """
    config = config or SynthPersonConfig()
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown SynthPerson split(s) {unknown}; expected a subset of {list(SPLITS)}")
    columns: dict[str, dict[str, list]] = {
        split: {"images": [], "pids": [], "camids": [], "paths": []} for split in splits
    }
    shots = [shot for shot in plan_synthperson(config) if shot.split in columns]
    for shot, data in _rendered(shots, config, progress):
        split = columns[shot.split]
        split["images"].append({"bytes": data, "path": shot.path})
        split["pids"].append(shot.pid)
        split["camids"].append(shot.camid)
        split["paths"].append(shot.path)
    name, config_name, description = "synthperson", f"seed{config.seed}-domain{config.domain}", _description(config)
    return DatasetDict(
        {
            split: make_split(**values, dataset_name=name, config_name=config_name, description=description)
            for split, values in columns.items()
        }
    )


def _write_shots(
    root: str | Path,
    config: SynthPersonConfig,
    splits: Sequence[str],
    folders: Sequence[str],
    overwrite: bool,
    progress: bool,
) -> Path:
    shots = [shot for shot in plan_synthperson(config) if shot.split in splits]
    with atomic_directory(root, overwrite=overwrite) as staging:
        for folder in {*folders, *(str(Path(shot.path).parent) for shot in shots)}:
            (staging / folder).mkdir(parents=True, exist_ok=True)
        for shot, data in _rendered(shots, config, progress):
            (staging / shot.path).write_bytes(data)
    return Path(root)


def write_market_layout(
    root: str | Path, config: SynthPersonConfig | None = None, *, overwrite: bool = False, progress: bool = True
) -> Path:
    """Write the labelled splits as a Market-1501 folder (``bounding_box_train``, ``bounding_box_test``, ``query``).

    File names follow Market-1501 (``0002_c3s1_000451_01.jpg``, distractors ``0000_...``), so
    ``load_reid_dataset("market1501", root)`` reads them back. The folder is written atomically.

    Example:
        >>> write_market_layout("out/synth-market", SynthPersonConfig(seed=1))  # doctest: +SKIP
        PosixPath('out/synth-market')
    """
    return _write_shots(
        root, config or SynthPersonConfig(), LABELLED_SPLITS, list(MARKET_FOLDERS.values()), overwrite, progress
    )


def write_image_folder(
    root: str | Path, config: SynthPersonConfig | None = None, *, overwrite: bool = False, progress: bool = True
) -> Path:
    """Write the unlabelled pool as a nested image folder (``cam3/000123.jpg``), LUPerson-style, atomically.

    Example:
        >>> write_image_folder("out/synth-unlabelled", SynthPersonConfig(unlabelled=5000))  # doctest: +SKIP
        PosixPath('out/synth-unlabelled')
    """
    return _write_shots(root, config or SynthPersonConfig(), [UNLABELLED_SPLIT], [], overwrite, progress)


def render_preview(
    path: str | Path, config: SynthPersonConfig | None = None, *, identities: int = 9, cameras: int | None = None
) -> Path:
    """Draw a grid of train identities (columns) x cameras (rows) as a PNG, so a person can see the data.

    Columns are grouped by family; a sibling's header names the part in which it differs from the family's
    first member (e.g. ``id 2 (bag)``). Cells are the very images of the train split where the camera sees that
    identity (and the same rendering otherwise). The PNG has 256 colours, to stay small.

    Example:
        >>> render_preview("docs/synthperson_preview.png")  # doctest: +SKIP
        PosixPath('docs/synthperson_preview.png')
    """
    config = config or SynthPersonConfig()
    identities = min(identities, config.train_ids)
    camera_count = min(cameras or config.cameras, config.cameras)
    people = _identities(config, _TRAIN, identities)
    height, width = config.image_size
    header, margin, gap = 30, 44, 8
    families = (identities + config.family_size - 1) // config.family_size
    grid = Image.new(
        "RGB", (margin + identities * width + (families - 1) * gap, header + camera_count * height), "white"
    )
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=13)
    for index, person in enumerate(people):
        x = margin + index * width + (index // config.family_size) * gap
        base = people[index - index % config.family_size]
        differs = diff_groups(base, person)
        label = f"id {index + 1}" + (f" ({', '.join(differs)})" if differs else "")
        draw.text((x + 4, 8), label, fill="black", font=font)
        for camid in range(camera_count):
            shot = Shot("train", index + 1, camid, "", person, (_TRAIN, index, camid, 0))
            cell = render_shot(shot, sample_camera(config.domain, camid), config)
            grid.paste(Image.open(io.BytesIO(cell)), (x, header + camid * height))
    for camid in range(camera_count):
        draw.text((6, header + camid * height + height // 2 - 8), f"cam{camid + 1}", fill="black", font=font)
    # 256 dithered colours keep a full-size preview well under 1 MB (for a README) at hardly visible cost.
    with atomic_file(path) as temporary:
        grid.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            temporary, format="PNG", optimize=True)
    return Path(path)
