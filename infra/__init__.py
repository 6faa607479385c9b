"""Shared infrastructure of the worklist and the store: database, audit log, clock, errors.

It imports nothing else of the project; ``worklist/`` and ``store/`` import it.
"""
