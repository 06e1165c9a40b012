"""Metadata for checkpoints without a sidecar, recovered from what training left behind.

:mod:`.checkpoint` reads a checkpoint without executing its pickle, :mod:`.hydra` a run's
``.hydra`` configs, :mod:`.wandb` a W&B run (local files, the offline log, the online API),
:mod:`.state_dict` the architecture from weight names, :mod:`.naming` checkpoint file names, and
:mod:`.merge` combines them field by field. Sources never touch the index: what they need from it
(the W&B API cache) is passed in by the caller.
"""
