"""A generic batching and delivery core: bounded buffer, lanes, retries, one ledger.

Nothing here knows about Sprig; a backend supplies planning and sending.
"""
