"""The index: engines, locations and write transactions (:mod:`.engine`), the schema's revision
under alembic (:mod:`.migrate`, scripts in ``migrations/``), the tables and ORM models, the row
format (:mod:`.records`), the check every row passes before it is written (:mod:`.boundary`),
the writes (:mod:`.store`) and read-only access (:mod:`.readonly`). It knows sidecars but never
the metadata sources."""
