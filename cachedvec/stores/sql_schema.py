"""The tables cachedvec keeps in a SQL database, as SQLAlchemy Core metadata.

The Alembic scripts in ``migrations/`` create and change these tables; this
module is what the code expects them to be. ``tests/test_migrations.py``
fails when the two drift apart, so a schema change is always both a new
migration and an edit here (plus a new :data:`SCHEMA_REVISION`).

``cachedvec_entries`` holds the byte store:

- ``key``: the cache key (``cv1:<slug>:<fingerprint>:<kind>:<digest>``), the
  primary key. PostgreSQL compares it with the ``"C"`` collation: byte order
  makes equality and prefix range scans cheap and locale-independent, and
  matches SQLite's default ``BINARY`` order.
- ``value``: the encoded vector (see :mod:`cachedvec.codec`).
- ``created_at``: when the value was last written, Unix seconds.
- ``accessed_at``: when it was last read, Unix seconds, refreshed at most
  once per ``touch_interval`` (a day by default) so reads almost never write.
"""

from __future__ import annotations

import sqlalchemy as sa

#: Alembic's bookkeeping table. Not the default ``alembic_version``: a shared
#: PostgreSQL database may already use that name for its own application.
VERSION_TABLE = "cachedvec_alembic_version"

#: The Alembic revision this code reads and writes. Opening a database at
#: another revision is a :class:`~cachedvec.errors.SchemaError`.
SCHEMA_REVISION = "0001"

#: The PostgreSQL advisory lock every migration holds (``migrations/env.py``
#: and :mod:`cachedvec.migrate`), so that two processes migrating or
#: repairing one database run one after the other. Any constant works, as
#: long as every cachedvec uses the same one.
PG_MIGRATION_LOCK = 0x43564543

#: Written into the header of SQLite files cachedvec creates itself
#: (``PRAGMA application_id``, "CVEC"), so it knows which files it may upgrade
#: without being asked.
SQLITE_APPLICATION_ID = 0x43564543

metadata = sa.MetaData(
    naming_convention={
        "pk": "pk_%(table_name)s",
        "ix": "ix_%(table_name)s_%(column_0_name)s",
    }
)

KeyType = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")

entries = sa.Table(
    "cachedvec_entries",
    metadata,
    sa.Column("key", KeyType, primary_key=True),
    sa.Column("value", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", sa.BigInteger(), nullable=False),
    sa.Column("accessed_at", sa.BigInteger(), nullable=False),
)
