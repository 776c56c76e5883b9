"""Loaders for the ReID datasets users hold on disk, returning ``datasets.DatasetDict`` objects.

Every loader returns the columns of :mod:`.schema` (``image``, ``pid``, ``camid`` 0-based, ``path``) with splits
``train`` / ``query`` / ``gallery`` (or ``unlabelled`` for an image folder). Images stay on disk and are decoded
when read (converted to RGB), so loading is quick and a ``DataLoader``'s workers do the decoding.

=================  =====================================================================================
name               layout
=================  =====================================================================================
``market1501``     ``bounding_box_train``, ``query``, ``bounding_box_test``; ``0002_c3s1_000451_01.jpg``.
                   pid ``-1`` (junk) is dropped, pid ``0`` (distractors) is kept in the gallery only.
``dukemtmc``       the same folders; ``0001_c2_f0046182.jpg``.
``msmt17``         ``MSMT17_V1`` (``train/``, ``test/``) or ``MSMT17_V2`` (``mask_train_v2/``,
                   ``mask_test_v2/``) with ``list_{train,val,query,gallery}.txt``; train = train + val lists.
                   The version found is ``split.info.config_name`` (``"V1"`` / ``"V2"``).
``cuhk03np``       ``cuhk03-np/{labeled,detected}/`` with Market folders; ``0001_c1_1.png``;
                   ``subset="labeled"`` (default) or ``"detected"``, recorded in ``info.config_name``.
``image_folder``   any nested folders of images (LUPerson-style), one split ``unlabelled`` (pid -1, camid -1).
``custom``         one folder per identity (``root/<pid>/*.jpg``, optionally under ``train``/``query``/
                   ``gallery``), or a CSV of ``path,pid[,camid[,split]]``; a missing camera is -1.
=================  =====================================================================================

Bad files never crash a load: files with an image extension whose name does not parse, or that are not readable
images (``verify="header"`` catches non-images and truncated JPEG/PNG without decoding; ``"full"`` decodes),
are skipped with one :class:`SkippedFilesWarning` that counts and names them. A split with nothing usable left
raises ``ValueError``; a missing folder raises ``FileNotFoundError``. Other files (``Thumbs.db``, lists) are
ignored. Grayscale and RGBA images are converted to RGB when decoded.

Example:
    >>> data = load_reid_dataset("market1501", "/data/Market-1501-v15.09.15")  # doctest: +SKIP
    >>> train, label_of_pid = relabel_pids(data["train"])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from .files import VERIFY_LEVELS, Verify, check_image_file, is_image_file, list_image_files
from .naming import CUHK03NP, DUKEMTMC, MARKET1501, MSMT17, FileNameConvention, camera_from_name
from .schema import LABELLED_SPLITS, UNKNOWN, UNLABELLED_SPLIT, make_split

MARKET_STYLE_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MSMT17_VERSIONS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
MSMT17_LISTS = {
    "train": ("list_train.txt", "list_val.txt"),
    "query": ("list_query.txt",),
    "gallery": ("list_gallery.txt",),
}
CUHK03NP_SUBSETS = ("labeled", "detected")
JUNK_PID = -1
DISTRACTOR_PID = 0
_NAMED_IN_WARNING = 5  # files named in a warning before "... and N more"
_PROGRESS_FROM = 5000  # show a progress bar when checking at least this many files


class SkippedFilesWarning(UserWarning):
    """Some files of a dataset could not be used; the message counts and names them."""


@dataclass
class _SplitBuilder:
    """Collects the usable images of one load and the files it had to skip, then builds the ``DatasetDict``."""

    dataset: str
    root: Path
    verify: Verify
    rows: dict[str, list[tuple[Path, int, int]]] = field(default_factory=dict)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    junk: int = 0
    converted: int = 0

    def __post_init__(self) -> None:
        if self.verify not in VERIFY_LEVELS:
            raise ValueError(f"{self.dataset}: verify must be one of {VERIFY_LEVELS}, got {self.verify!r}")

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append((path, reason))

    def add(self, split: str, candidates: Iterable[tuple[Path, int, int]], total: int | None = None) -> None:
        """Check each ``(path, pid, camid)`` image and keep the usable ones in ``split``."""
        kept = self.rows.setdefault(split, [])
        disable = True if (total or 0) < _PROGRESS_FROM else None
        for path, pid, camid in tqdm(candidates, desc=f"{self.dataset} {split}", total=total, disable=disable):
            try:
                mode = check_image_file(path, self.verify)
            except ValueError as err:
                self.skip(path, str(err))
                continue
            self.converted += mode not in (None, "RGB")
            kept.append((path, pid, camid))

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)

    def build(self, *, config_name: str | None = None, description: str = "") -> DatasetDict:
        """Warn about skipped files, fail on an empty split, and make the splits."""
        if self.skipped:
            named = ", ".join(f"{self._relative(path)} ({reason})" for path, reason in self.skipped[:_NAMED_IN_WARNING])
            more = len(self.skipped) - _NAMED_IN_WARNING
            warnings.warn(
                f"{self.dataset}: skipped {len(self.skipped)} unusable file(s) under {self.root}: {named}"
                + (f" ... and {more} more" if more > 0 else ""),
                SkippedFilesWarning,
                stacklevel=3,
            )
        for split, rows in self.rows.items():
            if not rows:
                raise ValueError(
                    f"{self.dataset}: no usable images in split {split!r} under {self.root}"
                    + (f" ({len(self.skipped)} file(s) skipped, see the warning)" if self.skipped else "")
                )
        notes = [f"{self.junk} junk image(s) dropped"] if self.junk else []
        notes += [f"{self.converted} non-RGB image(s) converted to RGB when read"] if self.converted else []
        notes += [f"{len(self.skipped)} unusable file(s) skipped"] if self.skipped else []
        text = f"{description} Loaded from {self.root}; camid is 0-based." + (f" {'; '.join(notes)}." if notes else "")
        return DatasetDict(
            {
                split: make_split(
                    [{"bytes": None, "path": str(path)} for path, _, _ in rows],
                    [pid for _, pid, _ in rows],
                    [camid for _, _, camid in rows],
                    [str(path) for path, _, _ in rows],
                    dataset_name=self.dataset,
                    config_name=config_name,
                    description=text.strip(),
                )
                for split, rows in self.rows.items()
            }
        )


def _locate(root: Path, is_dataset_root: Callable[[Path], bool], dataset: str, expected: str) -> Path:
    """``root`` (made absolute) or its single sub-folder holding the dataset (users often pass the folder above)."""
    root = root.absolute()  # image paths must stay valid in DataLoader workers and after a chdir
    if not root.is_dir():
        raise FileNotFoundError(f"{dataset}: {root} is not a folder")
    if is_dataset_root(root):
        return root
    matches = [child for child in sorted(root.iterdir()) if child.is_dir() and is_dataset_root(child)]
    if len(matches) == 1:
        return matches[0]
    found = f"several candidates ({', '.join(m.name for m in matches)})" if matches else "nothing"
    raise FileNotFoundError(f"{dataset}: expected {expected} in {root} or one sub-folder; found {found}")


def has_market_folders(folder: Path) -> bool:
    """Whether ``folder`` has Market-1501's ``bounding_box_train``, ``query`` and ``bounding_box_test``."""
    return all((folder / name).is_dir() for name in MARKET_STYLE_FOLDERS.values())


