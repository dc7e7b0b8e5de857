"""What a run is asked to do: which hosts of which inventory, which cases of which playbook.

One place checks it, for every way a run starts: ``orchestrator run``, ``run --resume``,
``orchestrator submit`` and a fleet worker picking up a queued case. It is written once into
the run folder (``run-request.json``) and read back from there by resume and by workers, which
must find the inventory and playbook as they were: a file changed since is bad input, never
silently a different run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from orchestrator.config.inventory import load_inventory
from orchestrator.config.model import Inventory
from orchestrator.config.playbook import Playbook, load_playbook
from orchestrator.errors import ConfigError


@dataclass(frozen=True)
class RunPlan:
    inventory: Inventory
    playbook: Playbook
    argv: tuple[str, ...] = ()
    lease_wait_s: float = 0.0           # how long a case waits for a host leased by someone else
    lab: str | None = None              # the fleet engine's lab site (its queue); None: a local run

    @classmethod
    def load(cls, inventory_path: Path | str, playbook_path: Path | str, *, hosts: tuple[str, ...] = (),
             cases: tuple[str, ...] = (), **extra) -> "RunPlan":
        """Load and check everything a run needs before any host is touched (exit 2 if not)."""
        playbook = load_playbook(playbook_path)     # the playbook first: its errors name the cases
        inventory = _select_hosts(load_inventory(inventory_path), hosts)
        if cases:
            playbook = playbook.select(cases)
        for host in inventory.hosts:        # an unset variable is bad input, not a lab failure
            if host.bmc is not None:
                host.bmc.password.resolve()
            if host.ssh.key_passphrase is not None:
                host.ssh.key_passphrase.resolve()
        refused = [h.name for h in inventory.hosts if not h.destructive]
        if refused:
            raise ConfigError(f"host(s) {', '.join(refused)} lack 'destructive: true'; refusing to inject",
                              path=str(inventory.path))
        return cls(inventory=inventory, playbook=playbook, **extra)

    def request(self, run_id: str, started_at: str) -> dict:
        """The run-request.json record."""
        return {"run_id": run_id, "started_at": started_at,
                "inventory": str(Path(self.inventory.path).resolve()), "inventory_digest": self.inventory.digest,
                "playbook": str(Path(self.playbook.path).resolve()), "playbook_digest": self.playbook.digest,
                "hosts": [h.name for h in self.inventory.hosts], "cases": [c.name for c in self.playbook.cases],
                "argv": list(self.argv), "lease_wait_s": self.lease_wait_s, "lab": self.lab}

    @classmethod
    def from_request(cls, data: dict, where: Path) -> "RunPlan":
        try:
            plan = cls.load(data["inventory"], data["playbook"], hosts=tuple(data["hosts"]),
                            cases=tuple(data["cases"]), argv=tuple(data.get("argv", ())),
                            lease_wait_s=float(data.get("lease_wait_s", 0.0)), lab=data.get("lab"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a run request this orchestrator wrote: {exc}", path=str(where)) from None
        for kind, obj in (("inventory", plan.inventory), ("playbook", plan.playbook)):
            if data.get(f"{kind}_digest") not in (None, obj.digest):
                raise ConfigError(f"the {kind} {obj.path} changed since this run started; resume it with the "
                                  f"{kind} it started with, or start a new run", path=str(where))
        return plan

    def pairs(self) -> list[tuple[str, str]]:
        """Every (host, case) of the run, hosts in inventory order, cases in playbook order."""
        return [(h.name, c.name) for h in self.inventory.hosts for c in self.playbook.cases]


def _select_hosts(inventory: Inventory, names: tuple[str, ...]) -> Inventory:
    if not names:
        return inventory
    known = {h.name for h in inventory.hosts}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"no such host(s) in the inventory: {', '.join(unknown)}", path=str(inventory.path))
    return replace(inventory, hosts=tuple(h for h in inventory.hosts if h.name in names))
