"""SynthPerson identities: what a person wears, and how to draw that person from one viewpoint.

An identity is a combination of part attributes grouped by the region of the crop they occupy, so that the top,
middle and bottom of a crop carry different evidence (the split PASS's part tokens learn):

* ``head``: hair colour and style, hat (skin tone and body shape are shared by a whole family, see below);
* ``upper``: garment colour, sleeves and pattern (plain, stripes, logo on the chest, two-tone);
* ``lower``: garment colour and type (trousers, shorts, skirt);
* ``shoes``: shoe colour;
* ``bag``: backpack, shoulder bag or handbag, each visible from some viewpoints only.

:func:`sample_family` draws a base identity and siblings that each differ from it in exactly **one** part group,
so that a feature of the whole crop confuses them and only part-level detail tells them apart.

Example:
    >>> import numpy as np
    >>> from PIL import Image
    >>> family = sample_family(np.random.default_rng(0), size=3)
    >>> [len(diff_groups(family[0], sibling)) for sibling in family[1:]]
    [1, 1]
    >>> canvas = Image.new("RGB", (128, 256), "gray")
    >>> draw_person(canvas, family[0], Viewpoint.FRONT, center_x=64, top=10, height=236, stride=0.3)
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Garments share one palette on purpose: with a dozen and a half colours, unrelated people often share the colour
# of one garment, so no single colour names an identity.
GARMENT_COLORS: dict[str, RGB] = {
    "black": (28, 28, 30),
    "white": (228, 228, 222),
    "grey": (128, 128, 132),
    "navy": (30, 40, 90),
    "blue": (40, 90, 190),
    "light-blue": (130, 175, 225),
    "red": (190, 35, 40),
    "maroon": (110, 30, 45),
    "green": (40, 130, 60),
    "olive": (105, 110, 50),
    "yellow": (225, 200, 50),
    "orange": (230, 120, 30),
    "pink": (230, 140, 170),
    "purple": (110, 60, 150),
    "beige": (205, 185, 150),
    "brown": (110, 75, 45),
    "denim": (70, 95, 135),
}
# Lower garments are darker and plainer in real street data; the weights keep that bias without excluding colours.
LOWER_COLOR_WEIGHTS: dict[str, float] = {"black": 4, "navy": 2, "denim": 4, "grey": 2, "beige": 2, "brown": 1.5}
SKIN_TONES: dict[str, RGB] = {
    "porcelain": (245, 215, 195),
    "light": (230, 190, 160),
    "medium": (200, 150, 115),
    "olive": (175, 135, 95),
    "tan": (150, 105, 70),
    "dark": (95, 65, 45),
}
HAIR_COLORS: dict[str, RGB] = {
    "black": (20, 18, 18),
    "dark-brown": (60, 40, 28),
    "brown": (110, 72, 40),
    "blonde": (215, 180, 110),
    "grey": (165, 165, 160),
    "auburn": (140, 60, 35),
}
SHOE_COLORS: dict[str, RGB] = {
    "black": (22, 22, 24),
    "white": (235, 235, 235),
    "brown": (100, 60, 35),
    "grey": (120, 120, 125),
    "red": (185, 30, 35),
    "blue": (40, 80, 180),
}
HAIR_STYLES = ("short", "long", "buzz")
HATS = ("none", "cap", "beanie")
SLEEVES = ("long", "short")
UPPER_PATTERNS = ("plain", "stripes", "logo", "two-tone")
LOWER_TYPES = ("trousers", "shorts", "skirt")
BAGS = ("none", "backpack", "shoulder", "handbag")
LOGO_SHAPES = ("disc", "square", "triangle")

# Attribute names of each part group; a family sibling resamples exactly one group.
PART_GROUPS: dict[str, tuple[str, ...]] = {
    "head": ("hair_color", "hair_style", "hat", "hat_color"),
    "upper": ("upper_color", "sleeves", "upper_pattern", "upper_color2", "logo_shape"),
    "lower": ("lower_color", "lower_type"),
    "shoes": ("shoe_color",),
    "bag": ("bag", "bag_color"),
}


class Viewpoint(enum.Enum):
    """Which side of the person faces the camera. ``LEFT`` shows the person's left side (where bags are carried)."""

    FRONT = "front"
    BACK = "back"
    LEFT = "left"
    RIGHT = "right"


