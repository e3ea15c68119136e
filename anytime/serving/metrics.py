"""Prometheus metrics of the gateway, in a registry of its own (several gateways can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class GatewayMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("anytime_requests", "Detect requests by final status", ["status"], registry=r)
        self.exit_used = Counter("anytime_exit_used", "Requests answered, by exit", ["exit"], registry=r)
        self.option_used = Counter("anytime_option_used", "Requests answered, by option (SIZE/EXIT)", ["option"],
                                   registry=r)
        self.budget = Counter("anytime_budget", "Answered requests that met or missed their budget", ["outcome"], registry=r)
        self.shed = Counter("anytime_shed", "Requests refused by admission control", ["reason"], registry=r)
        self.queue_depth = Gauge("anytime_queue_depth", "Requests waiting for a slot", registry=r)
        self.in_flight = Gauge("anytime_in_flight", "Requests running on an inference server", registry=r)
        self.decoded = Counter("anytime_images_decoded", "Request images the gateway started to decode (admitted requests only)", registry=r)
        self.decode_seconds = Histogram("anytime_decode_seconds", "Decoding and letterboxing a request's image, by "
                                        "format family (what admission predicts from the header)", ["format"],
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.endpoint_up = Gauge("anytime_endpoint_up", "1 if the inference server answers", ["endpoint"], registry=r)
        self.loop_lag = Gauge("anytime_event_loop_lag_seconds", "Worst lateness of the gateway's event loop in "
                              "the last 2 s (progressive answers leave that much earlier)", registry=r)
        self.batch_size = Histogram("anytime_batch_size", "Images per Triton call (upfront execution batches ready "
                                    "requests for one exit)", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.latency = Histogram("anytime_latency_seconds", "Time per stage", ["stage"], buckets=_LATENCY_BUCKETS,
                                 registry=r)
