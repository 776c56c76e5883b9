"""The run machinery the training methods share: an accelerate run with resume, progress and logs (``runtime``),
settings on the command line and the recipes as data (``settings``, ``recipes``), schedules and optimisers, data,
transforms and samplers, and for the ReID scripts their starts (``reid_start``) and evaluation and publishing
(``reid``). Nothing here imports a training method."""
