"""Model resolution, ``pass_hub.embed`` / ``embed_files``, embedding files, gallery search and its on-disk index."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

import pass_hub
from pass_hub.atomic import atomic_file
from pass_hub.cli import main
from pass_hub.data import REID_FEATURES, SkippedFilesWarning
from pass_hub.deployment.embedder import load_reid_model
from pass_hub.deployment.embedding import ImageEmbeddings
from pass_hub.deployment.gallery import GalleryIndex
from pass_hub.deployment.images import list_image_paths

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2)


def person(seed: int, size: tuple[int, int] = (160, 70)) -> Image.Image:
    """A random crop with a per-image colour cast, so that different seeds give clearly different embeddings."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 80, (*size, 3))
    return Image.fromarray((noise + rng.integers(0, 175, 3)).astype(np.uint8))


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = pass_hub.PassViTModel(pass_hub.PassViTConfig(**TINY))
    return pass_hub.save_hub_folder(model, tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def model(folder) -> pass_hub.ReIDEmbedder:
    return load_reid_model(folder)


@pytest.fixture
def gallery(tmp_path) -> Path:
    """8 readable images (two in a sub-folder), a non-image and a truncated JPEG with image names, a text file."""
    root = tmp_path / "gallery"
    (root / "cam2").mkdir(parents=True)
    for index in range(8):
        person(index).save(root / ("cam2" if index >= 6 else "") / f"{index:04d}.jpg")
    (root / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "truncated.jpg").write_bytes(jpeg_bytes(person(99))[:300])
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_load_reid_model_resolves_every_form(tmp_path, folder, model):
    assert isinstance(model.model, pass_hub.PassViTModel) and model.normalize
    assert model.preprocessing == pass_hub.inference.Preprocessing((256, 128))
    pixels = torch.randn(2, 3, 256, 128)

    # A weights file in any layout convert reads (here timm's) gives the same embedder; convert infers
    # D/64 attention heads, so this backbone is 128 wide.
    backbone = load_reid_model(pass_hub.PassViTModel(pass_hub.PassViTConfig(**{**TINY, "hidden_size": 128})))
    checkpoint = tmp_path / "backbone.pth"
    torch.save(backbone.model.vit.state_dict(), checkpoint)
    from_checkpoint = load_reid_model(checkpoint)
    assert torch.allclose(from_checkpoint(pixels), backbone(pixels), atol=1e-6)
    assert from_checkpoint.fingerprint() == backbone.fingerprint()

    # A fine-tuned folder loads as PassViTForReID and keeps its configured feature and normalisation.
    config = pass_hub.PassViTConfig(**TINY, num_labels=4, reid_feature="after_neck", normalize_embeddings=False)
    reid = pass_hub.PassViTForReID(config).eval()
    reid_folder = pass_hub.save_hub_folder(reid, tmp_path / "reid")
    loaded = load_reid_model(reid_folder)
    assert isinstance(loaded.model, pass_hub.PassViTForReID) and not loaded.normalize
    with torch.no_grad():
        assert torch.allclose(loaded(pixels), reid(pixels).features_after_neck, atol=1e-5)
    assert load_reid_model(reid_folder, normalize=True)(pixels).norm(dim=1).allclose(torch.ones(2))

    timm_model = load_reid_model("pass_vit_tiny", pretrained=False)
    assert timm_model.embedding_size == 384 and timm_model(pixels[:1]).shape == (1, 384)
    with pytest.raises(ValueError, match="no published weights"):
        load_reid_model("pass_vit_tiny")
    with pytest.raises(FileNotFoundError, match="no such folder or file, and not a timm name"):
        load_reid_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="OnnxReIDModel"):
        load_reid_model(tmp_path / "model.onnx")


def test_embed_accepts_paths_pil_and_arrays(tmp_path, model):
    image = person(1)
    image.save(tmp_path / "a.png")
    from_path = pass_hub.embed(tmp_path / "a.png", model=model)
    from_pil = pass_hub.embed([image, image.convert("L")], model=model)
    from_array = pass_hub.embed([np.asarray(image)], model=model, batch_size=1)
    assert from_path.shape == (1, 128)
    assert torch.equal(from_path[0], from_pil[0]) and torch.equal(from_path, from_array)
    assert not torch.allclose(from_pil[0], from_pil[1])
    assert torch.allclose(from_pil.norm(dim=1), torch.ones(2))

    # The same numbers as the model on the processor shipped in the folder (what the model card tells users).
    processor = pass_hub.PassViTImageProcessorPil(size={"height": 256, "width": 128})
    with torch.no_grad():
        expected = model(processor([image], return_tensors="pt")["pixel_values"])
    assert torch.allclose(from_pil[:1], expected, atol=1e-6)

    with pytest.raises(ValueError, match="uint8"):
        pass_hub.embed([np.zeros((10, 10, 3), np.float32)], model=model)
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"bad\.jpg: not an image"):
        pass_hub.embed([tmp_path / "a.png", tmp_path / "bad.jpg"], model=model)


