"""Alembic revisions of the mirror schema, installed as ``mirror.migrations``."""