@dataclass(frozen=True)
class Appearance:
    """The part attributes of one identity (colour names index the palettes above)."""

    skin: str
    height: float  # fraction of the crop height the person stands tall at scale 1; twins share it
    build: float  # width multiplier of the body
    hair_color: str
    hair_style: str
    hat: str
    hat_color: str
    upper_color: str
    sleeves: str
    upper_pattern: str
    upper_color2: str
    logo_shape: str
    lower_color: str
    lower_type: str
    shoe_color: str
    bag: str
    bag_color: str

    def visible_signature(self, group: str) -> tuple[str, ...]:
        """The attributes of ``group`` that can be seen: a hat colour without a hat does not make a new person."""
        values = {name: getattr(self, name) for name in PART_GROUPS[group]}
        if values.get("hat") == "none":
            values["hat_color"] = ""
        if values.get("upper_pattern") == "plain":
            values["upper_color2"] = ""
        if values.get("upper_pattern") != "logo":
            values.pop("logo_shape", None)
        if values.get("bag") == "none":
            values["bag_color"] = ""
        return tuple(values.values())


def _pick(rng: np.random.Generator, choices: tuple[str, ...] | list[str], weights: list[float] | None = None) -> str:
    if weights is None:
        return str(choices[rng.integers(len(choices))])
    p = np.asarray(weights, dtype=float)
    return str(choices[rng.choice(len(choices), p=p / p.sum())])


def _sample_group(rng: np.random.Generator, group: str) -> dict[str, str]:
    """Fresh values for the attributes of one part group."""
    garments = list(GARMENT_COLORS)
    if group == "head":
        return {
            "hair_color": _pick(rng, list(HAIR_COLORS)),
            "hair_style": _pick(rng, HAIR_STYLES, [5, 3, 1]),
            "hat": _pick(rng, HATS, [6, 2, 1.5]),
            "hat_color": _pick(rng, garments),
        }
    if group == "upper":
        upper_color = _pick(rng, garments)
        return {
            "upper_color": upper_color,
            "sleeves": _pick(rng, SLEEVES, [3, 2]),
            "upper_pattern": _pick(rng, UPPER_PATTERNS, [4, 2, 2, 2]),
            "upper_color2": _pick(rng, [c for c in garments if c != upper_color]),
            "logo_shape": _pick(rng, LOGO_SHAPES),
        }
    if group == "lower":
        weights = [LOWER_COLOR_WEIGHTS.get(color, 0.6) for color in garments]
        return {"lower_color": _pick(rng, garments, weights), "lower_type": _pick(rng, LOWER_TYPES, [6, 2, 1.5])}
    if group == "shoes":
        return {"shoe_color": _pick(rng, list(SHOE_COLORS), [4, 3, 2, 1.5, 0.7, 0.7])}
    if group == "bag":
        return {"bag": _pick(rng, BAGS, [4, 2, 1.5, 1.5]), "bag_color": _pick(rng, garments)}
    raise KeyError(f"unknown part group {group!r}; expected one of {sorted(PART_GROUPS)}")


def sample_appearance(rng: np.random.Generator) -> Appearance:
    """One random identity."""
    attributes: dict[str, object] = {
        "skin": _pick(rng, list(SKIN_TONES)),
        "height": float(rng.uniform(0.9, 1.0)),
        "build": float(rng.uniform(0.85, 1.15)),
    }
    for group in PART_GROUPS:
        attributes.update(_sample_group(rng, group))
    return Appearance(**attributes)


def mutate_group(rng: np.random.Generator, base: Appearance, group: str) -> Appearance:
    """``base`` with the attributes of ``group`` resampled until they look different."""
    while True:
        candidate = dataclasses.replace(base, **_sample_group(rng, group))
        if candidate.visible_signature(group) != base.visible_signature(group):
            return candidate


def diff_groups(a: Appearance, b: Appearance) -> list[str]:
    """The part groups in which two identities look different."""
    return [group for group in PART_GROUPS if a.visible_signature(group) != b.visible_signature(group)]


def sample_family(rng: np.random.Generator, size: int) -> list[Appearance]:
    """A base identity followed by ``size - 1`` siblings that each differ from it in one part group only.

    Siblings change different groups (in a random order), so a family of 3 might be "same person but a red top"
    and "same person but a backpack": the hard negatives a global-only descriptor confuses.
    """
    base = sample_appearance(rng)
    groups = list(rng.permutation(list(PART_GROUPS)))
    return [base] + [mutate_group(rng, base, groups[k % len(groups)]) for k in range(size - 1)]


def _shade(color: RGB, factor: float) -> RGB:
    return tuple(int(min(255, channel * factor)) for channel in color)  # type: ignore[return-value]


