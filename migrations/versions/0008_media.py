"""The media archive: the files requests' payloads refer to, and the ones archived.

Revision ID: 0008
Revises: 0006
Create Date: 2026-12-03

``media_refs``: one row per file reference in a request's payload (``side`` output or
input, ``path`` where in it), what the payload declares of it, and its state: ``pending``
(not fetched yet), ``archived`` (``sha256`` names the file), ``gone`` (the host said 404 or
410, or a signed URL had expired: ``gone_at`` is the tombstone), ``failed`` (tried
``attempts`` times; tried again while under the limit), ``refused`` (unsafe or over a
limit). ``media_files``: one row per archived file, by the SHA-256 of its bytes.
``media_scan``: up to which ``requests.last_changed_at`` the payloads have been searched.
Nothing here touches the existing tables: the downgrade drops the three.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

INSTANT = sa.Text().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
KEY = sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media_refs",
        sa.Column("request_id", KEY, primary_key=True),
        sa.Column("side", sa.Text, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("content_type", sa.Text),
        sa.Column("file_name", sa.Text),
        sa.Column("declared_size", sa.BigInteger),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("error", sa.Text),
        sa.Column("seen_at", INSTANT, nullable=False),
        sa.Column("tried_at", INSTANT),
        sa.Column("gone_at", INSTANT),
    )
    # the work of a run (by state), a URL's other references, a file's references
    op.create_index("ix_media_refs_state", "media_refs", ["state"])
    op.create_index("ix_media_refs_url", "media_refs", ["url"])
    op.create_index("ix_media_refs_sha256", "media_refs", ["sha256"])
    op.create_table(
        "media_files",
        sa.Column("sha256", sa.Text, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_type", sa.Text),
        sa.Column("fetched_at", INSTANT, nullable=False),
    )
    op.create_table(
        "media_scan",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("changed_until", INSTANT),
    )


def downgrade() -> None:
    op.drop_table("media_scan")
    op.drop_table("media_files")
    op.drop_index("ix_media_refs_sha256", "media_refs")
    op.drop_index("ix_media_refs_url", "media_refs")
    op.drop_index("ix_media_refs_state", "media_refs")
    op.drop_table("media_refs")
