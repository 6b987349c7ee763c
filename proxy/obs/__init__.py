"""Observability at the bottom of the layers: Prometheus metrics (and the one adapter over
prometheus-client's internals) and JSON log lines.
"""
