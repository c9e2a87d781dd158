"""Policies: RLModules, entropy estimation, entropy-aware initialization, entropy-coefficient control."""
