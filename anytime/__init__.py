"""anytime: anytime object detection (RetinaNet + stacked NAS-FPN exits) served under deadlines."""

__version__ = "0.1.0"
