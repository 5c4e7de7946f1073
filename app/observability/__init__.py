"""Operability: Prometheus metrics, health checks, structured logs and the request middleware."""
