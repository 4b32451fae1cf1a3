"""End-to-end test infrastructure: the loopback ACME rig and a certok server subprocess."""

from tests.rig.certok_server import CertokServer
from tests.rig.errors import RigError
from tests.rig.fault_proxy import FaultProxy as FaultProxy
from tests.rig.rig import Rig, missing_binaries

__all__ = ["CertokServer", "Rig", "RigError", "missing_binaries"]
