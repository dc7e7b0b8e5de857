"""Memory-failure panic qualification orchestrator."""

__version__ = "0.1.0"
