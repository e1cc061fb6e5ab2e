"""Prefect tasks: thin wrappers over ``vsrflow`` core functions that add retries, caching
and resources. Each is testable without a server; none holds logic of its own."""
