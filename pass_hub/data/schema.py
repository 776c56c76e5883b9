"""The columns every pass-hub ReID split has, whatever it was loaded or generated from.

* ``image``: ``datasets.Image(mode="RGB")``: decoded lazily to an RGB ``PIL.Image`` (grayscale and RGBA files are
  converted when read);
* ``pid``: identity as in the source (file name, list file or folder). ``0`` in a Market-1501 / SynthPerson
  gallery is a distractor (no query has it); ``-1`` means "unknown" and occurs in ``unlabelled`` splits only;
* ``camid``: 0-based camera (file names count from 1); ``-1`` when the source has no camera;
* ``path``: the file the image came from (for generated data: its path inside the written layout).

Keeping one schema lets a training script concatenate splits from different sources.

Example:
    >>> split = make_split([{"bytes": None, "path": "a.jpg"}], [3], [0], ["a.jpg"], dataset_name="demo")
    >>> split.column_names, split.info.dataset_name
    (['image', 'pid', 'camid', 'path'], 'demo')
"""

from __future__ import annotations

from collections.abc import Sequence

from datasets import Dataset, DatasetInfo, Features, Image, Value

REID_FEATURES = Features(
    {"image": Image(mode="RGB"), "pid": Value("int64"), "camid": Value("int64"), "path": Value("string")}
)
LABELLED_SPLITS = ("train", "query", "gallery")
UNLABELLED_SPLIT = "unlabelled"
UNKNOWN = -1  # pid of unlabelled images, camid of images without a camera


def make_split(
    images: Sequence[dict[str, bytes | str | None]],
    pids: Sequence[int],
    camids: Sequence[int],
    paths: Sequence[str],
    *,
    dataset_name: str,
    config_name: str | None = None,
    description: str = "",
) -> Dataset:
    """An in-memory split with :data:`REID_FEATURES` (no cache file, so nothing stale is ever read back).

    ``images`` holds ``{"bytes": ..., "path": ...}`` entries: encoded bytes for generated images, ``bytes=None``
    and a file path for images read lazily from disk.
    """
    info = DatasetInfo(
        dataset_name=dataset_name, config_name=config_name, description=description, features=REID_FEATURES
    )
    columns = {"image": list(images), "pid": list(pids), "camid": list(camids), "path": list(paths)}
    return Dataset.from_dict(columns, features=REID_FEATURES, info=info)
