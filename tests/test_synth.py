"""SynthPerson: split sizes and ids, families, determinism, writers, preview and the ``synth`` command."""

from __future__ import annotations

import collections
import io
from pathlib import Path

import pytest
from datasets import Image as ImageFeature
from PIL import Image

from pass_hub.cli import main
from pass_hub.data import (
    MARKET1501,
    SynthPersonConfig,
    generate_synthperson,
    load_reid_dataset,
    plan_synthperson,
    render_preview,
    write_image_folder,
    write_market_layout,
)
from pass_hub.data.appearance import diff_groups
from pass_hub.data.cameras import domain_profile, sample_camera

TINY = SynthPersonConfig(
    train_ids=6, test_ids=4, cameras=3, images_per_camera=2, distractors=3, unlabelled=5, image_size=(64, 32)
)


def raw_bytes(split) -> list[bytes]:
    """The stored JPEG bytes of a split, without decoding."""
    return [image["bytes"] for image in split.cast_column("image", ImageFeature(decode=False))["image"]]


@pytest.fixture(scope="module")
def tiny():
    return generate_synthperson(TINY, progress=False)


def test_splits_ids_and_cameras(tiny):
    assert set(tiny) == {"train", "query", "gallery", "unlabelled"}
    assert set(tiny["train"]["pid"]) == set(range(1, 7))
    assert set(tiny["query"]["pid"]) == set(range(7, 11))
    assert set(tiny["gallery"]["pid"]) == {0, *range(7, 11)}
    assert list(tiny["gallery"]["pid"]).count(0) == TINY.distractors
    assert list(tiny["unlabelled"]["pid"]) == [-1] * TINY.unlabelled
    for split in tiny.values():
        assert set(split["camid"]) <= set(range(TINY.cameras))

    # Each train id is seen by 2..3 cameras, images_per_camera times each.
    per_id = collections.Counter(zip(tiny["train"]["pid"], tiny["train"]["camid"], strict=True))
    assert set(per_id.values()) == {TINY.images_per_camera}
    cameras_of = collections.defaultdict(set)
    for pid, camid in per_id:
        cameras_of[pid].add(camid)
    assert all(2 <= len(cams) <= TINY.cameras for cams in cameras_of.values())

    # queries_per_id queries per test id from different cameras, each with a gallery match in another camera.
    queries = list(zip(tiny["query"]["pid"], tiny["query"]["camid"], strict=True))
    assert len(queries) == TINY.test_ids * TINY.queries_per_id == len(set(queries))
    gallery = set(zip(tiny["gallery"]["pid"], tiny["gallery"]["camid"], strict=True))
    for pid, camid in queries:
        assert any(g_pid == pid and g_cam != camid for g_pid, g_cam in gallery)

    image = tiny["train"][0]["image"]
    assert (image.mode, image.size) == ("RGB", (32, 64))


def test_paths_follow_market_names(tiny):
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    for split, folder in folders.items():
        paths = list(tiny[split]["path"])
        assert len(set(paths)) == len(paths)
        for path, pid, camid in zip(paths, tiny[split]["pid"], tiny[split]["camid"], strict=True):
            assert Path(path).parent.name == folder
            assert MARKET1501.parse(Path(path).name) == (pid, camid)
    assert tiny["train"][0]["path"] == "bounding_box_train/0001_c1s1_000001_01.jpg"


def test_families_differ_in_exactly_one_part():
    config = SynthPersonConfig(train_ids=12, family_size=3)
    people = {shot.pid: shot.person for shot in plan_synthperson(config) if shot.split == "train"}
    for first in range(1, 13, 3):
        assert len(diff_groups(people[first], people[first + 1])) == 1
        assert len(diff_groups(people[first], people[first + 2])) == 1
        assert diff_groups(people[first], people[first + 1]) != diff_groups(people[first], people[first + 2])
    assert len(diff_groups(people[1], people[4])) > 1  # unrelated families


def test_same_seed_same_bytes_other_seed_or_domain_not(tiny):
    again = generate_synthperson(TINY, progress=False)
    for split in tiny:
        assert raw_bytes(again[split]) == raw_bytes(tiny[split])
    # An image does not depend on what else is rendered with it.
    assert raw_bytes(generate_synthperson(TINY, splits=["query"], progress=False)["query"]) == raw_bytes(tiny["query"])
    other_seed = generate_synthperson(SynthPersonConfig(**{**vars(TINY), "seed": 1}), splits=["train"], progress=False)
    assert raw_bytes(other_seed["train"])[0] != raw_bytes(tiny["train"])[0]
    other_domain = SynthPersonConfig(**{**vars(TINY), "domain": 1})
    assert (
        raw_bytes(generate_synthperson(other_domain, splits=["train"], progress=False)["train"])[0]
        != raw_bytes(tiny["train"])[0]
    )


