"""entropilot: entropy-controlled RL for quadrotors, from a Ray cluster to the vehicle."""

__version__ = "0.1.0"
