"""Helpers shared by the test modules (fixtures live in ``tests/conftest.py``).

Test modules import these as ``from helpers.<module> import ...``: pytest puts ``tests/`` on
``sys.path`` (rootdir-relative "prepend" import mode, no ``__init__.py`` in ``tests/``). No test
module imports ``conftest`` or another test module; what two test modules share lives here.
"""
