"""Runtimes that drive a `HybridAgent` against an environment or a robot."""
