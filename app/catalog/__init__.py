"""The catalog: SQLAlchemy tables and every SQL query. It stores and queries; it never
interprets model bytes."""