def test_embed_files_skips_unreadable_images_and_keeps_names_aligned(gallery, model):
    with pytest.warns(SkippedFilesWarning, match=r"skipped 2 of 10 .*broken\.jpg \(not an image\).*truncated\.jpg"):
        result = pass_hub.embed_files([gallery, gallery / "0001.jpg"], model, batch_size=3, progress=False)
    assert result.names == [str(p) for p in sorted(gallery.rglob("0*.jpg"))]  # 0001.jpg is listed once
    assert [Path(name).name for name, _ in result.skipped] == ["broken.jpg", "truncated.jpg"]
    assert result.embeddings.shape == (8, 128)
    one_by_one = pass_hub.embed(result.names, model=model)
    assert torch.allclose(result.embeddings, one_by_one, atol=1e-6)
    assert result.metadata["model_fingerprint"] == model.fingerprint() and result.metadata["normalized"] == "true"

    with pytest.raises(FileNotFoundError, match="no file matches"):
        list_image_paths(str(gallery / "*.png"))
    with pytest.warns(SkippedFilesWarning), pytest.raises(ValueError, match="none of the 1 image"):
        pass_hub.embed_files(gallery / "broken.jpg", model, progress=False)


@pytest.mark.filterwarnings("ignore::pass_hub.data.SkippedFilesWarning")
def test_embedding_files_round_trip(tmp_path, gallery, model):
    result = pass_hub.embed_files(f"{gallery}/*.jpg", model, progress=False)
    for name in ("e.safetensors", "e.npy"):
        path = result.save(tmp_path / name)
        loaded = ImageEmbeddings.load(path)
        assert loaded.names == result.names and torch.equal(loaded.embeddings, result.embeddings)
        assert loaded.metadata == result.metadata
        with pytest.raises(FileExistsError, match="already exist"):
            result.save(path)
    assert (tmp_path / "e.json").is_file()
    with pytest.raises(ValueError, match=r"must end with \.safetensors or \.npy"):
        result.save(tmp_path / "e.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.json", "e.npy", "e.safetensors", "gallery"]


