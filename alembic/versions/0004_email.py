"""Emails a newsroom is proud to send: per-language subjects, an intro, image alt text, hidden
articles

Revision ID: 0004_email
Revises: 0003_hashing_key
Create Date: 2026-11-29 14:00:00.000000

`digest.subject_translations` and `digest.intro` are JSON maps (language -> text; "*" for every
language in `intro`); `article.image_alt` and `digest_article.image_alt` carry the featured
image's description; `article.hidden_at` hides an article from new digests while the digests
that hold it keep their copy.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0004_email"
down_revision: str | None = "0003_hashing_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("digest") as batch:
        batch.add_column(
            sa.Column("subject_translations", sa.JSON(), nullable=False, server_default="{}")
        )
        batch.add_column(sa.Column("intro", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("article") as batch:
        batch.add_column(sa.Column("image_alt", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("hidden_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("digest_article") as batch:
        batch.add_column(sa.Column("image_alt", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("digest_article") as batch:
        batch.drop_column("image_alt")
    with op.batch_alter_table("article") as batch:
        batch.drop_column("hidden_at")
        batch.drop_column("image_alt")
    with op.batch_alter_table("digest") as batch:
        batch.drop_column("intro")
        batch.drop_column("subject_translations")
