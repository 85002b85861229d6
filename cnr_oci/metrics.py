"""Prometheus metrics (prometheus-client), one registry per app, served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.upstream = Counter(
            "cnr_oci_upstream_requests", "Requests sent to the OCI registry", ["method", "status"],
            registry=self.registry,
        )
        self.requests = Histogram(
            "cnr_oci_request_seconds", "CNR requests served", ["method", "route", "status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