def test_atomic_file_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("crash while writing")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_cli_embed_writes_names_with_rows(tmp_path, gallery, folder, capsys):
    out = tmp_path / "feats.safetensors"
    assert main(["embed", str(folder), str(gallery), "--out", str(out), "--batch-size", "4"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "8 embeddings of 128 values (L2-normalised), 2 skipped" in captured.out
    assert "warning: skipped 2 of 10" in captured.err and "broken.jpg" in captured.err
    saved = ImageEmbeddings.load(out)
    assert torch.allclose(saved.embeddings, pass_hub.embed(saved.names, model=folder), atol=1e-6)

    npy = tmp_path / "raw.npy"
    assert main(["embed", str(folder), f"{gallery}/cam2/*.jpg", "--out", str(npy), "--raw"]) == 0
    raw = ImageEmbeddings.load(npy)
    assert raw.names == [str(gallery / "cam2" / "0006.jpg"), str(gallery / "cam2" / "0007.jpg")]
    assert raw.metadata["normalized"] == "false" and not torch.allclose(raw.embeddings.norm(dim=1), torch.ones(2))

    assert main(["embed", str(folder), str(gallery), "--out", str(out)]) == 2
    assert "already exist" in capsys.readouterr().err
    assert main(["embed", str(folder), str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.npy")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_cli_embed_dataset_split(tmp_path, folder, capsys):
    images = [{"bytes": jpeg_bytes(person(i)), "path": None} for i in range(3)] + [{"bytes": b"junk", "path": None}]
    split = Dataset.from_dict(
        {"image": images, "pid": [5, 5, 7, 9], "camid": [0, 1, 0, 1], "path": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]},
        features=REID_FEATURES,
    )
    split.save_to_disk(tmp_path / "saved")
    out = tmp_path / "query.safetensors"
    assert main(["embed", str(folder), "--dataset", str(tmp_path / "saved"), "--out", str(out)]) == 0
    assert "d.jpg (not an image)" in capsys.readouterr().err
    saved = ImageEmbeddings.load(out)
    assert (saved.names, saved.pids, saved.camids) == (["a.jpg", "b.jpg", "c.jpg"], [5, 5, 7], [0, 1, 0])
    expected = pass_hub.embed([Image.open(io.BytesIO(image["bytes"])) for image in images[:3]], model=folder)
    assert torch.allclose(saved.embeddings, expected, atol=1e-6)

    spec = "synthetic:train_ids=2,test_ids=2,cameras=2,images_per_camera=2,distractors=1,unlabelled=0,image_size=64x32"
    assert main(["embed", str(folder), "--dataset", spec, "--out", str(tmp_path / "q.npy")]) == 2
    assert "choose one (CLI: --split)" in capsys.readouterr().err
    assert main(["embed", str(folder), "--dataset", spec, "--split", "query", "--out", str(tmp_path / "q.npy")]) == 0
    query = ImageEmbeddings.load(tmp_path / "q.npy")
    assert len(query.names) == len(query.pids) == query.embeddings.shape[0] > 0


def test_search_ranks_an_exact_copy_first(tmp_path, gallery, folder, capsys):
    query = tmp_path / "query.jpg"
    shutil.copy(gallery / "0003.jpg", query)
    draw = tmp_path / "top3.png"
    args = ["search", str(folder), "--gallery", str(gallery), "--query", str(query), "--top-k", "3"]
    assert main([*args, "--draw", str(draw)]) == 0
    out = capsys.readouterr().out
    table = out.split("rank  cosine  gallery\n")[1].splitlines()
    assert len(table) >= 3 and table[0].split()[:3] == ["1", "1.000", str(gallery / "0003.jpg")]
    assert "gallery: 8 images, index built" in out
    with Image.open(draw) as picture:
        assert picture.width > picture.height  # one row: the query and its 3 matches

    assert main(["search", str(folder), "--gallery", str(gallery), "--query", str(tmp_path / "nope.jpg")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::pass_hub.data.SkippedFilesWarning")
def test_gallery_index_is_reused_until_the_model_or_gallery_changes(tmp_path, gallery, folder, model):
    cache = tmp_path / "cache"
    first = GalleryIndex.build(gallery, model, index_path=cache, progress=False)
    assert first.status == "built" and first.path.parent == cache and len(first) == 8
    stamp = first.path.stat().st_mtime_ns

    again = GalleryIndex.build(gallery, model, index_path=cache, progress=False)
    assert again.status == "reused" and again.path.stat().st_mtime_ns == stamp
    assert again.names == first.names and torch.equal(again.vectors, first.vectors)

    person(42).save(gallery / "0042.jpg")
    grown = GalleryIndex.build(gallery, model, index_path=cache, progress=False)
    assert grown.status == "rebuilt" and len(grown) == 9 and grown.path == first.path

    later = (gallery / "0001.jpg").stat().st_mtime_ns + 10**9
    person(43).save(gallery / "0001.jpg")  # same name, new content
    os.utime(gallery / "0001.jpg", ns=(later, later))
    assert GalleryIndex.build(gallery, model, index_path=cache, progress=False).status == "rebuilt"

    torch.manual_seed(1)
    other = load_reid_model(pass_hub.PassViTModel(pass_hub.PassViTConfig(**TINY)))
    assert GalleryIndex.build(gallery, other, index_path=cache, progress=False).status == "built"
    assert len(list(cache.iterdir())) == 2  # one file per model in an index folder

    single = tmp_path / "one.safetensors"
    assert GalleryIndex.build(gallery, model, index_path=single, progress=False).status == "built"
    assert GalleryIndex.build(gallery, other, index_path=single, progress=False).status == "rebuilt"


def test_in_memory_gallery_for_a_tracker(model):
    crops = [np.asarray(person(seed)) for seed in range(5)]
    index = GalleryIndex(ImageEmbeddings(pass_hub.embed(crops, model=model), [f"track {i}" for i in range(5)]))
    result = index.search(pass_hub.embed(crops[3:], model=model), top_k=10)
    assert result.indices.shape == (2, 5) and result.indices[:, 0].tolist() == [3, 4]
    assert torch.allclose(result.similarities[:, 0], torch.ones(2))
    assert (result.similarities[:, :-1] >= result.similarities[:, 1:]).all()
    with pytest.raises(ValueError, match="embed both with the same model"):
        index.search(torch.randn(1, 32))


@pytest.mark.parametrize("command", ["embed", "search", "export-onnx", "eval"])
def test_every_model_command_takes_the_heads_of_an_original_checkpoint(tmp_path, gallery, command, capsys):
    # 96 wide: not 64 values per head, so the file alone does not say 3 heads.
    config = pass_hub.PassViTConfig(hidden_size=96, num_hidden_layers=1, num_attention_heads=3, image_size=(64, 32))
    checkpoint = tmp_path / "narrow.pth"
    torch.save(pass_hub.PassViTModel(config).vit.state_dict(), checkpoint)

    def argv(model: str, out: str) -> list[str]:
        rest = {
            "embed": [str(gallery / "0000.jpg"), "--out", str(tmp_path / f"{out}.npy")],
            "search": ["--gallery", str(gallery / "cam2"), "--query", str(gallery / "0000.jpg")],
            "export-onnx": [str(tmp_path / f"{out}.onnx")],
            "eval": ["--data", "synthetic:train_ids=2,test_ids=2,cameras=2,distractors=0,unlabelled=0,"
                     "image_size=64x32", "--num-workers", "0", "--no-calibration"],
        }[command]
        return [command, *(["--model"] if command == "eval" else []), model, *rest]

    assert main(argv(str(checkpoint), "a")) == 2
    assert "width 96 is not a multiple of 64" in (err := capsys.readouterr().err) and "--num_heads" in err
    assert main([*argv(str(checkpoint), "b"), "--num-heads", "3"]) == 0, capsys.readouterr().err
    assert main([*argv("pass_vit_tiny", "c"), "--num_heads", "3"]) == 2
    assert "applies to original checkpoint files" in capsys.readouterr().err
