"""Loaders of on-disk ReID datasets, on fake trees that use each benchmark's real naming and SynthPerson images."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import pytest
from datasets import Image as ImageFeature
from PIL import Image

from pass_hub.data import (
    CUHK03NP,
    DUKEMTMC,
    MARKET1501,
    MSMT17,
    SkippedFilesWarning,
    SynthPersonConfig,
    detect_layout,
    generate_synthperson,
    load_dataset_spec,
    load_reid_dataset,
    relabel_pids,
    write_market_layout,
)

CONFIG = SynthPersonConfig(
    train_ids=4, test_ids=3, cameras=2, images_per_camera=2, distractors=2, unlabelled=0, image_size=(64, 32)
)
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
# (pid, camera 1-based) of the fake trees: 3 train images of 2 ids, 2 queries, 3 gallery images of them.
TREE = {
    "train": [(1, 1), (1, 2), (5, 2)],
    "query": [(7, 1), (8, 2)],
    "gallery": [(7, 2), (8, 1), (8, 2)],
}


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """SynthPerson JPEGs to copy under the file names of each benchmark."""
    train = generate_synthperson(CONFIG, splits=["train"], progress=False)["train"]
    return [image["bytes"] for image in train.cast_column("image", ImageFeature(decode=False))["image"]]


def as_png(data: bytes, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ids(split) -> list[tuple[int, int]]:
    return sorted(zip(split["pid"], split["camid"], strict=True))


def expected(split: str) -> list[tuple[int, int]]:
    return sorted((pid, camera - 1) for pid, camera in TREE[split])


def write_market_style_tree(root: Path, jpegs: list[bytes], name_of) -> Path:
    """Market-1501 folders with ``TREE``'s images named by ``name_of(pid, camera, index)``."""
    for split, images in TREE.items():
        for index, (pid, camera) in enumerate(images):
            write(root / SPLIT_FOLDERS[split] / name_of(pid, camera - 1, index), jpegs[index])
    return root


def test_market1501_junk_distractors_and_os_files(tmp_path, jpegs):
    root = tmp_path / "Market-1501-v15.09.15"
    write_market_style_tree(
        root, jpegs, lambda pid, camid, i: MARKET1501.format(pid, camid, sequence=1, frame=25 * i + 1, box=1)
    )
    write(root / "bounding_box_test" / "-1_c1s1_000401_03.jpg", jpegs[0])  # junk: dropped
    write(root / "bounding_box_test" / "0000_c2s1_000151_01.jpg", jpegs[1])  # distractor: kept in the gallery
    write(root / "bounding_box_test" / "Thumbs.db", b"windows thumbnail cache")  # ignored
    write(root / "gt_bbox" / "0007_c1s1_000001_00.jpg", jpegs[0])  # not a split: ignored

    data = load_reid_dataset("market1501", tmp_path)  # the parent folder is found too
    assert ids(data["train"]) == expected("train")
    assert ids(data["query"]) == expected("query")
    assert ids(data["gallery"]) == sorted([*expected("gallery"), (0, 1)])
    assert "1 junk image(s) dropped" in data["gallery"].info.description
    assert all(Path(path).is_absolute() for path in data["train"]["path"])
    assert data["train"][0]["image"].size == (32, 64)


def test_market_layout_written_by_synthperson_loads_with_every_distractor(tmp_path):
    root = write_market_layout(tmp_path / "synth", CONFIG, progress=False)
    data = load_reid_dataset("market1501", root)
    assert list(data["gallery"]["pid"]).count(0) == CONFIG.distractors
    assert set(data["train"]["pid"]) == set(range(1, CONFIG.train_ids + 1))


def test_dukemtmc(tmp_path, jpegs):
    root = write_market_style_tree(
        tmp_path / "DukeMTMC-reID", jpegs, lambda pid, camid, i: DUKEMTMC.format(pid, camid, frame=46182 + i)
    )
    assert DUKEMTMC.parse("0001_c2_f0046182.jpg") == (1, 1)
    data = load_reid_dataset("dukemtmc", root)
    assert {split: ids(data[split]) for split in data} == {split: expected(split) for split in TREE}


