"""Alembic migrations of the ledger database (shipped as a package so an installed heurist can migrate)."""
