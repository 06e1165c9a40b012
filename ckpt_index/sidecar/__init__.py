"""The sidecar: ``X.metadata.yaml`` beside ``X.ckpt``, the source of truth.

:mod:`.schema` is the pydantic model of a sidecar; :mod:`.files` reads and writes the files
(bounded, safe YAML). Nothing here knows about the index or the metadata sources.
"""
