"""Reading a Lightning checkpoint without executing it: :mod:`.reader` (zip, limits, fields)
and :mod:`.unpickler` (a pickle interpreter that builds plain data only)."""
