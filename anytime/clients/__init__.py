"""Clients of the anytime gateway: one-image ``detect`` (torch-free, runnable from ``clients/detect.py`` without
installing this package) and the open-loop batch evaluator ``loadgen``."""
