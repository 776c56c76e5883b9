"""Dataset specs: the one string the command lines take with ``--data`` / ``--dataset``.

====================================  ============================================================
spec                                  meaning
====================================  ============================================================
``synthetic``                         the default SynthPerson set, rendered in memory
``synthetic:seed=3,train_ids=50``     SynthPerson with :class:`SynthPersonConfig` fields changed
``market1501:/data/Market-1501``      :func:`load_reid_dataset` ``("market1501", path)``
``msmt17:PATH``, ``msmt17-v1:PATH``   MSMT17 (the version found, or the one named)
``dukemtmc:PATH``
``cuhk03np:PATH``                     CUHK03-NP labeled; ``cuhk03np-detected:PATH`` for detected
``image_folder:PATH``                 unlabelled images below PATH (split ``unlabelled``)
``custom:PATH``                       folder per identity, or a ``.csv`` file
``PATH``                              an existing folder whose layout is recognised, or a ``.csv``
====================================  ============================================================

Example:
    >>> data = load_dataset_spec("synthetic:train_ids=4,test_ids=2,unlabelled=0,distractors=0")
    >>> sorted(data)
    ['gallery', 'query', 'train', 'unlabelled']
"""

from __future__ import annotations

from pathlib import Path

from datasets import DatasetDict

from .files import is_image_file
from .loaders import LOADERS, has_market_folders, load_reid_dataset, msmt17_version
from .naming import CUHK03NP, DUKEMTMC, MARKET1501
from .synth import SynthPersonConfig, generate_synthperson

SYNTHETIC = "synthetic"
# Spec names that are a loader plus a fixed option.
VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "cuhk03np-labeled": ("cuhk03np", {"subset": "labeled"}),
    "cuhk03np-detected": ("cuhk03np", {"subset": "detected"}),
    "msmt17-v1": ("msmt17", {"version": "V1"}),
    "msmt17-v2": ("msmt17", {"version": "V2"}),
}
SPEC_NAMES = (SYNTHETIC, *LOADERS, *VARIANTS)


def _synthetic(options: str) -> DatasetDict:
    pairs = [item for item in options.split(",") if item.strip()]
    malformed = [item for item in pairs if "=" not in item]
    if malformed:
        raise ValueError(f"synthetic options are key=value pairs separated by commas, got {malformed}")
    return generate_synthperson(
        SynthPersonConfig.from_options(dict(item.strip().split("=", 1) for item in pairs))  # type: ignore[arg-type]
    )


def detect_layout(root: str | Path) -> str:
    """The loader name of an existing folder (or ``custom`` for a ``.csv``); ``ValueError`` when ambiguous.

    Recognises Market-1501 / DukeMTMC-reID / CUHK03-NP folders by their file names, MSMT17 by its list files,
    at ``root`` or one level below. A plain folder of images could be unlabelled or one-folder-per-identity, so
    it is not guessed.
    """
    root = Path(root)
    if root.suffix.lower() == ".csv":
        return "custom"
    if not root.is_dir():
        raise ValueError(f"dataset spec {str(root)!r} is not a folder (nor a .csv file)")
    candidates = [root, *sorted(child for child in root.iterdir() if child.is_dir())]
    found: set[str] = set()
    for folder in candidates:
        if msmt17_version(folder):
            found.add("msmt17")
        if any(has_market_folders(folder / subset) for subset in ("labeled", "detected")):
            found.add("cuhk03np")
        if has_market_folders(folder):
            names = [p.name for p in (folder / "bounding_box_train").iterdir() if is_image_file(p)][:20]
            for convention in (MARKET1501, DUKEMTMC, CUHK03NP):
                if names and all(convention.pattern.fullmatch(name) for name in names):
                    found.add(convention.dataset)
                    break
    if len(found) == 1:
        return found.pop()
    what = f"it matches several layouts ({', '.join(sorted(found))})" if found else "no benchmark layout was found"
    raise ValueError(
        f"cannot tell which dataset {root} is: {what}; write NAME:{root} with NAME one of {', '.join(SPEC_NAMES[1:])}"
        " (image_folder: unlabelled images, custom: one folder per identity or a .csv)"
    )


def load_dataset_spec(spec: str) -> DatasetDict:
    """Load the dataset a spec string names (see the module docstring for the forms).

    Raises ``ValueError`` naming the spec and the valid names when it is not understood.

    Example:
        >>> load_dataset_spec("market1501:/data/Market-1501-v15.09.15")  # doctest: +SKIP
        DatasetDict({train: ..., query: ..., gallery: ...})
    """
    name, separator, argument = spec.partition(":")
    key = name.strip().lower()
    if key == SYNTHETIC:
        return _synthetic(argument)
    if separator and (key in LOADERS or key in VARIANTS):
        if not argument:
            raise ValueError(f"dataset spec {spec!r} needs a path after '{name}:'")
        loader, options = VARIANTS.get(key, (key, {}))
        return load_reid_dataset(loader, argument, **options)
    if Path(spec).exists():
        return load_reid_dataset(detect_layout(spec), spec)
    raise ValueError(
        f"unknown dataset spec {spec!r}: expected 'synthetic[:key=value,...]', NAME:PATH with NAME one of "
        f"{', '.join(SPEC_NAMES[1:])}, or an existing dataset folder"
    )
