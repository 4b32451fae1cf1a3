"""The rig lives in certok.demo (`certok demo` runs it too); the tests import it from here."""

from certok.demo.tls import ServerTls, write_server_tls

__all__ = ["ServerTls", "write_server_tls"]
