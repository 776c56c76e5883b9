"""Gallery search: cosine similarity of L2-normalised embeddings, with an on-disk index so a gallery is embedded once.

The index file is an embedding file (:class:`pass_hub.ImageEmbeddings`, ``.safetensors``) whose metadata holds
the model's fingerprint (weights + preprocessing) and the gallery's (file names, sizes, modification times);
:meth:`GalleryIndex.build` reuses it when both match and rebuilds it otherwise. Search uses faiss
(``IndexFlatIP``, exact) when ``faiss`` is installed, a matrix product in torch otherwise; the results agree.

Example:
    >>> index = GalleryIndex.build("gallery/", model="out/pass-vit-s16", index_path="cache/")  # doctest: +SKIP
    >>> queries = pass_hub.embed(["query.jpg"], model="out/pass-vit-s16")  # doctest: +SKIP
    >>> result = index.search(queries, top_k=5)  # doctest: +SKIP
    >>> [index.names[i] for i in result.indices[0]]  # doctest: +SKIP

A tracker keeps an in-memory index of its identities:

    >>> index = GalleryIndex(pass_hub.ImageEmbeddings(pass_hub.embed(crops, model=m), track_ids))  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from ..atomic import atomic_file
from ..models.backbone import l2_normalize
from .embedding import ImageEmbeddings, ModelSpec, embed_files, resolve_embedder
from .images import ImageInput, ImageList, list_image_paths, read_image

INDEX_SUFFIX = ".safetensors"


class TopK(NamedTuple):
    """Best gallery matches of each query, most similar first: (Q, k) cosine similarities and gallery rows.

    A search with a threshold leaves out the matches at or below it: their row is ``-1`` and their similarity NaN,
    at the end of each query's row (``matches(q)`` lists the others).
    """

    similarities: torch.Tensor
    indices: torch.Tensor

    def matches(self, query: int) -> list[tuple[int, float]]:
        """``(gallery row, similarity)`` of query ``query``'s matches, most similar first."""
        return [(int(index), float(similarity))
                for index, similarity in zip(self.indices[query], self.similarities[query], strict=True)
                if index >= 0]


