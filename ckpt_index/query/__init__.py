"""Asking the index: the query spec and its SQL (:mod:`.spec`), the ``--where`` language
(:mod:`.where`), rendering results (:mod:`.render`) and statistics (:mod:`.stats`)."""