def _load_market_style(
    root: Path, convention: FileNameConvention, verify: Verify, *, config_name: str | None = None, description: str
) -> DatasetDict:
    """Market-1501's three folders with names parsed by ``convention`` (also Duke and CUHK03-NP)."""
    builder = _SplitBuilder(convention.dataset, root, verify)
    for split, folder in MARKET_STYLE_FOLDERS.items():
        candidates = []
        for path in list_image_files(root / folder):
            try:
                pid, camid = convention.parse(path.name)
            except ValueError as err:
                builder.skip(path, f"unparseable name: {err}")
                continue
            if pid == JUNK_PID:
                builder.junk += 1
            elif pid == DISTRACTOR_PID and split != "gallery":
                builder.skip(path, "distractor pid 0 outside the gallery")
            else:
                candidates.append((path, pid, camid))
        builder.add(split, candidates, len(candidates))
    return builder.build(config_name=config_name, description=description)


def load_market1501(root: str | Path, *, verify: Verify = "header") -> DatasetDict:
    """Market-1501 (``Market-1501-v15.09.15`` or its parent). Junk (pid -1) is dropped; distractors (pid 0) stay
    in the gallery. 751 train ids / 12,936 images, 3,368 queries, 15,913 gallery images on the full set.
    """
    located = _locate(Path(root), has_market_folders, "market1501", "bounding_box_train/, query/, bounding_box_test/")
    return _load_market_style(located, MARKET1501, verify, description="Market-1501.")


