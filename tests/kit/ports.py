"""Free loopback ports for the servers a test starts.

One allocator for the whole test process, so two servers of one test never get the same port.
It draws below the kernel's ephemeral range and checks TCP and UDP (DNS servers need both), so
an outgoing connection cannot take the port between the check and the server's bind.
"""

from __future__ import annotations

from certok.demo.ports import PortAllocator

_ports = PortAllocator()


def free_port(purpose: str = "a test server") -> int:
    """A port free on 127.0.0.1 for TCP and UDP, never handed out twice in this process.

    Also a port nothing listens on, for tests of a refused connection or an unanswered query.
    """
    return _ports.allocate(purpose)
