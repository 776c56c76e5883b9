"""SynthPerson cameras: everything a real surveillance camera changes about a person crop.

A :class:`Camera` fixes the scene behind the person (a street, a park, a corridor ... drawn procedurally), the colour
cast and exposure, how large and where a detector boxes the person, how blurred and low-resolution the sensor is,
which way people usually walk past it (front / back / side), how often something stands in the way, and its JPEG
quality. Each crop then jitters those settings a little, as lighting and detections do from frame to frame.

Cameras depend only on the ``domain`` and their index, not on the identity seed: a domain is one fixed camera
network (like one benchmark), and another ``domain`` value gives a different network, drawn from another
:class:`DomainProfile` (daylight streets vs. indoor evening light), for domain-adaptation experiments.

Example:
    >>> import numpy as np
    >>> camera = sample_camera(domain=0, index=2)
    >>> background = render_background(camera, np.random.default_rng(0), (256, 128))
    >>> background.shape, background.dtype
    ((256, 128, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .appearance import GARMENT_COLORS, RGB, Viewpoint

# A stream id separates camera randomness from identity / image randomness drawn from the same integers.
_CAMERA_STREAM = 0x0CA3E4A


@dataclass(frozen=True)
class DomainProfile:
    """The ranges a domain's cameras are drawn from."""

    name: str
    scenes: tuple[str, ...]
    wall_colors: tuple[RGB, ...]
    floor_colors: tuple[RGB, ...]
    cast: float  # standard deviation of the per-channel gain
    brightness: tuple[float, float]
    blur: tuple[float, float]
    resolution: tuple[float, float]  # sensor resolution as a fraction of the crop size
    noise: tuple[float, float]
    jpeg_quality: tuple[int, int]


DOMAIN_PROFILES: tuple[DomainProfile, ...] = (
    DomainProfile(
        name="street-daylight",
        scenes=("facade", "park", "plaza", "shopfront"),
        wall_colors=((170, 160, 150), (120, 110, 100), (190, 175, 140), (90, 100, 110), (150, 90, 70), (200, 200, 195)),
        floor_colors=((110, 110, 110), (150, 145, 135), (85, 85, 90), (160, 150, 120), (120, 125, 100)),
        cast=0.06,
        brightness=(0.9, 1.15),
        blur=(0.3, 1.0),
        resolution=(0.6, 1.0),
        noise=(1.0, 5.0),
        jpeg_quality=(60, 95),
    ),
    DomainProfile(
        name="indoor-evening",
        scenes=("corridor", "shopfront", "plaza"),
        wall_colors=((210, 190, 150), (80, 70, 60), (170, 175, 185), (120, 140, 120), (200, 160, 120)),
        floor_colors=((150, 120, 90), (90, 85, 80), (190, 185, 175), (60, 60, 70)),
        cast=0.14,
        brightness=(0.6, 0.95),
        blur=(0.6, 1.6),
        resolution=(0.45, 0.8),
        noise=(3.0, 9.0),
        jpeg_quality=(35, 75),
    ),
)


@dataclass(frozen=True)
class Camera:
    """One camera of a SynthPerson domain (``index`` is 0-based; Market-style names show ``index + 1``)."""

    index: int
    scene: str
    wall: RGB
    floor: RGB
    accent: RGB
    horizon: float  # fraction of the crop height where the ground starts
    gain: tuple[float, float, float]
    brightness: float
    person_height: tuple[float, float]  # range of the person's height as a fraction of the crop height
    blur: float
    resolution: float
    noise: float
    occlusion: float  # probability that something hides part of the person
    jpeg_quality: int
    viewpoint_weights: tuple[float, float, float, float]  # FRONT, BACK, LEFT, RIGHT


def domain_profile(domain: int) -> DomainProfile:
    """The profile of ``domain``: even domains are daylight streets, odd ones indoor evening scenes."""
    return DOMAIN_PROFILES[domain % len(DOMAIN_PROFILES)]