@pytest.mark.parametrize("subset", ["labeled", "detected"])
def test_cuhk03np_subsets(tmp_path, jpegs, subset):
    pngs = [as_png(data) for data in jpegs]
    for name in ("labeled", "detected"):
        write_market_style_tree(
            tmp_path / "cuhk03-np" / name, pngs, lambda pid, camid, i: CUHK03NP.format(pid, camid, index=i + 1)
        )
    (tmp_path / "cuhk03-np" / "detected" / "query" / "0007_c1_1.png").unlink()  # the subsets really differ
    data = load_reid_dataset("cuhk03np", tmp_path, subset=subset)
    assert data["query"].num_rows == (2 if subset == "labeled" else 1)
    assert data["train"].info.config_name == subset
    assert ids(data["gallery"]) == expected("gallery")
    assert load_dataset_spec(f"cuhk03np-{subset}:{tmp_path / 'cuhk03-np'}")["query"].num_rows == data["query"].num_rows
    assert load_reid_dataset("cuhk03np", tmp_path / "cuhk03-np" / subset)["train"].info.config_name == subset


def write_msmt17(root: Path, jpegs: list[bytes], version: str) -> Path:
    """An MSMT17 tree: image folders named by pid, list files ``relative/path pid``; train split over two lists."""
    train_folder, test_folder = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    lists = {"list_train.txt": TREE["train"][:2], "list_val.txt": TREE["train"][2:]}
    lists |= {"list_query.txt": TREE["query"], "list_gallery.txt": TREE["gallery"]}
    for list_name, images in lists.items():
        folder = train_folder if list_name in ("list_train.txt", "list_val.txt") else test_folder
        lines = []
        for index, (pid, camera) in enumerate(images):
            name = MSMT17.format(pid, camera - 1, index=index, time="0303morning", frame=8 + index, box=0)
            write(root / folder / f"{pid:04d}" / name, jpegs[index])
            lines.append(f"{pid:04d}/{name} {pid}")
        (root / list_name).write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_versions(tmp_path, jpegs, version):
    root = write_msmt17(tmp_path / f"MSMT17_{version}", jpegs, version)
    data = load_reid_dataset("msmt17", tmp_path)
    assert {split: ids(data[split]) for split in data} == {split: expected(split) for split in TREE}
    assert all(data[split].info.config_name == version for split in data)
    assert f"MSMT17 {version}" in data["train"].info.description
    assert detect_layout(root) == "msmt17"


def test_msmt17_both_versions_need_a_choice_and_bad_lines_are_reported(tmp_path, jpegs):
    write_msmt17(tmp_path / "MSMT17_V1", jpegs, "V1")
    write_msmt17(tmp_path / "MSMT17_V2", jpegs, "V2")
    with pytest.raises(FileNotFoundError, match="several candidates"):
        load_reid_dataset("msmt17", tmp_path)
    with (tmp_path / "MSMT17_V2" / "list_gallery.txt").open("a") as handle:
        handle.write("0008/bad_name.jpg 8\n0008/0008_009_02_0303noon_0099_0.jpg 8\nonly-one-field\n")
    pattern = r"skipped 3 .*bad_name.jpg .unparseable.*0099_0.jpg .listed in list_gallery.txt:5 but missing.*txt:6"
    with pytest.warns(SkippedFilesWarning, match=pattern):
        data = load_dataset_spec(f"msmt17-v2:{tmp_path}")
    assert data["gallery"].info.config_name == "V2"
    assert data["gallery"].num_rows == 3


def test_image_folder_is_recursive_and_unlabelled(tmp_path, jpegs):
    for index, data in enumerate(jpegs[:5]):
        write(tmp_path / "pool" / f"video{index % 2}" / "sub" / f"{index}.jpg", data)
    write(tmp_path / "pool" / "annotations.pkl", b"not an image, ignored")
    data = load_dataset_spec(f"image_folder:{tmp_path / 'pool'}")
    assert list(data) == ["unlabelled"]
    assert data["unlabelled"].num_rows == 5
    assert set(data["unlabelled"]["pid"]) == set(data["unlabelled"]["camid"]) == {-1}
    with pytest.raises(ValueError, match="pid < 0"):
        relabel_pids(data["unlabelled"])


