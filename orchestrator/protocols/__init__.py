"""Capability protocols: what the cycle needs from a lab host, and nothing more.

One real implementation per backend module (``transports/ssh.py`` Fabric,
``transports/ipmi.py`` pyghmi power, ``transports/sol.py`` pyghmi SOL console) and in-tree
fakes (``transports/fake.py``) for unit tests. The virtual lab is *not* a fake: it is driven
through the same real backends as a rack.

Every blocking call takes or implies a timeout; errors are the flat classes of
``orchestrator.errors`` (``RetryableInfraError`` for transient trouble, ``FatalInfraError``
otherwise, ``UnsupportedOperation`` for a capability the backend does not offer).
"""
