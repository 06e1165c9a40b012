"""Sync: the scan of a tree (:mod:`.scan`), building one file's row (:mod:`.build`, which the
parsing workers import, so it stays free of SQLAlchemy) and bringing the index in line with the
files (:mod:`.roots`)."""