def test_custom_identity_folders_with_and_without_cameras(tmp_path, jpegs):
    write(tmp_path / "people" / "train" / "alice" / "alice_c2_001.jpg", jpegs[0])
    write(tmp_path / "people" / "train" / "alice" / "x.jpg", jpegs[1])
    write(tmp_path / "people" / "train" / "bob" / "cam3_17.jpg", jpegs[2])
    write(tmp_path / "people" / "query" / "bob" / "q.jpg", jpegs[3])
    write(tmp_path / "people" / "gallery" / "alice" / "g.png", as_png(jpegs[4]))
    write(tmp_path / "people" / "train" / "loose.jpg", jpegs[0])
    with pytest.warns(SkippedFilesWarning, match="loose.jpg .image outside an identity folder"):
        data = load_reid_dataset("custom", tmp_path / "people")
    assert ids(data["train"]) == [(1, -1), (1, 1), (2, 2)]  # names numbered in sorted order; cameras 0-based
    assert ids(data["query"]) == [(2, -1)] and ids(data["gallery"]) == [(1, -1)]

    write(tmp_path / "numbered" / "0012" / "a.jpg", jpegs[0])
    write(tmp_path / "numbered" / "0003" / "b.jpg", jpegs[1])
    data = load_reid_dataset("custom", tmp_path / "numbered")
    assert list(data) == ["train"] and ids(data["train"]) == [(3, -1), (12, -1)]


def test_custom_csv(tmp_path, jpegs):
    for index in range(4):
        write(tmp_path / "imgs" / f"{index}.jpg", jpegs[index])
    (tmp_path / "reid.csv").write_text(
        "path,pid,camid,split\nimgs/0.jpg,4,0,train\nimgs/1.jpg,4,,train\nimgs/2.jpg,9,1,query\n"
        f"{tmp_path / 'imgs' / '3.jpg'},9,0,gallery\nimgs/0.jpg,-1,0,gallery\nimgs/1.jpg,abc,0,train\n"
    )
    with pytest.warns(SkippedFilesWarning, match=r"skipped 1 .*reid.csv:7"):
        data = load_dataset_spec(str(tmp_path / "reid.csv"))
    assert ids(data["train"]) == [(4, -1), (4, 0)]
    assert ids(data["query"]) == [(9, 1)] and ids(data["gallery"]) == [(9, 0)]
    (tmp_path / "headerless.csv").write_text("imgs/0.jpg,5\nimgs/1.jpg,6,1\n")
    assert ids(load_reid_dataset("custom", tmp_path / "headerless.csv")["train"]) == [(5, -1), (6, 1)]