def test_domains_have_their_own_cameras():
    assert domain_profile(0).name != domain_profile(1).name
    street, indoor = sample_camera(0, 0), sample_camera(1, 0)
    assert street != indoor
    assert sample_camera(0, 0) == street  # deterministic
    assert indoor.jpeg_quality <= domain_profile(1).jpeg_quality[1] < domain_profile(0).jpeg_quality[1]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cameras": 1}, "cameras must be in 2..9"),
        ({"images_per_camera": 1}, "images_per_camera must be >= 2"),
        ({"queries_per_id": 3}, "queries_per_id"),
        ({"train_ids": -1}, "train_ids must be an integer >= 0"),
        ({"train_ids": 9000, "test_ids": 1000}, "4-digit"),
        ({"image_size": (16, 8)}, "image_size"),
    ],
)
def test_config_rejects_bad_values(options, message):
    with pytest.raises(ValueError, match=message):
        SynthPersonConfig(**options)


def test_config_from_string_options():
    config = SynthPersonConfig.from_options({"seed": "3", "train_ids": "50", "image_size": "128x64"})
    assert (config.seed, config.train_ids, config.image_size) == (3, 50, (128, 64))
    with pytest.raises(ValueError, match=r"unknown SynthPerson option 'colour'.*seed"):
        SynthPersonConfig.from_options({"colour": "1"})
    with pytest.raises(ValueError, match="seed='x' is not a valid int"):
        SynthPersonConfig.from_options({"seed": "x"})


def test_market_layout_round_trip(tiny, tmp_path):
    root = write_market_layout(tmp_path / "synth", TINY, progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["bounding_box_test", "bounding_box_train", "query"]
    loaded = load_reid_dataset("market1501", root)
    for split in ("train", "query", "gallery"):
        assert sorted(zip(loaded[split]["pid"], loaded[split]["camid"], strict=True)) == sorted(
            zip(tiny[split]["pid"], tiny[split]["camid"], strict=True)
        )
        on_disk = {Path(path).relative_to(root).as_posix(): Path(path).read_bytes() for path in loaded[split]["path"]}
        assert on_disk == dict(zip(tiny[split]["path"], raw_bytes(tiny[split]), strict=True))
    # Atomic writes: no overwrite without asking, and no staging folders left behind either way.
    with pytest.raises(FileExistsError, match="already exists"):
        write_market_layout(root, TINY, progress=False)
    write_market_layout(root, TINY, overwrite=True, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]


def test_image_folder_round_trip(tiny, tmp_path):
    root = write_image_folder(tmp_path / "pool", TINY, progress=False)
    assert all(path.parent.parent == root for path in root.rglob("*.jpg"))  # nested one level, LUPerson-style
    loaded = load_reid_dataset("image_folder", root)["unlabelled"]
    assert loaded.num_rows == TINY.unlabelled
    assert set(loaded["pid"]) == set(loaded["camid"]) == {-1}
    assert sorted(Path(p).read_bytes() for p in loaded["path"]) == sorted(raw_bytes(tiny["unlabelled"]))


def test_preview_grid(tmp_path):
    path = render_preview(tmp_path / "docs" / "preview.png", TINY, identities=4, cameras=2)
    with Image.open(path) as image:
        height, width = TINY.image_size
        assert image.height > 2 * height and 4 * width < image.width < 5 * width + 100
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 50  # not blank


def test_synth_command(tmp_path, capsys):
    size = ["--train-ids", "3", "--test-ids", "2", "--cameras", "2", "--distractors", "1", "--image-size", "64x32"]
    assert main(["synth", str(tmp_path / "m"), *size]) == 0
    assert len(list((tmp_path / "m" / "query").iterdir())) == 4
    assert main(["synth", str(tmp_path / "f"), "--format", "folder", "--unlabelled", "3", *size]) == 0
    assert len(list((tmp_path / "f").rglob("*.jpg"))) == 3
    assert main(["synth", "--preview", str(tmp_path / "p.png"), *size]) == 0
    assert Image.open(io.BytesIO((tmp_path / "p.png").read_bytes())).format == "PNG"
    assert main(["synth", str(tmp_path / "m"), *size]) == 2
    assert main(["synth", "--seed", "x", "--preview", str(tmp_path / "q.png")]) == 2
    errors = capsys.readouterr().err
    assert "already exists" in errors and "seed='x' is not a valid int" in errors
