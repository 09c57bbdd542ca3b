"""The whole schema: every package's tables on one ``metadata``, for Alembic's ``env.py`` and the schema tests.

Tables are declared where they belong (``heurist.ledger.tables``, ``heurist.credits.tables``,
``heurist.search.tables``) on the shared ``heurist.db.base.Base``; importing a package's tables registers
them. Whoever needs the complete ``metadata`` (autogenerate, the migrations-match-the-models check) imports
it from here, so it never depends on which table modules some other import happened to load. A package
that adds tables adds its import here.
"""

from __future__ import annotations

# Importing a package's tables registers them on the shared metadata.
from heurist.credits import tables as credits_tables  # noqa: F401
from heurist.db.base import metadata
from heurist.economy import tables as economy_tables  # noqa: F401
from heurist.ledger import tables as ledger_tables  # noqa: F401
from heurist.outbox import tables as outbox_tables  # noqa: F401
from heurist.privacy import tables as privacy_tables  # noqa: F401
from heurist.search import tables as search_tables  # noqa: F401

__all__ = ["metadata"]