def sample_camera(domain: int, index: int) -> Camera:
    """Camera ``index`` of ``domain`` (deterministic)."""
    if domain < 0 or index < 0:
        raise ValueError(f"domain and camera index must be >= 0, got domain={domain}, index={index}")
    profile = domain_profile(domain)
    rng = np.random.default_rng([_CAMERA_STREAM, domain, index])

    def uniform(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(*bounds))

    # A camera overlooking a walkway mostly sees people walking towards or away from it; one at a crossing
    # mostly sees them from the side.
    along = rng.uniform(0.15, 0.85)
    front = rng.uniform(0.3, 0.7)
    tall = rng.uniform(0.78, 0.93)
    accents = list(GARMENT_COLORS.values())
    return Camera(
        index=index,
        scene=str(rng.choice(profile.scenes)),
        wall=profile.wall_colors[rng.integers(len(profile.wall_colors))],
        floor=profile.floor_colors[rng.integers(len(profile.floor_colors))],
        accent=accents[rng.integers(len(accents))],
        horizon=uniform((0.55, 0.8)),
        gain=tuple(float(g) for g in np.clip(rng.normal(1.0, profile.cast, 3), 0.6, 1.4)),  # type: ignore[arg-type]
        brightness=uniform(profile.brightness),
        person_height=(tall - 0.08, min(1.0, tall + 0.06)),
        blur=uniform(profile.blur),
        resolution=uniform(profile.resolution),
        noise=uniform(profile.noise),
        occlusion=uniform((0.0, 0.3)),
        jpeg_quality=int(rng.integers(profile.jpeg_quality[0], profile.jpeg_quality[1] + 1)),
        viewpoint_weights=(along * front, along * (1 - front), (1 - along) / 2, (1 - along) / 2),
    )


def sample_viewpoint(camera: Camera, rng: np.random.Generator) -> Viewpoint:
    """A viewpoint drawn from the camera's distribution."""
    weights = np.asarray(camera.viewpoint_weights)
    return list(Viewpoint)[rng.choice(len(weights), p=weights / weights.sum())]


