"""The request log: the database serving writes (every request, answer, generation, feedback)
and monitoring reads (drift windows, stored drift reports).

May import only the foundation modules. `schema` holds the tables and records, `writer` the
background writer with group commit, `queries` the readers.
"""
