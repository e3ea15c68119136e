"""Clients of the anytime gateway: one-image ``detect`` and the open-loop batch evaluator ``loadgen``."""
