"""Alembic environment for hsmca: runs on the connection Store.migrate() hands in.

There is no alembic.ini. To write the next revision, a developer migrates a scratch database
and autogenerates against appliance/store/schema.py from Python:

    cfg = appliance.store.migrate.alembic_config()
    cfg.set_main_option("sqlalchemy.url", "sqlite:////tmp/dev.db")
    alembic.command.revision(cfg, "what changed", autogenerate=True, rev_id="0002")

(`-x url=...` works the same when a Config is built some other way.)
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from appliance.store.schema import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _offline() -> None:
    """Emit SQL for a DBA to review and run (alembic upgrade --sql)."""
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    context.configure(url=url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def _online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise RuntimeError("no connection handed in and no url given (use -x url=...)")
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    _offline()
else:
    _online()
