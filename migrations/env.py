"""Alembic environment of cachedvec's SQL tables.

Normally run through ``cachedvec migrate --store URL`` or
:mod:`cachedvec.migrate`, which pass an open connection in
``config.attributes["connection"]``. Offline (``--sql``) mode renders the
SQL for a URL given as ``config.attributes["url"]``.

The revision table is ``cachedvec_alembic_version`` so cachedvec can share a
PostgreSQL database with an application that has its own Alembic history.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from cachedvec.stores.sql_schema import PG_MIGRATION_LOCK, VERSION_TABLE, metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.attributes["url"],
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection: sa.Connection = config.attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite can roll DDL back too (cachedvec.migrate opens SQLite
        # transactions with BEGIN IMMEDIATE), so a failed upgrade leaves the
        # schema as it was on both databases.
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two processes upgrading one database at once run one after the
            # other; the second then finds nothing left to do.
            connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK}
            )
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
