"""Model registry: tables (SQLModel), db (engines, sessions, Alembic), queries, promotion."""
