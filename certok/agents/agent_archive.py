"""certok-agent as a host fetches it: a zipapp of the `certok_agent` package and the one-line
installer (`curl -fsS <public_url>/v1/agent/install.sh | sh -s -- --token …`).

The archive is built from the installed package's own files, so the agent a host downloads is
always the one this server was released with.
"""

from __future__ import annotations

import functools
import io
import zipfile
from importlib import resources

import certok_agent

ARCHIVE_NAME = "certok-agent.pyz"
_MAIN = b"import sys\n\nfrom certok_agent.cli import main\n\nsys.exit(main())\n"
# A fixed timestamp: the same package gives the same bytes (and the same ETag-able archive).
_EPOCH = (2020, 1, 1, 0, 0, 0)

_INSTALLER = """#!/bin/sh
# certok-agent installer, served by {server}
# Usage: curl -fsS {server}/v1/agent/install.sh | sh -s -- --token TOKEN
set -eu
server='{server}'
token=''
while [ $# -gt 0 ]; do
    case "$1" in
        --token) token="${{2:-}}"; shift 2 ;;
        --token=*) token="${{1#--token=}}"; shift ;;
        *) echo "certok-agent install: unknown argument $1 (only --token TOKEN)" >&2; exit 2 ;;
    esac
done
[ -n "$token" ] || {{ echo "certok-agent install: --token TOKEN is required" >&2; exit 2; }}
command -v python3 >/dev/null || {{ echo "certok-agent needs python3 (3.8 or later)" >&2; exit 1; }}
python3 -c 'import sys; sys.exit(sys.version_info < (3, 8))' ||
    {{ echo "certok-agent needs Python 3.8 or later" >&2; exit 1; }}
root="${{CERTOK_AGENT_ROOT:-/}}"
dir="${{root%/}}/usr/local/lib/certok-agent"
mkdir -p "$dir"
curl -fsS -o "$dir/{archive}.tmp" "$server/v1/agent/{archive}"
mv "$dir/{archive}.tmp" "$dir/{archive}"
exec python3 "$dir/{archive}" install --server "$server" --token "$token" --root "$root"
"""


@functools.cache
def archive() -> bytes:
    """The zipapp: `python3 certok-agent.pyz run` works with nothing else installed."""
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        package = resources.files(certok_agent)
        for item in sorted(package.iterdir(), key=lambda entry: entry.name):
            if item.name.endswith(".py"):
                info = zipfile.ZipInfo(f"certok_agent/{item.name}", _EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                bundle.writestr(info, item.read_bytes())
        main = zipfile.ZipInfo("__main__.py", _EPOCH)
        main.compress_type = zipfile.ZIP_DEFLATED
        bundle.writestr(main, _MAIN)
    return buffer.getvalue()


def installer(server: str) -> str:
    """The shell installer for a server at `server` (its public URL)."""
    if "'" in server:
        raise ValueError("public_url must not contain a quote")
    return _INSTALLER.format(server=server.rstrip("/"), archive=ARCHIVE_NAME)