def _low_frequency_noise(rng: np.random.Generator, size: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Smooth noise in [-1, 1] of ``size`` (H, W), from a ``cells`` grid upsampled bilinearly."""
    grid = rng.uniform(0, 255, cells).astype(np.uint8)
    smooth = Image.fromarray(grid).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(smooth, dtype=np.float32) / 127.5 - 1.0


def render_background(camera: Camera, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """The scene behind the person: ``uint8`` (H, W, 3). Each call shifts and relights the pattern a little."""
    height, width = size
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :] + rng.uniform(0, 200)  # the detector box moves along the scene
    horizon = (camera.horizon + rng.uniform(-0.04, 0.04)) * height
    wall = np.asarray(camera.wall, np.float32) * rng.uniform(0.92, 1.08)
    floor = np.asarray(camera.floor, np.float32) * rng.uniform(0.92, 1.08)
    accent = np.asarray(camera.accent, np.float32)
    below = (ys >= horizon)[..., None]
    # Walls get darker towards the top (shade of eaves, ceiling); the ground gets lighter towards the camera.
    wall_shade = (0.85 + 0.15 * ys / height)[..., None]
    depth = np.clip((ys - horizon) / max(1.0, height - horizon), 0, 1)
    image = np.where(below, floor * (0.9 + 0.15 * depth[..., None]), wall * wall_shade)
    image = np.broadcast_to(image, (height, width, 3)).copy()

    if camera.scene == "facade":  # windows in a regular grid
        window = ((xs % 46) > 12) & ((xs % 46) < 34) & ((ys % 60) > 14) & ((ys % 60) < 44) & (ys < horizon - 6)
        image[window] = image[window] * 0.45 + np.asarray((70, 90, 110), np.float32) * 0.55
    elif camera.scene == "park":  # foliage blobs over a sky gradient, a path below
        sky = np.asarray((150, 185, 215), np.float32) * (0.8 + 0.2 * ys / height)[..., None]
        leaves = _low_frequency_noise(rng, size, (6, 4)) > -0.1
        image = np.where(below, image, np.where(leaves[..., None], np.asarray((60, 110, 55), np.float32), sky))
    elif camera.scene == "shopfront":  # coloured panels and a dark doorway
        panel = ((xs // 40) % 3 == 0) & (ys < horizon) & (ys > height * 0.08)
        image[panel] = image[panel] * 0.4 + accent * 0.6
    elif camera.scene == "corridor":  # a horizontal band along the wall
        band = (ys > horizon * 0.45) & (ys < horizon * 0.55)
        image[np.broadcast_to(band, (height, width))] = accent * 0.7
    # Paving / tiles: joints that get further apart towards the camera, as in perspective.
    if camera.scene in ("plaza", "corridor", "facade"):
        rows = np.sqrt(np.clip(ys - horizon, 0, None)) % 4.0 < 0.35
        columns = ((xs - width / 2) / (1 + np.clip(ys - horizon, 0, None) / 30)) % 18 < 1.2
        joints = (rows | columns) & (ys >= horizon)
        image[joints] *= 0.75
    image += 14.0 * _low_frequency_noise(rng, size, (8, 4))[..., None]  # dirt and uneven light
    return np.clip(image, 0, 255).astype(np.uint8)


def draw_occluder(canvas: Image.Image, rng: np.random.Generator, person_box: tuple[float, float, float, float]) -> None:
    """Hide part of the person behind a pole, a parked car, a passer-by or a bench (in place)."""
    left, top, right, bottom = person_box
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    kind = rng.choice(("pole", "car", "passer-by", "bench"))
    color = tuple(int(c) for c in rng.integers(30, 220, 3))
    if kind == "pole":
        x = rng.uniform(left, right)
        half = rng.uniform(3, 8)
        draw.rectangle([x - half, 0, x + half, height], fill=color)
    elif kind == "car":
        y = bottom - rng.uniform(0.25, 0.42) * (bottom - top)
        draw.rounded_rectangle([-20, y, width + 20, height + 20], radius=14, fill=color)
        draw.rectangle([-20, y + 8, width + 20, y + 26], fill=tuple(int(c * 0.5) for c in color))  # windows
    elif kind == "passer-by":
        from_left = rng.random() < 0.5
        reach = rng.uniform(0.22, 0.4) * width
        x0, x1 = (-10, reach) if from_left else (width - reach, width + 10)
        draw.rounded_rectangle([x0, top + rng.uniform(0.1, 0.3) * height, x1, height + 10], radius=12, fill=color)
    else:
        y = bottom - rng.uniform(0.18, 0.3) * (bottom - top)
        draw.rectangle([-10, y, width + 10, y + 0.08 * height], fill=color)
        for x in (0.2 * width, 0.8 * width):
            draw.rectangle([x - 3, y, x + 3, height], fill=color)


def apply_camera(canvas: Image.Image, camera: Camera, rng: np.random.Generator) -> bytes:
    """Colour cast, exposure, sensor resolution, blur and noise of ``camera``, then its JPEG encoding."""
    pixels = np.asarray(canvas, dtype=np.float32)
    gain = np.asarray(camera.gain, np.float32) * np.float32(camera.brightness * rng.uniform(0.88, 1.12))
    pixels = pixels * gain + camera.noise * rng.standard_normal(pixels.shape, dtype=np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    width, height = image.size
    scale = camera.resolution * rng.uniform(0.9, 1.1)
    if scale < 0.95:  # a sensor with fewer pixels than the crop: detail is lost, then upsampled by the pipeline
        small = (max(8, round(width * scale)), max(8, round(height * scale)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize((width, height), Image.Resampling.BILINEAR)
    image = image.filter(ImageFilter.GaussianBlur(camera.blur * rng.uniform(0.7, 1.3)))
    buffer = io.BytesIO()
    quality = int(np.clip(camera.jpeg_quality + rng.integers(-5, 6), 20, 98))
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
