"""Hydra config snippets shipped with ckpt-index (``pkg://ckpt_index.configs``).

``callbacks/metadata.yaml`` (:class:`ckpt_index.lightning.MetadataCallback`) and
``callbacks/model_checkpoint.yaml`` (:class:`ckpt_index.lightning.UniqueModelCheckpoint`). Add the
package to Hydra's search path in the primary config::

    hydra:
      searchpath:
        - pkg://ckpt_index.configs

then enable them with a defaults entry (``- callbacks: [metadata, model_checkpoint]``) or on the
command line (``+callbacks=metadata``). Each lands under ``cfg.callbacks.<name>`` with a
``_target_``, ready for ``hydra.utils.instantiate``.
"""
