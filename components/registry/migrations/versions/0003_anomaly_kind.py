"""registered models of kind 'anomaly' (PatchCore memory banks fitted on good images)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 22:10:00

"""
from typing import Sequence, Union

from alembic import op

revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _kinds(kinds: str) -> None:
    # batch mode: SQLite cannot alter a CHECK constraint in place, so there the table is rebuilt;
    # PostgreSQL alters it in place (a rebuild would drop the primary key other tables refer to).
    with op.batch_alter_table('registered_model', recreate='auto') as batch:
        batch.drop_constraint('kind', type_='check')  # named by the naming convention
        batch.create_check_constraint('kind', f"kind IN ({kinds})")


def upgrade() -> None:
    _kinds("'backbone', 'classifier', 'anomaly'")


def downgrade() -> None:
    op.execute("DELETE FROM registered_model WHERE kind = 'anomaly'")
    _kinds("'backbone', 'classifier'")