def load_dukemtmc(root: str | Path, *, verify: Verify = "header") -> DatasetDict:
    """DukeMTMC-reID (``DukeMTMC-reID`` or its parent); 8 cameras, no junk."""
    located = _locate(Path(root), has_market_folders, "dukemtmc", "bounding_box_train/, query/, bounding_box_test/")
    return _load_market_style(located, DUKEMTMC, verify, description="DukeMTMC-reID.")


def load_cuhk03np(root: str | Path, *, subset: str = "labeled", verify: Verify = "header") -> DatasetDict:
    """CUHK03-NP, the new protocol (767 train / 700 test ids): ``cuhk03-np/labeled`` or ``cuhk03-np/detected``.

    ``root`` may be the ``cuhk03-np`` folder, its parent, or the ``labeled`` / ``detected`` folder itself
    (then ``subset`` is taken from its name). ``info.config_name`` records the subset.
    """
    root = Path(root).absolute()
    if has_market_folders(root) and root.name in CUHK03NP_SUBSETS:
        subset, located = root.name, root
    else:
        if subset not in CUHK03NP_SUBSETS:
            raise ValueError(f"cuhk03np: subset must be one of {CUHK03NP_SUBSETS}, got {subset!r}")
        parent = _locate(root, lambda folder: has_market_folders(folder / subset), "cuhk03np", f"{subset}/")
        located = parent / subset
    return _load_market_style(located, CUHK03NP, verify, config_name=subset, description=f"CUHK03-NP ({subset}).")


def msmt17_version(folder: Path) -> str | None:
    """``"V1"`` / ``"V2"`` when ``folder`` is an MSMT17 root (its train image folder and ``list_train.txt``)."""
    for version, (train_folder, _) in MSMT17_VERSIONS.items():
        if (folder / train_folder).is_dir() and (folder / "list_train.txt").is_file():
            return version
    return None


def load_msmt17(root: str | Path, *, version: str | None = None, verify: Verify = "header") -> DatasetDict:
    """MSMT17 V1 (``MSMT17_V1``) or V2 (``MSMT17_V2``, faces blurred), from its list files.

    Train is ``list_train.txt`` + ``list_val.txt`` (standard practice); cameras 1..15 come from the file names,
    pids from the lists. ``version`` (``"V1"`` / ``"V2"``) chooses when ``root`` holds both; the version found
    is ``info.config_name`` of every split. Note that train and test pids are numbered independently.
    """
    if version is not None and version.upper() not in MSMT17_VERSIONS:
        raise ValueError(f"msmt17: version must be one of {list(MSMT17_VERSIONS)}, got {version!r}")

    def wanted(folder: Path) -> bool:
        found = msmt17_version(folder)
        return found is not None and (version is None or found == version.upper())

    located = _locate(Path(root), wanted, "msmt17", f"MSMT17 {version or 'V1/V2'} (list_train.txt, image folders)")
    found = msmt17_version(located)
    assert found is not None  # _locate only returns folders that `wanted` accepted
    train_folder, test_folder = MSMT17_VERSIONS[found]
    builder = _SplitBuilder("msmt17", located, verify)
    for split, list_names in MSMT17_LISTS.items():
        images = located / (train_folder if split == "train" else test_folder)
        candidates = []
        for list_name in list_names:
            list_file = located / list_name
            if not list_file.is_file():
                raise FileNotFoundError(f"msmt17: missing list file {list_file}")
            candidates += _read_msmt17_list(list_file, images, builder)
        builder.add(split, candidates, len(candidates))
    blurred = ", faces blurred" if found == "V2" else ""
    description = f"MSMT17 {found} ({located.name}{blurred}); train = list_train + list_val."
    return builder.build(config_name=found, description=description)