def gallery_fingerprint(paths: Sequence[Path]) -> str:
    """SHA-256 of the gallery's file names, sizes and modification times (any change gives a new value)."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def index_file(index_path: str | Path, model_fingerprint: str) -> Path:
    """``index_path`` itself when it names a ``.safetensors`` file, else a per-model file inside that folder."""
    path = Path(index_path)
    if path.suffix == INDEX_SUFFIX:
        return path
    if path.exists() and not path.is_dir():
        raise ValueError(f"index path {path} must be a folder or a {INDEX_SUFFIX} file")
    return path / f"gallery-{model_fingerprint[:16]}{INDEX_SUFFIX}"


class GalleryIndex:
    """Embedded gallery images searched by cosine similarity.

    Args:
        gallery: The gallery's embeddings and names (normalised here, whatever the model's choice).

    Attributes:
        status: How the index came about: ``"in memory"``, ``"built"``, ``"rebuilt"`` (a stale index file was
            replaced) or ``"reused"`` (read from the index file).
        path: The index file, when there is one.
    """

    def __init__(self, gallery: ImageEmbeddings) -> None:
        if gallery.embeddings.ndim != 2 or len(gallery.names) != gallery.embeddings.shape[0]:
            raise ValueError(
                f"gallery embeddings {tuple(gallery.embeddings.shape)} do not match {len(gallery.names)} names"
            )
        self.gallery = gallery
        self.vectors = l2_normalize(gallery.embeddings.float())
        self.status = "in memory"
        self.path: Path | None = None
        self._faiss_index = None

    @property
    def names(self) -> list[str]:
        return self.gallery.names

    def __len__(self) -> int:
        return len(self.gallery.names)

    @classmethod
    def build(
        cls,
        gallery: str | Path | Sequence[str | Path],
        model: ModelSpec,
        *,
        index_path: str | Path | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        progress: bool = True,
    ) -> GalleryIndex:
        """Embed gallery files (paths, folders, globs), or reuse ``index_path`` when it is still valid.

        Args:
            gallery: The gallery images.
            model: A MODEL, ``.onnx`` file or loaded model (see :mod:`pass_hub.inference`).
            index_path: A ``.safetensors`` file or a folder (one file per model inside); written atomically.
            batch_size / device / progress: As in :func:`pass_hub.embed_files`.
        """
        embedder = resolve_embedder(model, device=device)
        paths = list_image_paths(gallery)
        names = [str(path) for path in paths]
        gallery_key = gallery_fingerprint(paths)
        model_key = embedder.fingerprint()
        cache = index_file(index_path, model_key) if index_path is not None else None
        status = "built"
        if cache is not None and cache.is_file():
            stored = ImageEmbeddings.load(cache)
            if (stored.metadata.get("model_fingerprint"), stored.metadata.get("gallery_fingerprint")) == (
                model_key,
                gallery_key,
            ):
                return cls._with_status(stored, "reused", cache)
            status = "rebuilt"
        embeddings = embed_files(
            ImageList(names, paths), embedder, batch_size=batch_size, device=device, progress=progress
        )
        embeddings.metadata["gallery_fingerprint"] = gallery_key
        if cache is not None:
            embeddings.save(cache, overwrite=True)
        return cls._with_status(embeddings, status, cache)

    @classmethod
    def _with_status(cls, embeddings: ImageEmbeddings, status: str, path: Path | None) -> GalleryIndex:
        index = cls(embeddings)
        index.status, index.path = status, path
        return index

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """An index (or any embedding file) written before, without checking it against the gallery."""
        return cls._with_status(ImageEmbeddings.load(path), "reused", Path(path))

    def search(self, queries: torch.Tensor, top_k: int | None = 10, threshold: float | None = None) -> TopK:
        """The ``top_k`` most similar gallery rows of each query embedding (Q, E) (normalised here).

        Args:
            queries: Query embeddings of the index's model.
            top_k: Matches per query at most; None: the whole gallery (with a threshold, all matches above it).
            threshold: Keep only the matches whose cosine similarity is above it (``pass-hub eval`` prints the
                threshold of each false-positive rate); the others become ``-1`` / NaN (see :class:`TopK`).

        Example:
            >>> import torch, pass_hub
            >>> index = GalleryIndex(pass_hub.ImageEmbeddings(torch.eye(3), ["a.jpg", "b.jpg", "c.jpg"]))
            >>> result = index.search(torch.tensor([[1.0, 0.5, 0.0]]), top_k=3, threshold=0.3)
            >>> [(index.names[row], round(score, 3)) for row, score in result.matches(0)]
            [('a.jpg', 0.894), ('b.jpg', 0.447)]
        """
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if threshold is not None and not -1 <= threshold <= 1:
            raise ValueError(f"threshold {threshold} is not a cosine similarity in [-1, 1]")
        queries = torch.as_tensor(queries).float().reshape(-1, queries.shape[-1])
        if queries.shape[1] != self.vectors.shape[1]:
            raise ValueError(
                f"query embeddings have {queries.shape[1]} values, the gallery's {self.vectors.shape[1]}: "
                "embed both with the same model"
            )
        queries = l2_normalize(queries)
        k = len(self) if top_k is None else min(top_k, len(self))
        if importlib.util.find_spec("faiss") is not None:
            result = self._search_faiss(queries, k)
        else:
            result = TopK(*(queries @ self.vectors.T).topk(k, dim=1))
        if threshold is None:
            return result
        below = ~(result.similarities > threshold)
        return TopK(result.similarities.masked_fill(below, float("nan")), result.indices.masked_fill(below, -1))

    def _search_faiss(self, queries: torch.Tensor, k: int) -> TopK:
        import faiss

        if self._faiss_index is None:
            self._faiss_index = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss_index.add(self.vectors.numpy())
        similarities, indices = self._faiss_index.search(queries.numpy(), k)
        return TopK(torch.from_numpy(similarities), torch.from_numpy(indices).long())


def draw_matches(
    out: str | Path,
    queries: Sequence[tuple[str, ImageInput]],
    index: GalleryIndex,
    result: TopK,
) -> Path:
    """Draw one strip per query (the query, then its matches with rank and similarity) to a PNG file.

    Args:
        out: PNG file, written atomically; replaced when present.
        queries: ``(name, image)`` of each query, in the order of ``result``'s rows.
        index: The searched index; its names must be readable image files.
        result: What :meth:`GalleryIndex.search` returned for ``queries``.
    """
    from ..pictures.visualize import draw_rank_list, stack_pictures

    rows, _ = result.indices.shape
    if rows != len(queries):
        raise ValueError(f"{len(queries)} queries but {rows} result rows")
    strips = []
    for row, (name, image) in enumerate(queries):
        matches = result.matches(row)
        strips.append(
            draw_rank_list(
                read_image(image),
                [read_image(index.names[i]) for i, _ in matches],
                [similarity for _, similarity in matches],
                None,
                title=f"query {Path(name).name}: top {len(matches)} by cosine similarity",
            )
        )
    with atomic_file(out) as temporary:
        stack_pictures(strips).save(temporary, format="PNG")
    return Path(out)
