"""Multi-object tracking with PASS features: a BoxMOT appearance encoder (``encoder``), BoxMOT trackers run over a
MOTChallenge sequence (``run``) and their scores from TrackEval (``scoring``); the ``pass-hub track`` command is
:mod:`pass_hub.track_command`. Needs the tracking extra: ``pip install "pass-hub[tracking]"``.

Example:
    >>> from pass_hub.tracking import PassAppearanceEncoder, track_sequence  # doctest: +SKIP
    >>> result = track_sequence("out/synth-video", tracker="botsort", model="out/pass-vit-reid")  # doctest: +SKIP
    >>> result.scores["IDF1"]  # doctest: +SKIP
"""

from ..extras import require_extra

require_extra("tracking", ["boxmot", "trackeval"], "pass_hub.tracking")

from .encoder import PassAppearanceEncoder, crop_boxes  # noqa: E402
from .run import TRACKERS, TrackingResult, load_detections, track_sequence  # noqa: E402
from .scoring import score_tracks  # noqa: E402

__all__ = ["TRACKERS", "PassAppearanceEncoder", "TrackingResult", "crop_boxes", "load_detections", "score_tracks",
           "track_sequence"]
