"""Deadline-aware serving: latency profiles and the exit scheduler (pure, clock-injected, testable)."""
