"""PruneNet: calibration-free structured FFN pruning with a learned policy (ICLR 2025)."""

__version__ = "0.1.0"
