"""Serving under deadlines: the exit scheduler and its latency model (pure logic on an injected clock), the gRPC
gateway that runs them over Triton, the Triton process manager, and latency measurement."""
