"""Tracking: the SynthPerson video (MOTChallenge layout, exact ground truth), PASS as BoxMOT's appearance encoder
(through BoxMOT's own TrackingPipeline), TrackEval's scores and the ``pass-hub track`` command. The BoxMOT tests
run when the tracking extra is installed (``make test`` installs it)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from script_runs import ROOT

import pass_hub
from pass_hub import cli
from pass_hub.data.motchallenge import DETECTIONS_FILE, GT_FILE, read_boxes, read_sequence_info, write_boxes
from pass_hub.data.video import SynthVideoConfig, detections_from_ground_truth, plan_walks, write_mot_sequence

requires_tracking = pytest.mark.skipif(
    importlib.util.find_spec("boxmot") is None or importlib.util.find_spec("trackeval") is None,
    reason="needs the tracking extra: pip install 'pass-hub[tracking]'",
)
SMALL_VIDEO = SynthVideoConfig(frames=40, people=5, width=320, height=180)
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1, "image_size": (64, 32)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``left, top, width, height`` boxes."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    overlap = max(width, 0) * max(height, 0)
    return overlap / (a[2] * a[3] + b[2] * b[3] - overlap)


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    return write_mot_sequence(tmp_path_factory.mktemp("video") / "seq", SMALL_VIDEO, progress=False)


@pytest.fixture(scope="module")
def reid_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = pass_hub.PassViTForReID(pass_hub.PassViTConfig(**TINY, num_labels=5)).eval()
    return pass_hub.save_hub_folder(model, tmp_path_factory.mktemp("models") / "reid")


def test_the_video_is_a_pure_function_of_its_config(sequence, tmp_path):
    again = write_mot_sequence(tmp_path / "again", SMALL_VIDEO, progress=False)
    for name in (GT_FILE, DETECTIONS_FILE, "seqinfo.ini", "img1/000001.jpg", "img1/000040.jpg"):
        assert (again / name).read_bytes() == (sequence / name).read_bytes(), name
    other = write_mot_sequence(tmp_path / "seed1", SynthVideoConfig(**{**SMALL_VIDEO.__dict__, "seed": 1}),
                               progress=False)
    assert (other / GT_FILE).read_bytes() != (sequence / GT_FILE).read_bytes()


def test_the_video_is_a_motchallenge_sequence_with_exact_ground_truth(sequence):
    info = read_sequence_info(sequence)
    assert (info.frames, info.width, info.height, info.frame_rate) == (40, 320, 180, 30)
    assert sorted(p.name for p in (sequence / "img1").iterdir()) == [f"{f:06d}.jpg" for f in range(1, 41)]
    with Image.open(sequence / "img1" / "000001.jpg") as frame:
        assert frame.size == (320, 180)
    gt = read_boxes(sequence / GT_FILE)
    assert gt.shape[1] == 9 and set(gt[:, 6]) == {1} and set(gt[:, 7]) == {1}
    assert (gt[:, 8] >= 0).all() and (gt[:, 8] <= 1).all() and (gt[:, 8] < 0.5).any()  # someone is hidden
    assert (gt[:, 2] >= 0).all() and (gt[:, 2] + gt[:, 4] <= 320).all() and (gt[:, 3] + gt[:, 5] <= 180).all()
    for frame in np.unique(gt[:, 0]):  # one box per person and frame
        ids = gt[gt[:, 0] == frame, 1]
        assert len(ids) == len(set(ids))
    det = read_boxes(sequence / DETECTIONS_FILE)
    assert det.shape[1] == 10 and (det[:, 1] == -1).all() and len(det) < len(gt)
    assert ((det[:, 6] >= 0) & (det[:, 6] <= 1)).all()


def test_the_default_video_has_crossings_occlusions_and_people_coming_back():
    config = SynthVideoConfig()
    walks = plan_walks(config)
    seen = {}
    for walk in walks:
        if walk.start <= config.frames - 1 and walk.end >= 0:
            seen.setdefault(walk.pid, []).append(walk)
    assert len(seen) == config.people
    comebacks = [pid for pid, passes in seen.items() if len(passes) >= 2]
    assert len(comebacks) >= config.people // 2, "most people should leave the scene and come back"
    assert any(later.start > earlier.end for passes in seen.values() for earlier, later in itertools.pairwise(passes))
    # Crossings: people walking opposite ways pass each other at nearly the same depth while both are in view.
    crossings = 0
    for a in walks:
        for b in walks:
            if a.pid < b.pid and np.sign(a.speed_x) != np.sign(b.speed_x):
                both = range(max(a.start, b.start, 0), min(a.end, b.end, config.frames - 1) + 1)
                gaps = [a.feet(t)[0] - b.feet(t)[0] for t in both]
                close = [abs(a.feet(t)[1] - b.feet(t)[1]) < 0.1 * config.height for t in both]
                if gaps and np.sign(gaps[0]) != np.sign(gaps[-1]) and any(close):
                    crossings += 1
    assert crossings >= 3


def test_detections_from_ground_truth_keep_miss_and_jitter_as_asked():
    gt = np.array([[1, 1, 10, 20, 30, 60, 1, 1, 1.0], [1, 2, 300, 20, 40, 60, 1, 1, 0.6],
                   [2, 1, 12, 20, 30, 60, 1, 1, 0.2], [2, 2, 60, 20, 30, 60, 0, 1, 1.0]])
    exact = detections_from_ground_truth(gt, image_size=(100, 320), min_visibility=0.25, box_noise=0, drop=0, seed=0)
    # The hidden person (0.2) and the row marked not to consider are missed; the box past the edge is clipped.
    assert exact[:, [0, 2, 3, 4, 5]].tolist() == [[1, 10, 20, 30, 60], [1, 300, 20, 20, 60]]
    assert exact[0, 6] > exact[1, 6]  # the occluded person scores lower
    many = np.repeat(gt[:1], 2000, axis=0)
    kept = detections_from_ground_truth(many, image_size=(100, 320), min_visibility=0, box_noise=0.05, drop=0.3,
                                        seed=1)
    assert 0.65 < len(kept) / 2000 < 0.75
    assert 0.04 * 30 < np.std(kept[:, 2]) < 0.06 * 30
    same = detections_from_ground_truth(many, image_size=(100, 320), min_visibility=0, box_noise=0.05, drop=0.3,
                                        seed=1)
    assert np.array_equal(kept, same)


def test_motchallenge_files_with_errors_are_named(tmp_path):
    (tmp_path / "bad.txt").write_text("1,2,3,4,5,6,1\n2,x,3,4,5,6,1\n")
    with pytest.raises(ValueError, match=r"bad.txt, line 2: .* not comma-separated numbers"):
        read_boxes(tmp_path / "bad.txt")
    (tmp_path / "short.txt").write_text("1,2,3\n")
    with pytest.raises(ValueError, match=r"short.txt, line 1: 3 values, expected at least 7"):
        read_boxes(tmp_path / "short.txt")
    (tmp_path / "zero.txt").write_text("0,2,3,4,5,6,1\n")
    with pytest.raises(ValueError, match="frame 0 is not a 1-based frame number"):
        read_boxes(tmp_path / "zero.txt")
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nname=A\nseqLength=10\nimWidth=64\n")
    with pytest.raises(ValueError, match=r"seqinfo.ini has no imHeight="):
        read_sequence_info(tmp_path)
    with pytest.raises(FileNotFoundError, match="is not a MOTChallenge sequence"):
        read_sequence_info(tmp_path / "nowhere")
    assert read_boxes(write_boxes(tmp_path / "empty.txt", np.zeros((0, 10)))).shape == (0, 7)


def test_synth_video_command_and_its_options(tmp_path, capsys):
    out = tmp_path / "video"
    assert cli.main(["synth", str(out), "--video", "--frames", "3", "--people", "2", "--width", "96",
                     "--height", "64", "--preview", str(tmp_path / "preview.png")]) == 0
    assert read_sequence_info(out).frames == 3 and (tmp_path / "preview.png").is_file()
    assert cli.main(["synth", str(tmp_path / "x"), "--video", "--train-ids", "3"]) == 2
    assert "--train-ids only apply to the ReID images" in capsys.readouterr().err
    assert cli.main(["synth", str(tmp_path / "y"), "--frames", "3"]) == 2
    assert "--frames only apply to videos (--video)" in capsys.readouterr().err
    assert cli.main(["synth", str(tmp_path / "z"), "--video", "--drop", "1.5"]) == 2
    assert "drop in [0, 1)" in capsys.readouterr().err


def test_importing_tracking_without_the_extra_names_the_extra():
    # One process (each start imports torch): a None entry in sys.modules is how Python marks a module as not
    # importable; the command fails with the extra's name, the import says it too, and --help needs no BoxMOT.
    script = (
        "import sys; sys.modules['boxmot'] = sys.modules['trackeval'] = None\n"
        "from pass_hub import cli\n"
        "print('CODE', cli.main(['track', 'seq', '--tracker', 'bytetrack']))\n"
        "try:\n    import pass_hub.tracking\nexcept ImportError as err:\n    print('IMPORT', err)\n"
        "cli.main(['track', '--help'])\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr  # --help exits 0
    assert "CODE 2" in run.stdout and "pip install 'pass-hub[tracking]'" in run.stderr
    assert "IMPORT pass_hub.tracking needs boxmot, trackeval, from pass-hub's tracking extra: pip install " \
        "'pass-hub[tracking]'" in run.stdout
    assert "usage: pass-hub track" in run.stdout


@requires_tracking
def test_the_track_command_lists_boxmots_trackers():
    from pass_hub.track_command import TRACKER_NAMES
    from pass_hub.tracking import TRACKERS

    assert TRACKER_NAMES == TRACKERS


@requires_tracking
def test_the_encoder_gives_the_vector_embed_gives_for_the_same_crop_as_a_file(tmp_path, reid_folder):
    from boxmot.reid import AppearanceEncoder
    from boxmot.structures import Boxes, Detections, Frame

    from pass_hub.tracking import PassAppearanceEncoder

    encoder = PassAppearanceEncoder(reid_folder, batch_size=2)
    assert isinstance(encoder, AppearanceEncoder) and encoder.embedding_dim == 64
    assert encoder.embedder.feature == "after_neck"  # the deployment feature of a fine-tuned model
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    frame = Frame(torch.from_numpy(image).permute(2, 0, 1).contiguous(), sample_id="f1")
    boxes = torch.tensor([[10.4, 5.6, 50.2, 80.0], [100.0, 30.0, 140.0, 120.0], [60.2, 10.0, 60.4, 50.0],
                          [300.0, 300.0, 340.0, 380.0], [20.0, 20.0, 44.0, 70.0]])
    detections = Detections(Boxes(boxes), torch.full((5,), 0.9), torch.zeros(5, dtype=torch.int64), sample_id="f1")
    (vectors,) = encoder.encode([frame], [detections])
    assert vectors.shape == (5, 64) and vectors.dtype == torch.float32 and vectors.is_contiguous()
    assert torch.isfinite(vectors).all()  # a box thinner than a pixel and one outside the frame are handled
    # Crops saved as image files and embedded with pass_hub.embed: the same vectors.
    files = []
    for index, (x1, y1, x2, y2) in enumerate([(10, 6, 50, 80), (100, 30, 120, 90), (20, 20, 44, 70)]):
        files.append(tmp_path / f"crop{index}.png")
        Image.fromarray(image[y1:y2, x1:x2]).save(files[-1])
    from_files = pass_hub.embed(files, model=pass_hub.load_reid_model(reid_folder))
    assert (vectors[[0, 1, 4]] - from_files).abs().max() <= 1e-6
    # Frames are batched together; an empty frame gives (0, D); crop order and batch size change nothing.
    empty = Detections(Boxes(torch.zeros(0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), sample_id="f2")
    frame2 = Frame(frame.image, sample_id="f2")
    reordered = detections.select(torch.tensor([4, 0]))
    first, second, third = encoder.encode([frame, frame2, frame], [detections, empty, reordered])
    assert second.shape == (0, 64)
    assert torch.allclose(first, vectors, atol=1e-6) and torch.allclose(third, vectors[[4, 0]], atol=1e-6)
    assert encoder.crops == 5 + 7 and encoder.seconds > 0


@requires_tracking
def test_the_encoder_refuses_oriented_boxes_and_bad_settings(reid_folder):
    from boxmot.structures import Detections, Frame, OrientedBoxes

    from pass_hub.tracking import PassAppearanceEncoder

    encoder = PassAppearanceEncoder(reid_folder)
    frame = Frame(torch.zeros(3, 50, 50, dtype=torch.uint8), sample_id="f")
    rotated = Detections(OrientedBoxes(torch.tensor([[20.0, 20.0, 10.0, 30.0, 0.3]])), torch.ones(1),
                         torch.zeros(1, dtype=torch.int64), sample_id="f")
    with pytest.raises(ValueError, match=r"axis-aligned boxes.*OrientedBoxes"):
        encoder.encode([frame], [rotated])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        PassAppearanceEncoder(reid_folder, batch_size=0)


@requires_tracking
def test_the_encoder_takes_every_form_of_model(tmp_path, reid_folder):
    from pass_hub.tracking import PassAppearanceEncoder

    backbone = pass_hub.PassViTModel(pass_hub.PassViTConfig(**{**TINY, "hidden_size": 64, "num_attention_heads": 1}))
    checkpoint = tmp_path / "backbone.pth"
    torch.save(pass_hub.load_reid_model(backbone).model.vit.state_dict(), checkpoint)  # an original-style file
    assert PassAppearanceEncoder(checkpoint).embedding_dim == 128
    assert PassAppearanceEncoder(backbone).embedder.feature == "before_neck"  # no necks: the only feature
    assert PassAppearanceEncoder(reid_folder, feature="evaluation").embedder.feature == "before_neck"
    with pytest.raises(ValueError, match="has no published weights"):
        PassAppearanceEncoder("pass_vit_tiny")
    narrow = pass_hub.PassViTModel(pass_hub.PassViTConfig(**{**TINY, "hidden_size": 96, "num_attention_heads": 3}))
    torch.save(narrow.vit.state_dict(), tmp_path / "narrow.pth")  # 96 wide: the heads must be given
    assert PassAppearanceEncoder(tmp_path / "narrow.pth", num_heads=3).embedding_dim == 192
    assert cli.build_parser().parse_args(["track", "seq", "--num-heads", "3"]).num_heads == 3


@requires_tracking
def test_botsort_tracks_through_boxmots_pipeline_with_pass_and_with_its_onnx_export(tmp_path, sequence,
                                                                                     reid_folder):
    from pass_hub.tracking import PassAppearanceEncoder, track_sequence

    result = track_sequence(sequence, tracker="botsort", model=reid_folder, progress=False)
    assert result.crops == len(read_boxes(sequence / DETECTIONS_FILE)) and result.crops_per_second > 0
    assert result.tracks.shape[1] == 10 and len(result.tracks) > 0 and (result.tracks[:, 1] >= 1).all()
    assert set(result.scores) >= {"HOTA", "IDF1", "MOTA", "IDSW"} and 0 < result.scores["IDF1"] <= 1
    onnx = pass_hub.export_onnx(reid_folder, tmp_path / "reid.onnx").path
    from_onnx = track_sequence(sequence, tracker="botsort", model=PassAppearanceEncoder(onnx), progress=False)
    assert from_onnx.model == str(onnx) and from_onnx.crops == result.crops
    # The exported model's embeddings are the PyTorch ones to ONNX precision: the same tracks.
    assert np.allclose(from_onnx.tracks[:, :6], result.tracks[:, :6], atol=1e-3)


@requires_tracking
def test_trackers_without_appearance_and_the_errors_of_track_sequence(sequence, reid_folder):
    from pass_hub.tracking import load_detections, track_sequence

    bytetrack = track_sequence(sequence, tracker="bytetrack", progress=False, max_frames=20)
    assert bytetrack.crops == 0 and bytetrack.frames == 20 and bytetrack.tracks[:, 0].max() <= 20
    rows = load_detections(sequence)
    shuffled = rows[np.lexsort((np.arange(len(rows)), -rows[:, 0]))]  # frames in any order: each gets its own
    again = track_sequence(sequence, tracker="bytetrack", detections=shuffled, progress=False, max_frames=20)
    assert np.array_equal(again.tracks, bytetrack.tracks)
    with pytest.raises(ValueError, match="botsort uses appearance: give a model"):
        track_sequence(sequence, tracker="botsort", progress=False)
    motion_only = track_sequence(sequence, tracker="botsort", tracker_options={"use_embeddings": False},
                                 progress=False, max_frames=5)
    assert motion_only.crops == 0
    with pytest.raises(ValueError, match="bytetrack would ignore the model: it does not use appearance"):
        track_sequence(sequence, tracker="bytetrack", model=reid_folder, progress=False)
    with pytest.raises(ValueError, match="unknown tracker 'sort'"):
        track_sequence(sequence, tracker="sort", progress=False)
    with pytest.raises(ValueError, match="use source='gt'"):
        load_detections(sequence, "det", drop=0.1)


@requires_tracking
def test_tracks_of_exact_detections_sit_on_the_ground_truth_frame_by_frame(sequence):
    from pass_hub.tracking import load_detections, track_sequence

    exact = load_detections(sequence, "gt", min_visibility=0.0)
    result = track_sequence(sequence, tracker="bytetrack", detections=exact, progress=False)
    gt = read_boxes(sequence / GT_FILE)
    best = [max(iou(row[2:6], truth[2:6]) for truth in gt[gt[:, 0] == row[0]]) for row in result.tracks]
    # The tracker smooths boxes (median IoU 0.93); tracks a frame off give 0.84, another box convention far less.
    assert np.median(best) > 0.9 and result.scores["MOTA"] > 0.8


@requires_tracking
def test_bad_detections_and_options_are_refused_by_name(tmp_path, sequence):
    import shutil

    from pass_hub.tracking import load_detections, track_sequence

    rows = load_detections(sequence)
    for column, value, problem in [(4, 0.0, "a width or height <= 0"), (6, 1.5, "a score outside"),
                                   (0, 41, "a frame outside the sequence's 1..40"),
                                   (2, np.nan, "a value that is not finite")]:
        bad = rows.copy()
        bad[3, column] = value
        with pytest.raises(ValueError, match=f"detections: 1 detection\\(s\\) with {problem}"):
            track_sequence(sequence, tracker="bytetrack", detections=bad, progress=False)
    copy = shutil.copytree(sequence, tmp_path / "copy")
    (copy / DETECTIONS_FILE).write_text("1,-1,10,10,20,40,0.9\n2,-1,10,10,20,40,7\n")
    with pytest.raises(ValueError, match=r"det.txt: 1 detection\(s\) with a score outside \[0, 1\]"):
        load_detections(copy)
    with pytest.raises(ValueError, match=r"tracker bytetrack refused its options.*track_bufer.*track_buffer"):
        track_sequence(sequence, tracker="bytetrack", tracker_options={"track_bufer": 3}, progress=False)
    with pytest.raises(ValueError, match="botsort would ignore the model: its options turn appearance off"):
        track_sequence(sequence, tracker="botsort", model="m", tracker_options={"use_embeddings": False})
    with pytest.raises(ValueError, match="tracks must be rows of frame, id"):
        from pass_hub.tracking import score_tracks

        score_tracks(sequence, np.zeros(7))


@requires_tracking
def test_trackeval_scores_perfect_tracks_perfectly_and_counts_a_swap(sequence):
    from pass_hub.tracking import score_tracks

    gt = read_boxes(sequence / GT_FILE)
    perfect = np.column_stack([gt[:, :6], np.ones(len(gt)), -np.ones((len(gt), 3))])
    scores = score_tracks(sequence, perfect)
    assert scores["IDF1"] == 1.0 and scores["MOTA"] == 1.0 and scores["IDSW"] == 0 and scores["HOTA"] > 0.99
    swapped = perfect.copy()
    first, second = np.unique(gt[:, 1])[:2]
    late = swapped[:, 0] > 20
    swapped[late & (gt[:, 1] == first), 1], swapped[late & (gt[:, 1] == second), 1] = second, first
    scores = score_tracks(sequence, swapped)
    assert scores["IDSW"] >= 1 and scores["IDF1"] < 1.0 and scores["MOTA"] < 1.0
    assert score_tracks(sequence, perfect[perfect[:, 0] <= 10], frames=10)["IDF1"] == 1.0
    assert score_tracks(sequence, perfect[:, :6])["IDF1"] == 1.0  # no score column: scores of 1


@requires_tracking
def test_the_track_command_writes_tracks_scores_and_pictures(tmp_path, sequence, reid_folder, capsys):
    out = tmp_path / "tracks"
    code = cli.main(["track", str(sequence), "--model", str(reid_folder), "--output", str(out), "--frames", "12",
                     "--picture", str(tmp_path / "tracks.png"), "--video", str(tmp_path / "tracks.gif"),
                     "--tracker_option", "track_buffer=60"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "botsort on SYNTHPERSON-00 (12 frames, det/det.txt), appearance:" in printed
    assert "| HOTA | DetA | AssA | IDF1 |" in printed
    tracks = read_boxes(out / "SYNTHPERSON-00.txt")
    assert tracks[:, 0].max() <= 12 and (out / "SYNTHPERSON-00.json").is_file()
    with Image.open(tmp_path / "tracks.gif") as video:
        assert video.n_frames == 12
    assert (tmp_path / "tracks.png").is_file()
    summary = json.loads((out / "SYNTHPERSON-00.json").read_text())
    assert summary["tracker_options"] == {"track_buffer": 60} and summary["feature"] == "after_neck"
    assert cli.main(["track", str(sequence), "--tracker", "bytetrack", "--video", str(tmp_path / "x.webm")]) == 2
    assert "--video" in capsys.readouterr().err
    code = cli.main(["track", str(sequence), "--tracker", "ocsort", "--detections", "gt", "--box-noise", "0.05",
                     "--drop", "0.1", "--no-score", "--frames", "5"])
    assert code == 0 and "ground truth as detections (box noise 0.05, drop 0.1, min visibility 0.25, seed 0)" in (
        capsys.readouterr().out)
    assert cli.main(["track", str(sequence), "--tracker", "bytetrack", "--drop", "0.1"]) == 2
    assert "--drop make detections from the ground truth; add --detections gt" in capsys.readouterr().err
    assert cli.main(["track", str(tmp_path), "--tracker", "bytetrack"]) == 2
    assert "is not a MOTChallenge sequence" in capsys.readouterr().err
