"""initial registry schema

Generated with `alembic revision --autogenerate` from components/registry/tables.py and
reviewed by hand: constraint names follow the naming convention in tables.py, UTC
timestamps are timestamptz on PostgreSQL, JSON is the generic JSON type.

Revision ID: 0001
Revises: 
Create Date: 2026-11-25 15:25:24.917012

"""
from typing import Sequence, Union

import sqlalchemy as sa
import sqlmodel
from alembic import op

# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('dataset',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset')),
    sa.UniqueConstraint('name', name=op.f('uq_dataset_name'))
    )
    op.create_table('registered_model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('backbone', 'classifier')", name=op.f('ck_registered_model_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registered_model')),
    sa.UniqueConstraint('name', name=op.f('uq_registered_model_name'))
    )
    op.create_table('run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('code_revision', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('running', 'completed', 'failed')", name=op.f('ck_run_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run'))
    )
    op.create_index(op.f('ix_run_kind'), 'run', ['kind'], unique=False)

    op.create_table('dataset_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('manifest_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('manifest_sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('dvc_md5', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('dvc_file', sa.Text(), nullable=False),
    sa.Column('n_images', sa.Integer(), nullable=False),
    sa.Column('n_bytes', sa.Integer(), nullable=False),
    sa.Column('n_quarantined', sa.Integer(), nullable=False),
    sa.Column('source_path', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset.id'], name=op.f('fk_dataset_version_dataset_id_dataset')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dataset_version')),
    sa.UniqueConstraint('dataset_id', 'content_hash', name=op.f('uq_dataset_version_dataset_id_content_hash')),
    sa.UniqueConstraint('dataset_id', 'version', name=op.f('uq_dataset_version_dataset_id_version'))
    )
    op.create_index(op.f('ix_dataset_version_dataset_id'), 'dataset_version', ['dataset_id'], unique=False)

    op.create_table('label_snapshot',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('dataset_version_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('classes', sa.JSON(), nullable=False),
    sa.Column('n_labeled', sa.Integer(), nullable=False),
    sa.Column('n_issues', sa.Integer(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('artifact_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_version_id'], ['dataset_version.id'], name=op.f('fk_label_snapshot_dataset_version_id_dataset_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_label_snapshot')),
    sa.UniqueConstraint('dataset_version_id', 'content_hash', name=op.f('uq_label_snapshot_dataset_version_id_content_hash')),
    sa.UniqueConstraint('dataset_version_id', 'version', name=op.f('uq_label_snapshot_dataset_version_id_version'))
    )
    op.create_index(op.f('ix_label_snapshot_dataset_version_id'), 'label_snapshot', ['dataset_version_id'], unique=False)

    op.create_table('evaluation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('label_snapshot_id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('report_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('report_sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('plot_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('plot_sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('results_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('results_sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('summary', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['label_snapshot_id'], ['label_snapshot.id'], name=op.f('fk_evaluation_label_snapshot_id_label_snapshot')),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_evaluation_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluation'))
    )
    op.create_index(op.f('ix_evaluation_label_snapshot_id'), 'evaluation', ['label_snapshot_id'], unique=False)

    op.create_table('model_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('dataset_version_id', sa.Integer(), nullable=True),
    sa.Column('label_snapshot_id', sa.Integer(), nullable=True),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('flow_run_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('code_revision', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('artifact_uri', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset_version_id'], ['dataset_version.id'], name=op.f('fk_model_version_dataset_version_id_dataset_version')),
    sa.ForeignKeyConstraint(['label_snapshot_id'], ['label_snapshot.id'], name=op.f('fk_model_version_label_snapshot_id_label_snapshot')),
    sa.ForeignKeyConstraint(['model_id'], ['registered_model.id'], name=op.f('fk_model_version_model_id_registered_model')),
    sa.ForeignKeyConstraint(['parent_id'], ['model_version.id'], name=op.f('fk_model_version_parent_id_model_version')),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_model_version_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_version')),
    sa.UniqueConstraint('model_id', 'version', name=op.f('uq_model_version_model_id_version'))
    )
    op.create_index(op.f('ix_model_version_model_id'), 'model_version', ['model_id'], unique=False)

    op.create_table('alias',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['registered_model.id'], name=op.f('fk_alias_model_id_registered_model')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_alias_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alias')),
    sa.UniqueConstraint('model_id', 'name', name=op.f('uq_alias_model_id_name'))
    )
    op.create_table('evaluation_result',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('evaluation_id', sa.Integer(), nullable=False),
    sa.Column('backbone', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('fraction', sa.Float(), nullable=False),
    sa.Column('seed', sa.Integer(), nullable=False),
    sa.Column('n_train', sa.Integer(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluation.id'], name=op.f('fk_evaluation_result_evaluation_id_evaluation')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_version.id'], name=op.f('fk_evaluation_result_model_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluation_result'))
    )
    op.create_index(op.f('ix_evaluation_result_evaluation_id'), 'evaluation_result', ['evaluation_id'], unique=False)

    op.create_table('promotion_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('alias', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('decision', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('candidate_version_id', sa.Integer(), nullable=True),
    sa.Column('previous_version_id', sa.Integer(), nullable=True),
    sa.Column('new_version_id', sa.Integer(), nullable=True),
    sa.Column('evaluation_id', sa.Integer(), nullable=True),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("decision IN ('promoted', 'rejected', 'rollback')", name=op.f('ck_promotion_event_decision')),
    sa.ForeignKeyConstraint(['candidate_version_id'], ['model_version.id'], name=op.f('fk_promotion_event_candidate_version_id_model_version')),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluation.id'], name=op.f('fk_promotion_event_evaluation_id_evaluation')),
    sa.ForeignKeyConstraint(['model_id'], ['registered_model.id'], name=op.f('fk_promotion_event_model_id_registered_model')),
    sa.ForeignKeyConstraint(['new_version_id'], ['model_version.id'], name=op.f('fk_promotion_event_new_version_id_model_version')),
    sa.ForeignKeyConstraint(['previous_version_id'], ['model_version.id'], name=op.f('fk_promotion_event_previous_version_id_model_version')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_promotion_event'))
    )
    op.create_index(op.f('ix_promotion_event_model_id'), 'promotion_event', ['model_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_promotion_event_model_id'), table_name='promotion_event')
    op.drop_table('promotion_event')
    op.drop_index(op.f('ix_evaluation_result_evaluation_id'), table_name='evaluation_result')
    op.drop_table('evaluation_result')
    op.drop_table('alias')
    op.drop_index(op.f('ix_model_version_model_id'), table_name='model_version')
    op.drop_table('model_version')
    op.drop_index(op.f('ix_evaluation_label_snapshot_id'), table_name='evaluation')
    op.drop_table('evaluation')
    op.drop_index(op.f('ix_label_snapshot_dataset_version_id'), table_name='label_snapshot')
    op.drop_table('label_snapshot')
    op.drop_index(op.f('ix_dataset_version_dataset_id'), table_name='dataset_version')
    op.drop_table('dataset_version')
    op.drop_index(op.f('ix_run_kind'), table_name='run')
    op.drop_table('run')
    op.drop_table('registered_model')
    op.drop_table('dataset')
