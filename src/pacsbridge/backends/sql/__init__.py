"""The SQL index of the embedded archive (SQLite by default, PostgreSQL by URL)."""
