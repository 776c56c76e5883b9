"""ReID metrics against the classic per-query reference, on randomised cases with ties, distractors and junk."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_reid import classic_evaluate

from pass_hub.evaluation.metrics import (
    EVALUATE_METRIC_PATH,
    evaluate_distance_matrix,
    evaluate_reid,
    order_codes,
    pairwise_distance,
)


def make_case(seed: int) -> dict:
    """A random query/gallery split; a third of the cases draw features from a few prototypes (exact ties)."""
    rng = np.random.default_rng(seed)
    num_query, num_gallery = int(rng.integers(1, 40)), int(rng.integers(1, 120))
    num_ids, num_cams, dim = int(rng.integers(1, 12)), int(rng.integers(1, 5)), int(rng.integers(1, 16))
    kind = ("gaussian", "prototypes", "integers")[seed % 3]
    if kind == "gaussian":
        query, gallery = rng.normal(size=(num_query, dim)), rng.normal(size=(num_gallery, dim))
    elif kind == "prototypes":  # duplicated vectors, zero vectors included: many exactly equal distances
        prototypes = rng.normal(size=(4, dim)) * rng.integers(0, 2, size=(4, 1))
        query, gallery = prototypes[rng.integers(0, 4, num_query)], prototypes[rng.integers(0, 4, num_gallery)]
    else:  # small integers: exact float32 arithmetic, so unnormalised distances tie exactly
        query, gallery = rng.integers(-2, 3, (num_query, dim)), rng.integers(-2, 3, (num_gallery, dim))
    gallery_pids = rng.integers(1, num_ids + 1, num_gallery)
    gallery_pids[rng.random(num_gallery) < 0.2] = 0  # distractors
    return {
        "query_features": query.astype(np.float32),
        "gallery_features": gallery.astype(np.float32),
        "query_pids": rng.integers(1, num_ids + 1, num_query),
        "gallery_pids": gallery_pids,
        "query_camids": rng.integers(0, num_cams, num_query),
        "gallery_camids": rng.integers(0, num_cams, num_gallery),
    }


def oracle(
    case: dict, max_rank: int = 50, distance: str = "euclidean", normalize: bool = True, chunk_size: int | None = None
) -> dict:
    """The classic evaluation of the float32 distances, computed in the same blocks of queries as the fast path
    (BLAS rounds the last bit differently for different block shapes; exactness is about the values ranked)."""
    query, gallery = case["query_features"], case["gallery_features"]
    step = chunk_size or len(query)
    blocks = [
        pairwise_distance(query[start : start + step], gallery, distance=distance, normalize=normalize)
        for start in range(0, len(query), step)
    ]
    labels = [case[k] for k in ("query_pids", "gallery_pids", "query_camids", "gallery_camids")]
    return classic_evaluate(torch.cat(blocks).numpy(), *labels, max_rank=max_rank)


def assert_matches_oracle(result: dict, expected: dict, top_k: int | None = None) -> None:
    assert result["num_valid_queries"] == expected["num_valid_queries"]
    assert len(result["cmc"]) == len(expected["cmc"])
    np.testing.assert_allclose(result["cmc"], expected["cmc"], rtol=0, atol=1e-9)
    assert result["mAP"] == pytest.approx(expected["mAP"], abs=1e-9)
    assert result["mINP"] == pytest.approx(expected["mINP"], abs=1e-9)
    for k in (1, 5, 10):
        if k <= len(expected["cmc"]):
            assert result[f"rank{k}"] == pytest.approx(expected["cmc"][k - 1], abs=1e-9)
    if top_k is not None:
        np.testing.assert_allclose(result["per_query_ap"], expected["per_query_ap"], rtol=0, atol=1e-9)
        for indices, ranked in zip(result["topk_indices"], expected["ranked_lists"], strict=True):
            expected_top = np.full(top_k, -1)
            expected_top[: min(top_k, len(ranked))] = ranked[:top_k]
            np.testing.assert_array_equal(indices, expected_top)


def bad(case: dict, **changes) -> dict:
    return {**case, **changes}


def nan_rows(features: np.ndarray, count: int) -> np.ndarray:
    features = features.copy()
    features[:count, 0] = np.nan
    return features


def has_valid_query(case: dict) -> bool:
    same_id = case["query_pids"][:, None] == case["gallery_pids"][None, :]
    other_camera = case["query_camids"][:, None] != case["gallery_camids"][None, :]
    return bool((same_id & other_camera).any())


@pytest.mark.parametrize("seed", range(60))
def test_matches_classic_reference(seed: int) -> None:
    case = make_case(seed)
    rng = np.random.default_rng(1000 + seed)
    max_rank = int(rng.integers(1, 60))  # often larger than the gallery
    distance = ("euclidean", "cosine")[seed % 2]
    normalize = seed % 3 != 2  # integer cases: raw distances, computed exactly in float32
    chunk_size = int(rng.integers(1, 8)) if seed % 4 else None
    options = {"distance": distance, "normalize": normalize, "max_rank": max_rank}
    if not has_valid_query(case):
        with pytest.raises(ValueError, match="none of the"):
            evaluate_reid(**case, **options)
        return
    result = evaluate_reid(**case, **options, return_per_query=True, top_k=12, chunk_size=chunk_size)
    assert_matches_oracle(result, oracle(case, max_rank, distance, normalize, chunk_size), top_k=12)
    standard_ranks = oracle(case, 10, distance, normalize, chunk_size)["cmc"][[0, 4, 9]]
    np.testing.assert_allclose([result["rank1"], result["rank5"], result["rank10"]], standard_ranks, atol=1e-9)
    assert result["num_skipped_queries"] == len(case["query_pids"]) - result["num_valid_queries"]


def test_skipped_queries_distractors_and_junk_by_hand() -> None:
    # Gallery: 0 = query's identity on its own camera (junk), 1 = distractor, 2 = true match, 3 = other identity.
    gallery = [[0.0], [1.0], [2.0], [3.0]]
    result = evaluate_reid(
        [[0.0], [0.0]], gallery, [7, 9], [7, 0, 7, 8], [1, 1], [1, 2, 2, 2], normalize=False, max_rank=3,
        return_per_query=True, top_k=4,
    )  # fmt: skip
    assert result["num_valid_queries"] == 1 and result["num_skipped_queries"] == 1  # identity 9 has no match
    assert result["mAP"] == pytest.approx(0.5) and result["mINP"] == pytest.approx(0.5)
    np.testing.assert_array_equal(result["cmc"], [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(result["topk_indices"][0], [1, 2, 3, -1])  # junk removed, list padded
    np.testing.assert_array_equal(result["topk_matches"][0], [False, True, False, False])
    np.testing.assert_array_equal(result["topk_indices"][1], [0, 1, 2, 3])
    assert np.isnan(result["per_query_ap"][1]) and result["first_match_rank"].tolist() == [2, 0]


def test_single_camera_has_no_valid_query() -> None:
    case = make_case(3)
    case["query_camids"][:] = 0
    case["gallery_camids"][:] = 0
    with pytest.raises(ValueError, match=r"none of the .* queries has a true match"):
        evaluate_reid(**case)


def test_gallery_on_one_camera() -> None:
    case = make_case(4)
    case["gallery_camids"][:] = 0
    case["query_camids"][:] = 1
    result = evaluate_reid(**case, max_rank=200)
    assert_matches_oracle(result, oracle(case, 200))
    assert result["cmc"][-1] == 1.0  # the gallery is shorter than max_rank: the curve stays at 1


def test_cosine_and_euclidean_rank_identically() -> None:
    case = make_case(6)
    euclidean = evaluate_reid(**case, return_per_query=True)
    cosine = evaluate_reid(**case, distance="cosine", return_per_query=True)
    np.testing.assert_array_equal(euclidean["topk_indices"], cosine["topk_indices"])
    np.testing.assert_allclose(euclidean["topk_distances"], 2 * cosine["topk_distances"], rtol=1e-6)
    assert euclidean["mAP"] == cosine["mAP"] and euclidean["mINP"] == cosine["mINP"]


def test_chunking_is_exact() -> None:
    case = make_case(5)  # integer features: ties everywhere, exact arithmetic
    full = evaluate_reid(**case, normalize=False, return_per_query=True)
    for chunk_size in (1, 2, 7):
        chunked = evaluate_reid(**case, normalize=False, return_per_query=True, chunk_size=chunk_size)
        for key, value in full.items():
            np.testing.assert_array_equal(chunked[key], value, err_msg=key)


def test_inputs_of_any_layout_dtype_and_library() -> None:
    case = make_case(7)
    expected = evaluate_reid(**case)
    query, gallery = case["query_features"], case["gallery_features"]
    variants = {
        "torch": {k: torch.from_numpy(v) for k, v in case.items()},
        "float64 and int32": {**case, "query_features": query.astype(np.float64), "query_pids": case["query_pids"]
                              .astype(np.int32), "gallery_camids": case["gallery_camids"].astype(np.uint8)},
        "non-contiguous": {**case, "query_features": np.asfortranarray(query),
                           "gallery_features": torch.from_numpy(np.ascontiguousarray(gallery.T)).T,
                           "gallery_pids": np.repeat(case["gallery_pids"], 2)[::2]},
        "negative strides": {**case, "query_features": query[::-1].copy()[::-1],
                             "query_pids": case["query_pids"][::-1].copy()[::-1]},
        "lists": {**case, "query_pids": case["query_pids"].tolist(), "query_camids": case["query_camids"].tolist()},
        "requires_grad": {**case, "query_features": torch.from_numpy(query).requires_grad_()},
    }  # fmt: skip
    read_only = query.copy()
    read_only.flags.writeable = False
    variants["read-only"] = {**case, "query_features": read_only}
    for name, inputs in variants.items():
        result = evaluate_reid(**inputs)
        assert result["mAP"] == expected["mAP"] and np.array_equal(result["cmc"], expected["cmc"]), name


def test_half_precision_features_are_computed_in_float32() -> None:
    case = make_case(9)
    for half in (torch.float16, torch.bfloat16):
        query = torch.from_numpy(case["query_features"]).to(half)
        expected = evaluate_reid(**bad(case, query_features=query.float()))
        assert evaluate_reid(**bad(case, query_features=query))["mAP"] == expected["mAP"]
    query = case["query_features"].astype(np.float16)
    assert (
        evaluate_reid(**bad(case, query_features=query))["mAP"]
        == evaluate_reid(**bad(case, query_features=query.astype(np.float32)))["mAP"]
    )


@pytest.mark.parametrize("seed", range(12))
def test_distance_matrix_matches_classic_reference(seed: int) -> None:
    case = make_case(seed)
    if not has_valid_query(case):
        return
    rng = np.random.default_rng(seed)
    labels = {k: case[k] for k in ("query_pids", "gallery_pids", "query_camids", "gallery_camids")}
    shape = (len(labels["query_pids"]), len(labels["gallery_pids"]))
    # Negative values, signed zeros, infinities and many exact ties, in float32 and float64.
    values = np.array([-np.inf, -1.5, -0.0, 0.0, 1e-30, 0.25, 0.25 + 1e-12, 3.0, np.inf])
    for distances in (values[rng.integers(0, len(values), shape)], rng.normal(size=shape).astype(np.float32)):
        result = evaluate_distance_matrix(distances, **labels, return_per_query=True, top_k=5, chunk_size=3)
        assert_matches_oracle(result, classic_evaluate(distances, *labels.values()), top_k=5)


def test_order_codes_sort_like_a_stable_sort() -> None:
    rng = np.random.default_rng(0)
    values = np.array([-np.inf, -2.0, -1e-40, -0.0, 0.0, 1e-40, 1.0, 1.0 + 2**-23, np.inf], dtype=np.float32)
    for dtype in (np.float32, np.float64):
        distances = values[rng.integers(0, len(values), (20, 50))].astype(dtype)
        distances[:5] = rng.normal(size=(5, 50))
        codes = order_codes(torch.from_numpy(distances))
        assert codes.dtype == torch.int32
        np.testing.assert_array_equal(codes.argsort(dim=1, stable=True), np.argsort(distances, axis=1, kind="stable"))
        # Equal values, and only those, share a code (float64 codes are unique positions).
        same_code = (codes[:, :, None] == codes[:, None, :]).numpy()
        equal = distances[:, :, None] == distances[:, None, :]
        np.testing.assert_array_equal(
            same_code, equal if dtype == np.float32 else np.eye(50, dtype=bool)[None].repeat(20, 0)
        )


def test_pairwise_distance_against_float64() -> None:
    rng = np.random.default_rng(0)
    query, gallery = rng.normal(size=(7, 32)), rng.normal(size=(9, 32)) * 3
    raw = ((query[:, None, :] - gallery[None, :, :]) ** 2).sum(-1)
    unit_q = query / np.linalg.norm(query, axis=1, keepdims=True)
    unit_g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    cosine = 1 - unit_q @ unit_g.T
    np.testing.assert_allclose(pairwise_distance(query, gallery, normalize=False), raw, rtol=1e-5)
    np.testing.assert_allclose(pairwise_distance(query, gallery), 2 * cosine, atol=1e-6)
    np.testing.assert_allclose(pairwise_distance(query, gallery, distance="cosine", normalize=False), cosine, atol=1e-6)
    assert pairwise_distance(query[:1], query[:1]).item() == 0.0  # clamped, never negative


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda c: bad(c, query_pids=c["query_pids"][:-1]), ValueError, r"query_pids has \d+ items but .* \d+ rows"),
        (lambda c: bad(c, gallery_camids=np.append(c["gallery_camids"], 0)), ValueError, "gallery_camids has"),
        (lambda c: bad(c, gallery_features=np.hstack([c["gallery_features"]] * 2)), ValueError, r"have \d+ dimensions"),
        (lambda c: bad(c, query_features=c["query_features"][:0]), ValueError, "query_features is empty"),
        (lambda c: bad(c, gallery_features=c["gallery_features"][:0]), ValueError, "gallery_features is empty"),
        (lambda c: bad(c, query_features=c["query_features"][0]), ValueError, "must be 2-D"),
        (lambda c: bad(c, query_features=nan_rows(c["query_features"], 2)), ValueError, "NaN in 2 and inf in 0 of"),
        (lambda c: bad(c, gallery_features=c["gallery_features"] + np.inf), ValueError, "inf in"),
        (lambda c: bad(c, query_features=c["query_features"].astype(np.float64) * 1e300), ValueError, "float32"),
        (lambda c: bad(c, query_pids=c["query_pids"].astype(float)), TypeError, "query_pids must hold integers"),
        (lambda c: bad(c, gallery_pids=c["gallery_pids"] > 0), TypeError, "must hold integers"),
        (lambda c: bad(c, query_features=c["query_features"].astype(str)), TypeError, "must be numeric"),
        (lambda c: bad(c, query_features=c["query_features"] > 0), TypeError, "floating point or integer"),
        (lambda c: bad(c, query_features=c["query_features"] + 0j), TypeError, "must be real"),
    ],
)
def test_bad_input_is_a_clear_error(change, error, message) -> None:
    with pytest.raises(error, match=message):
        evaluate_reid(**change(make_case(1)))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_rank": 0}, "max_rank must be an integer >= 1"),
        ({"max_rank": 5.0}, "max_rank"),
        ({"top_k": -1}, "top_k"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"distance": "manhattan"}, "distance must be one of"),
    ],
)
def test_bad_options(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate_reid(**make_case(1), **options)


def test_unnormalised_overflow_is_refused() -> None:
    case = make_case(2)
    huge = np.full((len(case["query_pids"]), 4), 5e18, dtype=np.float32)  # norms fit, squared distances do not
    with pytest.raises(ValueError, match="squared Euclidean distances of these features overflow"):
        evaluate_reid(**bad(case, query_features=huge, gallery_features=huge[:1].repeat(len(case["gallery_pids"]), 0)),
                      normalize=False)  # fmt: skip
    with pytest.raises(ValueError, match="L2 norm overflows float32"):
        evaluate_reid(**bad(case, query_features=np.full_like(huge, 3e38)))


def test_bad_distance_matrix() -> None:
    labels = ([1, 2], [1, 2], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="NaN in 1 of 2 rows"):
        evaluate_distance_matrix([[0.0, np.nan], [1.0, 0.0]], *labels)
    with pytest.raises(TypeError, match="floating point"):
        evaluate_distance_matrix([[0, 1], [1, 0]], *labels)
    with pytest.raises(ValueError, match=r"gallery_pids has 2 items but .* 3 rows"):
        evaluate_distance_matrix(np.zeros((2, 3)), *labels)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        evaluate_distance_matrix(np.zeros((2, 0)), *labels)


def test_evaluate_module_loads_offline_and_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    case = make_case(12)
    order = np.random.default_rng(0).permutation(len(case["query_pids"]) + len(case["gallery_pids"]))
    # One table of images, queries and gallery interleaved; gallery order decides ties, so keep it.
    images = {
        "features": np.concatenate([case["query_features"], case["gallery_features"]])[order],
        "pids": np.concatenate([case["query_pids"], case["gallery_pids"]])[order],
        "camids": np.concatenate([case["query_camids"], case["gallery_camids"]])[order],
        "is_query": (order < len(case["query_pids"])),
    }
    metric = evaluate.load(str(EVALUATE_METRIC_PATH))
    for batch in np.array_split(np.arange(len(order)), 3):
        metric.add_batch(**{name: values[batch] for name, values in images.items()})
    result = metric.compute(max_rank=20, distance="cosine")
    query, gallery = images["is_query"], ~images["is_query"]
    expected = evaluate_reid(
        images["features"][query], images["features"][gallery], images["pids"][query], images["pids"][gallery],
        images["camids"][query], images["camids"][gallery], max_rank=20, distance="cosine",
    )  # fmt: skip
    assert result == {**expected, "cmc": expected["cmc"].tolist()}
