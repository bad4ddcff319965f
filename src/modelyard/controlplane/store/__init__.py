"""Persistence: SQLAlchemy rows, the repository the services use, and Alembic migrations."""
