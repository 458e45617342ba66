"""registered models of kind 'detector' (boxes, issue 19) and 'tokenizer' (discrete visual
tokens for sequential pretraining and generation, issue 18)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 01:00:00

"""
from typing import Sequence, Union

from alembic import op

revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _kinds(kinds: str) -> None:
    # batch mode, as in 0003: SQLite rebuilds the table, PostgreSQL alters the constraint in place.
    with op.batch_alter_table('registered_model', recreate='auto') as batch:
        batch.drop_constraint('kind', type_='check')
        batch.create_check_constraint('kind', f"kind IN ({kinds})")


def upgrade() -> None:
    _kinds("'backbone', 'classifier', 'anomaly', 'detector', 'tokenizer'")


def downgrade() -> None:
    op.execute("DELETE FROM registered_model WHERE kind IN ('detector', 'tokenizer')")
    _kinds("'backbone', 'classifier', 'anomaly'")
