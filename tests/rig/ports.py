"""The rig lives in certok.demo (`certok demo` runs it too); the tests import it from here."""

from certok.demo.ports import PEBBLE_DEFAULT_PORTS, PortAllocator, port_is_free, require_free

__all__ = ["PEBBLE_DEFAULT_PORTS", "PortAllocator", "port_is_free", "require_free"]