def test_bad_files_are_skipped_with_a_counted_warning_and_modes_converted(tmp_path, jpegs):
    root = write_market_style_tree(
        tmp_path / "market", jpegs, lambda pid, camid, i: MARKET1501.format(pid, camid, sequence=1, frame=i, box=1)
    )
    train = root / "bounding_box_train"
    write(train / "0001_c1s1_000100_01.jpg", jpegs[0][: len(jpegs[0]) // 2])  # truncated
    write(train / "0001_c1s1_000200_01.jpg", b"this is a text file")  # not an image
    write(train / "0001_c1s1_000300_01.png", b"")  # empty
    write(train / "photo_of_bob.jpg", jpegs[0])  # unparseable name
    write(train / "0005_c1s1_000400_01.png", as_png(jpegs[1], "L"))  # grayscale: converted
    write(train / "0005_c2s1_000500_01.png", as_png(jpegs[2], "RGBA"))  # RGBA: converted
    with pytest.warns(SkippedFilesWarning) as caught:
        data = load_reid_dataset("market1501", root)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "skipped 4 unusable file(s)" in message
    for name in ("000100_01.jpg (truncated JPEG", "000200_01.jpg (not an image)", "photo_of_bob.jpg (unparseable"):
        assert name in message
    assert data["train"].num_rows == len(TREE["train"]) + 2
    assert {data["train"][i]["image"].mode for i in range(data["train"].num_rows)} == {"RGB"}
    assert "2 non-RGB image(s) converted" in data["train"].info.description


def test_verify_levels(tmp_path, jpegs):
    folder = tmp_path / "pool"
    write(folder / "good.jpg", jpegs[0])
    write(folder / "cut.jpg", jpegs[1][:-100])
    with pytest.warns(SkippedFilesWarning, match=r"cut.jpg \(unreadable image"):
        assert load_reid_dataset("image_folder", folder, verify="full")["unlabelled"].num_rows == 1
    assert load_reid_dataset("image_folder", folder, verify="none")["unlabelled"].num_rows == 2  # trusted as is
    with pytest.raises(ValueError, match="verify must be one of"):
        load_reid_dataset("image_folder", folder, verify="fast")


def test_no_usable_images_is_a_clear_error(tmp_path, jpegs):
    root = write_market_style_tree(
        tmp_path / "market", jpegs, lambda pid, camid, i: MARKET1501.format(pid, camid, sequence=1, frame=i, box=1)
    )
    for path in (root / "query").iterdir():
        path.write_bytes(b"broken")
    with warnings.catch_warnings(record=True), pytest.raises(ValueError, match="no usable images in split 'query'"):
        load_reid_dataset("market1501", root)
    with pytest.raises(ValueError, match="no usable images in split 'unlabelled'"):
        load_reid_dataset("image_folder", write(tmp_path / "empty" / "readme.txt", b"").parent)
    with pytest.raises(FileNotFoundError, match=r"expected bounding_box_train/, query/, bounding_box_test/"):
        load_reid_dataset("dukemtmc", tmp_path / "empty")


def test_relabel_pids_is_contiguous_and_sorted(tmp_path, jpegs):
    root = write_market_style_tree(
        tmp_path / "m", jpegs, lambda pid, camid, i: MARKET1501.format(pid, camid, sequence=1, frame=i, box=1)
    )
    train, mapping = relabel_pids(load_reid_dataset("market1501", root)["train"])
    assert mapping == {1: 0, 5: 1}
    assert [mapping[pid] for pid in train["pid"]] == list(train["label"])


def test_specs_and_layout_detection(tmp_path, jpegs):
    market = write_market_style_tree(
        tmp_path / "market", jpegs, lambda pid, camid, i: MARKET1501.format(pid, camid, sequence=1, frame=i, box=1)
    )
    duke = write_market_style_tree(tmp_path / "duke", jpegs, lambda pid, camid, i: DUKEMTMC.format(pid, camid, frame=i))
    assert (detect_layout(market), detect_layout(duke), detect_layout(tmp_path / "x.csv")) == (
        "market1501",
        "dukemtmc",
        "custom",
    )
    assert ids(load_dataset_spec(str(duke))["query"]) == expected("query")
    assert ids(load_dataset_spec(f"market1501:{market}")["train"]) == expected("train")
    small = load_dataset_spec("synthetic:train_ids=3,test_ids=2,cameras=2,distractors=0,unlabelled=2,image_size=64x32")
    assert set(small["train"]["pid"]) == {1, 2, 3} and small["unlabelled"].num_rows == 2
    with pytest.raises(ValueError, match=r"cannot tell which dataset .*image_folder"):
        load_dataset_spec(str(write(tmp_path / "plain" / "a.jpg", jpegs[0]).parent))
    with pytest.raises(ValueError, match=r"unknown dataset spec 'market:/nowhere'.*market1501"):
        load_dataset_spec("market:/nowhere")
    with pytest.raises(ValueError, match="unknown SynthPerson option 'ids'"):
        load_dataset_spec("synthetic:ids=3")
    with pytest.raises(ValueError, match="unknown ReID dataset 'viper'"):
        load_reid_dataset("viper", tmp_path)
