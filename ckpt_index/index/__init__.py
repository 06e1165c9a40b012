"""The index: engine and locations (:mod:`.engine`), alembic migrations, the tables and ORM
models, the row format (:mod:`.records`), every write (:mod:`.store`) and read-only access
(:mod:`.readonly`). It knows sidecars but never the metadata sources."""
