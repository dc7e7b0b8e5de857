"""Whether a case applies to a host, by the case's limits and the host's inventory entry
(no host contact): the runner records a skip with the reason, the pytest face skips."""

from __future__ import annotations

from orchestrator.config.model import Host
from orchestrator.config.playbook import INJECTOR_FEATURES, Case


def skip_reason(host: Host, case: Case) -> str | None:
    """Why ``case`` does not apply to ``host`` per the case's limits (None: it applies)."""
    lim = case.limits
    if lim.arches and host.arch not in lim.arches:
        return f"case is limited to arches {', '.join(lim.arches)}; host is {host.arch}"
    if lim.platforms and host.platform not in lim.platforms:
        return f"case is limited to platforms {', '.join(lim.platforms)}; host is {host.platform}"
    # an injector's inventory feature carries the injector's name, unless the playbook says otherwise
    needed = INJECTOR_FEATURES.get(case.injector, case.injector)
    missing = [f for f in dict.fromkeys((*lim.features, needed)) if f not in host.features]
    if missing:
        return f"host lacks feature(s) {', '.join(missing)}"
    if case.kdump == "required" and case.expect.outcome != "survive" and "kdump" not in host.features:
        return "host lacks feature kdump"
    return None