def _read_msmt17_list(list_file: Path, images: Path, builder: _SplitBuilder) -> list[tuple[Path, int, int]]:
    """``(path, pid, camid)`` of each line ``relative/path.jpg pid``; bad lines are skipped with a reason."""
    rows = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = Path(f"{list_file.name}:{number}")
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            builder.skip(where, f"expected '<relative path> <pid>', got {line.strip()!r}")
            continue
        path = images / fields[0]
        try:
            _, camid = MSMT17.parse(path.name)
        except ValueError as err:
            builder.skip(path, f"unparseable name: {err}")
            continue
        if not path.is_file():
            builder.skip(path, f"listed in {where} but missing")
            continue
        rows.append((path, int(fields[1]), camid))
    return rows


def load_image_folder(root: str | Path, *, verify: Verify = "header") -> DatasetDict:
    """Every image below ``root`` (recursively, sorted) as one ``unlabelled`` split: pid -1, camid -1.

    For self-supervised pre-training on LUPerson-style collections. ``verify="none"`` skips the per-file check
    on very large folders (a bad file then fails when it is decoded).
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise FileNotFoundError(f"image_folder: {root} is not a folder")
    builder = _SplitBuilder("image_folder", root, verify)
    files = list_image_files(root, recursive=True)
    builder.add(UNLABELLED_SPLIT, ((path, UNKNOWN, UNKNOWN) for path in files), len(files))
    return builder.build(description="Unlabelled image folder.")


def _identity_folders(folder: Path, builder: _SplitBuilder) -> list[tuple[str, Path]]:
    """``(identity name, image)`` pairs of a folder-per-identity split; loose images are skipped."""
    pairs = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            pairs += [(entry.name, path) for path in list_image_files(entry, recursive=True)]
        elif is_image_file(entry):
            builder.skip(entry, "image outside an identity folder")
    return pairs


def _pid_numbering(names: Iterable[str]) -> dict[str, int]:
    """Numeric folder names are the pids; otherwise names are numbered 1..n in sorted order."""
    unique = sorted(set(names))
    if all(name.isdigit() for name in unique):
        return {name: int(name) for name in unique}
    return {name: number for number, name in enumerate(unique, start=1)}


def load_custom(root: str | Path, *, verify: Verify = "header") -> DatasetDict:
    """A user's own data: one folder per identity, or a CSV file.

    * Folders: ``root/<identity>/...jpg`` is a ``train`` split; with ``root/train``, ``root/query``,
      ``root/gallery`` sub-folders, each is a split of identity folders. Numeric folder names are the pids,
      other names are numbered 1..n in sorted order (over all splits). The camera is read from a ``c<N>`` /
      ``cam<N>`` token of the file name (``0001_c2_x.jpg``, ``cam3_17.jpg``), else -1.
    * CSV (``root`` ends in ``.csv``): rows ``path,pid[,camid[,split]]`` with an optional header row; paths are
      relative to the CSV's folder, ``camid`` is taken as given (0-based) or -1 when empty, ``split`` defaults to
      ``train``. Negative pids are dropped as junk.

    Example:
        >>> load_custom("my_reid.csv")  # doctest: +SKIP
        DatasetDict({train: ..., query: ..., gallery: ...})
    """
    root = Path(root).absolute()
    if root.suffix.lower() == ".csv":
        return _load_custom_csv(root, verify)
    if not root.is_dir():
        raise FileNotFoundError(f"custom: {root} is neither a folder nor a .csv file")
    builder = _SplitBuilder("custom", root, verify)
    split_folders = {split: root / split for split in LABELLED_SPLITS if (root / split).is_dir()}
    pairs = {split: _identity_folders(folder, builder) for split, folder in (split_folders or {"train": root}).items()}
    pids = _pid_numbering(name for split_pairs in pairs.values() for name, _ in split_pairs)
    for split, split_pairs in pairs.items():
        builder.add(
            split, ((path, pids[name], camera_from_name(path.name)) for name, path in split_pairs), len(split_pairs)
        )
    return builder.build(description="Custom folder-per-identity dataset.")


def _load_custom_csv(csv_path: Path, verify: Verify) -> DatasetDict:
    if not csv_path.is_file():
        raise FileNotFoundError(f"custom: CSV file {csv_path} not found")
    builder = _SplitBuilder("custom", csv_path.parent, verify)
    with csv_path.open(newline="") as handle:
        rows = [(number, row) for number, row in enumerate(csv.reader(handle), start=1) if any(map(str.strip, row))]
    columns: Sequence[str] = ("path", "pid", "camid", "split")
    header = [cell.strip().lower() for cell in rows[0][1]] if rows else []
    if {"path", "pid"} <= set(header):
        columns, rows = header, rows[1:]
    by_split: dict[str, list[tuple[Path, int, int]]] = {}
    for number, row in rows:
        record = dict(zip(columns, (cell.strip() for cell in row), strict=False))
        where = Path(f"{csv_path.name}:{number}")
        try:
            pid = int(record["pid"])
            camid = int(record["camid"]) if record.get("camid") else UNKNOWN
        except (KeyError, ValueError):
            builder.skip(where, f"pid/camid are not integers in row {row}")
            continue
        split = record.get("split") or "train"
        if split not in LABELLED_SPLITS:
            builder.skip(where, f"split {split!r} is not one of {LABELLED_SPLITS}")
        elif pid < 0:
            builder.junk += 1
        else:
            path = Path(record["path"])
            by_split.setdefault(split, []).append((path if path.is_absolute() else csv_path.parent / path, pid, camid))
    for split, candidates in (by_split or {"train": []}).items():  # with no usable row, build() names the problem
        builder.add(split, candidates, len(candidates))
    return builder.build(description=f"Custom dataset from {csv_path.name}.")


LOADERS: dict[str, Callable[..., DatasetDict]] = {
    "market1501": load_market1501,
    "dukemtmc": load_dukemtmc,
    "msmt17": load_msmt17,
    "cuhk03np": load_cuhk03np,
    "image_folder": load_image_folder,
    "custom": load_custom,
}


def load_reid_dataset(name: str, root: str | Path, **options: object) -> DatasetDict:
    """Load dataset ``name`` (one of :data:`LOADERS`) from ``root``; ``options`` go to its loader.

    Options: ``verify`` (``"none"`` / ``"header"`` / ``"full"``) for all; ``version`` for ``msmt17``;
    ``subset`` for ``cuhk03np``.

    Example:
        >>> data = load_reid_dataset("msmt17", "/data/MSMT17_V2")  # doctest: +SKIP
        >>> data["train"].info.config_name  # doctest: +SKIP
        'V2'
    """
    loader = LOADERS.get(name.lower())
    if loader is None:
        raise ValueError(f"unknown ReID dataset {name!r}; expected one of {', '.join(LOADERS)}")
    return loader(root, **options)


def relabel_pids(dataset: Dataset) -> tuple[Dataset, dict[int, int]]:
    """Add a ``label`` column numbering the pids 0..n-1 in ascending pid order (what a classifier trains on).

    Returns the dataset with the column and the ``{pid: label}`` mapping (to map predictions back).
    Raises ``ValueError`` for unlabelled data (pid < 0).

    Example:
        >>> from pass_hub.data.schema import make_split
        >>> split = make_split([{"bytes": None, "path": p} for p in "abc"], [7, 2, 7], [0, 1, 2], list("abc"),
        ...                    dataset_name="demo")
        >>> train, mapping = relabel_pids(split)
        >>> list(train["label"]), mapping
        ([1, 0, 1], {2: 0, 7: 1})
    """
    pids = list(dataset["pid"])
    if any(pid < 0 for pid in pids):
        raise ValueError("relabel_pids: the dataset has pid < 0 (unlabelled or junk images); use a labelled split")
    mapping = {pid: label for label, pid in enumerate(sorted(set(pids)))}
    return dataset.add_column("label", [mapping[pid] for pid in pids]), mapping
