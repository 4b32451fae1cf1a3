"""certok-agent: puts certok's certificates on a host, proves the TLS service serves them, and
renews them when certok says they are due.

Standard library only, Python 3.8+: hosts run old distributions and have no pip. The server
serves this package as a zipapp (`/v1/agent/certok-agent.pyz`), and the certok package installs
it as the `certok-agent` console script.
"""

__version__ = "0.1.0"
