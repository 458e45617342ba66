"""model use: exports, drift references, prediction batches

Generated with `alembic revision --autogenerate` from components/registry/tables.py
(``ModelArtifact``, ``PredictionBatch``) and reviewed by hand.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 20:54:23.309959

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('model_artifact',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('artifact_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.Column('checks', sa.JSON(), nullable=False),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('onnx', 'torchscript', 'drift_reference')", name=op.f('ck_model_artifact_kind')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_model_artifact_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_artifact'))
    )
    with op.batch_alter_table('model_artifact', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_artifact_model_version_id'), ['model_version_id'], unique=False)

    op.create_table('prediction_batch',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('n_images', sa.Integer(), nullable=False),
    sa.Column('n_failed', sa.Integer(), nullable=False),
    sa.Column('predictions_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('predictions_sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('summary_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('summary_sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('embeddings_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('embeddings_sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('class_counts', sa.JSON(), nullable=False),
    sa.Column('drift_alert', sa.Boolean(), nullable=True),
    sa.Column('drift', sa.JSON(), nullable=False),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_prediction_batch_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prediction_batch'))
    )
    with op.batch_alter_table('prediction_batch', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_prediction_batch_model_version_id'), ['model_version_id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('prediction_batch', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_prediction_batch_model_version_id'))

    op.drop_table('prediction_batch')
    with op.batch_alter_table('model_artifact', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_artifact_model_version_id'))

    op.drop_table('model_artifact')
