"""model artifacts of kind 'samples': the grid PNG `dlvm generate` draws from a sequential
backbone, linked to the version it came from (shown in evaluation reports and the dashboard,
issue 18)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 03:40:00

"""
from typing import Sequence, Union

from alembic import op

revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def _kinds(kinds: str) -> None:
    # batch mode, as in 0003: SQLite rebuilds the table (copying its rows), PostgreSQL alters
    # the constraint in place.
    with op.batch_alter_table('model_artifact', recreate='auto') as batch:
        batch.drop_constraint('kind', type_='check')  # named by the naming convention
        batch.create_check_constraint('kind', f"kind IN ({kinds})")


def upgrade() -> None:
    _kinds("'onnx', 'torchscript', 'drift_reference', 'samples'")


def downgrade() -> None:
    op.execute("DELETE FROM model_artifact WHERE kind = 'samples'")
    _kinds("'onnx', 'torchscript', 'drift_reference'")
