"""Untrusted parsing in worker processes under memory and time limits.

A bottom layer that imports nothing else of the package: :mod:`.pool` (the parent's side:
``WorkerPool``, ``Limits``, ``Outcome``, ``run_isolated``), :mod:`.process` (one worker process
seen from the parent), :mod:`.worker` (the worker's side), :mod:`.protocol` (task names and the
wire between them) and :mod:`.testing` (tasks for the pool's own tests). Tasks live next to what
they run and are named ``"module:function"`` within the package.
"""