class _Figure:
    """Maps body coordinates (fractions of the person's height, x relative to the centre line) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, center_x: float, top: float, height: float, build: float):
        self.draw, self.cx, self.top, self.h, self.build = draw, center_x, top, height, build

    def pt(self, x: float, y: float) -> tuple[float, float]:
        return self.cx + x * self.h * self.build, self.top + y * self.h

    def poly(self, points: list[tuple[float, float]], color: RGB) -> None:
        self.draw.polygon([self.pt(x, y) for x, y in points], fill=color)

    def box(self, x0: float, y0: float, x1: float, y1: float, color: RGB) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], color)

    def ellipse(self, x: float, y: float, rx: float, ry: float, color: RGB) -> None:
        (x0, y0), (x1, y1) = self.pt(x - rx, y - ry), self.pt(x + rx, y + ry)
        self.draw.ellipse([x0, y0, x1, y1], fill=color)

    def chord(self, x: float, y: float, rx: float, ry: float, start: float, end: float, color: RGB) -> None:
        (x0, y0), (x1, y1) = self.pt(x - rx, y - ry), self.pt(x + rx, y + ry)
        self.draw.chord([x0, y0, x1, y1], start, end, fill=color)

    def limb(self, start: tuple[float, float], end: tuple[float, float], width: float, color: RGB) -> None:
        """A quadrilateral of ``width`` (in body units) from ``start`` to ``end``."""
        (x0, y0), (x1, y1) = start, end
        dx, dy = (x1 - x0) * self.build, y1 - y0
        norm = max(1e-6, (dx * dx + dy * dy) ** 0.5)
        ox, oy = -dy / norm * width / 2 / self.build, dx / norm * width / 2
        self.poly([(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)], color)

    def hstripes(self, y0: float, y1: float, half_top: float, half_bottom: float, period: float, color: RGB) -> None:
        """Horizontal stripes clipped to the trapezoid spanning ``y0..y1`` (half widths at its top and bottom)."""
        y = y0 + period / 2
        while y + period / 2 <= y1:
            t0, t1 = (y - y0) / (y1 - y0), (y + period / 2 - y0) / (y1 - y0)
            w0, w1 = half_top + t0 * (half_bottom - half_top), half_top + t1 * (half_bottom - half_top)
            self.poly([(-w0, y), (w0, y), (w1, y + period / 2), (-w1, y + period / 2)], color)
            y += period


# Body layout in fractions of the person's height (0 = top of the head, 1 = soles).
HEAD_Y, HEAD_RX, HEAD_RY = 0.068, 0.047, 0.062
SHOULDER_Y, WAIST_Y, HEM_Y, ANKLE_Y = 0.155, 0.47, 0.5, 0.935


def draw_person(
    canvas: Image.Image,
    person: Appearance,
    viewpoint: Viewpoint,
    *,
    center_x: float,
    top: float,
    height: float,
    stride: float,
) -> None:
    """Draw ``person`` onto ``canvas`` in place, ``height`` pixels tall from ``top``, facing right when sideways.

    ``stride`` in [0, 1] is the walking phase: how far apart legs and arms swing in this frame.
    """
    fig = _Figure(ImageDraw.Draw(canvas), center_x, top, height, person.build)
    side = viewpoint in (Viewpoint.LEFT, Viewpoint.RIGHT)
    skin = SKIN_TONES[person.skin]
    upper, lower = GARMENT_COLORS[person.upper_color], GARMENT_COLORS[person.lower_color]
    # Two-tone tops have contrasting sleeves and shoulders (a raglan / colour-block jacket).
    sleeve_color = GARMENT_COLORS[person.upper_color2] if person.upper_pattern == "two-tone" else upper

    if person.hair_style == "long" and viewpoint is Viewpoint.FRONT:
        fig.box(-0.06, HEAD_Y - 0.02, 0.06, 0.2, HAIR_COLORS[person.hair_color])  # hair falling behind the shoulders
    _draw_bag(fig, person, viewpoint, "behind")
    _draw_legs_and_shoes(fig, person, side, stride, skin, lower)
    _draw_arms(fig, person, side, stride, skin, sleeve_color, behind=True)
    _draw_torso(fig, person, viewpoint, side, upper, sleeve_color)
    _draw_bag(fig, person, viewpoint, "torso")
    _draw_head(fig, person, viewpoint, side, skin)
    _draw_arms(fig, person, side, stride, skin, sleeve_color, behind=False)
    _draw_bag(fig, person, viewpoint, "front")


def _draw_legs_and_shoes(fig: _Figure, person: Appearance, side: bool, stride: float, skin: RGB, lower: RGB) -> None:
    shoe = SHOE_COLORS[person.shoe_color]
    swing = 0.09 * stride if side else 0.015 * stride
    for k, hip_x in enumerate((0.0, 0.0) if side else (-0.045, 0.045)):
        direction = -1 if k == 0 else 1
        ankle_x = hip_x + direction * swing
        leg_skin = _shade(skin, 0.85) if side and k == 0 else skin
        leg_cloth = _shade(lower, 0.8) if side and k == 0 else lower
        hip, ankle = (hip_x, WAIST_Y + 0.02), (ankle_x, ANKLE_Y)
        fig.limb(hip, ankle, 0.085, leg_skin if person.lower_type != "trousers" else leg_cloth)
        if person.lower_type == "shorts":
            knee = (hip_x + direction * swing * 0.45, 0.68)
            fig.limb(hip, knee, 0.095, leg_cloth)
        toe = 0.045 if side else 0.0
        fig.ellipse(ankle_x + toe, ANKLE_Y + 0.03, 0.05 if side else 0.038, 0.032, _shade(shoe, 0.9 if k else 1.0))
    if person.lower_type == "skirt":
        half_top, half_bottom = (0.095, 0.15) if not side else (0.07, 0.12)
        fig.poly([(-half_top, WAIST_Y), (half_top, WAIST_Y), (half_bottom, 0.72), (-half_bottom, 0.72)], lower)
    else:
        half = 0.095 if not side else 0.07
        fig.box(-half, WAIST_Y, half, WAIST_Y + 0.06, lower)  # the seat joining the two legs


def _draw_arms(
    fig: _Figure, person: Appearance, side: bool, stride: float, skin: RGB, sleeve: RGB, *, behind: bool
) -> None:
    # Seen from the side one arm swings behind the torso and one in front; from front/back both hang outside it.
    if side:
        arms = [(-0.11 * stride, 0.8)] if behind else [(0.11 * stride, 1.0)]
        shoulder_x = 0.0
    else:
        if behind:
            return
        arms = [(-0.03 * stride - 0.02, 1.0), (0.03 * stride + 0.02, 1.0)]
        shoulder_x = 0.125
    for k, (swing, shade) in enumerate(arms):
        sign = (-1 if k == 0 else 1) if not side else 0
        shoulder = (sign * shoulder_x, SHOULDER_Y + 0.02)
        hand = (sign * (shoulder_x + 0.015) + swing, 0.49)
        elbow = (shoulder[0] + (hand[0] - shoulder[0]) * 0.45, SHOULDER_Y + 0.02 + (0.49 - SHOULDER_Y) * 0.45)
        fig.limb(shoulder, hand, 0.055, _shade(skin, shade))
        fig.limb(shoulder, hand if person.sleeves == "long" else elbow, 0.065, _shade(sleeve, shade))
        fig.ellipse(hand[0], hand[1] + 0.012, 0.022, 0.02, _shade(skin, shade))


def _draw_torso(fig: _Figure, person: Appearance, viewpoint: Viewpoint, side: bool, upper: RGB, sleeve: RGB) -> None:
    half_shoulder, half_hem = (0.125, 0.105) if not side else (0.075, 0.075)
    fig.poly([(-half_shoulder, SHOULDER_Y), (half_shoulder, SHOULDER_Y), (half_hem, HEM_Y), (-half_hem, HEM_Y)], upper)
    fig.box(-0.018, HEAD_Y + 0.04, 0.018, SHOULDER_Y + 0.01, SKIN_TONES[person.skin])  # neck
    second = GARMENT_COLORS[person.upper_color2]
    if person.upper_pattern == "stripes":
        fig.hstripes(SHOULDER_Y + 0.02, HEM_Y, half_shoulder, half_hem, 0.05, second)
    elif person.upper_pattern == "two-tone":
        yoke_y = SHOULDER_Y + 0.08
        yoke_half = half_shoulder + (half_hem - half_shoulder) * (yoke_y - SHOULDER_Y) / (HEM_Y - SHOULDER_Y)
        fig.poly(
            [(-half_shoulder, SHOULDER_Y), (half_shoulder, SHOULDER_Y), (yoke_half, yoke_y), (-yoke_half, yoke_y)],
            sleeve,
        )
    elif person.upper_pattern == "logo" and viewpoint is Viewpoint.FRONT:
        x, y, r = 0.0, 0.3, 0.045
        if person.logo_shape == "disc":
            fig.ellipse(x, y, r, r, second)
        elif person.logo_shape == "square":
            fig.box(x - r, y - r, x + r, y + r, second)
        else:
            fig.poly([(x, y - r), (x + r * 1.1, y + r), (x - r * 1.1, y + r)], second)


def _draw_bag(fig: _Figure, person: Appearance, viewpoint: Viewpoint, layer: str) -> None:
    """The part of the bag on ``layer``: ``"behind"`` the body, over the ``"torso"``, or in ``"front"`` of the arms.

    Shoulder bags and handbags are carried on the person's left: image right from the front, image left from the
    back, hidden behind the body when the right side faces the camera. Backpacks show fully only from the back
    (from the side they stick out behind, from the front only the straps show).
    """
    if person.bag == "none":
        return
    color = GARMENT_COLORS[person.bag_color]
    strap = _shade(color, 0.8)
    side = viewpoint in (Viewpoint.LEFT, Viewpoint.RIGHT)
    left_x = {Viewpoint.FRONT: 1, Viewpoint.BACK: -1}.get(viewpoint, 0)  # where the person's left is, across x
    carried_visible = viewpoint is not Viewpoint.RIGHT
    if person.bag == "backpack":
        if layer == "behind" and side:
            fig.box(-0.16, SHOULDER_Y + 0.03, -0.065, 0.4, color)
        elif layer == "torso" and viewpoint is Viewpoint.BACK:
            fig.box(-0.085, SHOULDER_Y + 0.035, 0.085, 0.4, color)
        elif layer == "torso":
            for x in (-0.075, 0.075) if viewpoint is Viewpoint.FRONT else (-0.028,):
                fig.box(x - 0.012, SHOULDER_Y, x + 0.012, 0.33, strap)
    elif person.bag == "shoulder" and layer == "torso":
        fig.limb((-left_x * 0.1, SHOULDER_Y), (left_x * 0.1, 0.44), 0.022, strap)
        if carried_visible:
            fig.box(left_x * 0.13 - 0.055, 0.41, left_x * 0.13 + 0.055, 0.52, color)
    elif person.bag == "handbag" and layer == "front" and carried_visible:
        hand_x = 0.02 if side else left_x * 0.15
        fig.box(hand_x - 0.04, 0.5, hand_x + 0.04, 0.6, color)


def _draw_head(fig: _Figure, person: Appearance, viewpoint: Viewpoint, side: bool, skin: RGB) -> None:
    hair = HAIR_COLORS[person.hair_color]
    face_x = 0.008 if side else 0.0
    fig.ellipse(face_x, HEAD_Y, HEAD_RX, HEAD_RY, skin)
    if person.hair_style == "long" and viewpoint is not Viewpoint.FRONT:  # over the nape, down the back
        fig.box(-0.058, HEAD_Y, 0.0 if side else 0.058, 0.23, hair)
    if viewpoint is Viewpoint.BACK:
        fig.ellipse(0.0, HEAD_Y - 0.004, HEAD_RX + 0.004, HEAD_RY + 0.002, hair)
    elif person.hair_style != "buzz" or person.hat == "none":
        # Hair on the crown; the buzz cut is a thin line of it, the side view also covers the back of the head.
        depth = 0.05 if person.hair_style == "buzz" else 0.03
        if side:
            fig.chord(-0.008, HEAD_Y - 0.004, HEAD_RX + 0.004, HEAD_RY, 120, 310, hair)
        fig.chord(0.0, HEAD_Y - depth, HEAD_RX + 0.004, HEAD_RY, 180, 360, hair)
        fig.box(-HEAD_RX - 0.004, HEAD_Y - depth, HEAD_RX + 0.004, HEAD_Y - depth + 0.008, hair)
    if viewpoint is Viewpoint.FRONT:
        eye = _shade(skin, 0.35)
        for x in (-0.018, 0.018):
            fig.ellipse(x, HEAD_Y + 0.004, 0.006, 0.005, eye)
    elif side:
        fig.ellipse(0.03, HEAD_Y + 0.004, 0.006, 0.005, _shade(skin, 0.35))
    if person.hat != "none":
        hat = GARMENT_COLORS[person.hat_color]
        crown = 0.025 if person.hat == "cap" else 0.012
        fig.chord(0.0, HEAD_Y - crown, HEAD_RX + 0.008, HEAD_RY, 180, 360, hat)
        fig.box(-HEAD_RX - 0.008, HEAD_Y - crown - 0.002, HEAD_RX + 0.008, HEAD_Y - crown + 0.012, hat)
        if person.hat == "cap" and viewpoint is not Viewpoint.BACK:
            brim_x = 0.045 if side else 0.0
            fig.ellipse(brim_x, HEAD_Y - crown + 0.012, HEAD_RX + (0.01 if not side else 0.02), 0.01, _shade(hat, 0.8))
