"""ReID data for pass-hub: the SynthPerson generator and loaders for the datasets users hold on disk.

Every split is a ``datasets.Dataset`` with the columns ``image``, ``pid``, ``camid`` (0-based) and ``path``
(see :mod:`pass_hub.data.schema`).

Example:
    >>> from pass_hub.data import SynthPersonConfig, generate_synthperson, relabel_pids
    >>> data = generate_synthperson(SynthPersonConfig(train_ids=6, test_ids=3), progress=False)
    >>> train, label_of_pid = relabel_pids(data["train"])
    >>> len(label_of_pid)
    6
"""

from .files import check_image_file
from .loaders import (
    LOADERS,
    SkippedFilesWarning,
    load_cuhk03np,
    load_custom,
    load_dukemtmc,
    load_image_folder,
    load_market1501,
    load_msmt17,
    load_reid_dataset,
    relabel_pids,
)
from .naming import CUHK03NP, DUKEMTMC, MARKET1501, MSMT17, FileNameConvention
from .schema import REID_FEATURES, make_split
from .spec import detect_layout, load_dataset_spec
from .synth import (
    SynthPersonConfig,
    generate_synthperson,
    plan_synthperson,
    render_preview,
    write_image_folder,
    write_market_layout,
)

__all__ = [
    "CUHK03NP",
    "DUKEMTMC",
    "LOADERS",
    "MARKET1501",
    "MSMT17",
    "REID_FEATURES",
    "FileNameConvention",
    "SkippedFilesWarning",
    "SynthPersonConfig",
    "check_image_file",
    "detect_layout",
    "generate_synthperson",
    "load_cuhk03np",
    "load_custom",
    "load_dataset_spec",
    "load_dukemtmc",
    "load_image_folder",
    "load_market1501",
    "load_msmt17",
    "load_reid_dataset",
    "make_split",
    "plan_synthperson",
    "relabel_pids",
    "render_preview",
    "write_image_folder",
    "write_market_layout",
]
