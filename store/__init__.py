"""Reconciliation of received studies, the hold queue and the durable archive."""
