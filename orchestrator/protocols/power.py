"""Chassis power through a host's BMC: the power capability (IPMI on real hosts)."""

from __future__ import annotations

import abc

from orchestrator.errors import UnsupportedOperation


class PowerProtocol(abc.ABC):
    """Chassis power through the BMC."""

    @abc.abstractmethod
    def status(self) -> str:
        """'on' or 'off'."""

    @abc.abstractmethod
    def on(self) -> None: ...

    @abc.abstractmethod
    def off(self) -> None:
        """Hard off."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Warm reset."""

    def cycle(self) -> None:
        """Off, then on (pyghmi's client has no 'cycle'; BMCs that do may override)."""
        self.off()
        self.on()

    def nmi(self) -> None:
        """Pulse the diagnostic interrupt. Optional: raises ``UnsupportedOperation``."""
        raise UnsupportedOperation("NMI")

    def close(self) -> None:
        """Release the BMC session."""
