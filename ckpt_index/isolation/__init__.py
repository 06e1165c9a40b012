"""Untrusted parsing in worker processes under memory and time limits (:mod:`.pool`)."""
