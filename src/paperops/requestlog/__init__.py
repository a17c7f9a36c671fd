"""The request log: the database serving writes (every request, answer, generation, feedback)
and monitoring reads (drift windows, stored drift reports).

May import only the foundation modules. `schema` holds the tables and records, `migrations` the
schema version and its numbered steps (applied under a lock: replicas start at once), `writer`
the background writer with group commit and retries, `queries` the readers.
"""
