"""`certok demo`: the user story on one machine, in about a minute.

A loopback world (certok.demo.rig): Pebble as the CA, unbound as the recursive resolver, NSD
serving the customer's zone `customer.test`, nginx as the customer's web server. certok runs
against it with its own data directory; a tenant is created, `www.customer.test` is
delegated with the one CNAME certok asks for, a certificate is issued and nginx serves it.
Every step is printed as the command a user would type (curl), followed by what came back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from certok.demo.binaries import missing_binaries
from certok.demo.certok_env import child_environment, rig_environment
from certok.demo.errors import RigError
from certok.demo.process import ManagedProcess
from certok.demo.rig import Rig
from certok.order_states import ISSUED, PENDING

DEBIAN_PACKAGES = ("pebble", "unbound", "nsd", "nginx", "dnsutils")
NAME = "www.customer.test"
TENANT = "demo"
START_TIMEOUT_SECONDS = 60.0
ISSUE_TIMEOUT_SECONDS = 120.0
_POLL_SECONDS = 0.3

Say = Callable[[str], None]
Ask = Callable[[str], bool]


class DemoError(Exception):
    """The demo could not go on; the message says why and what to do."""


def ensure_packages(
    *,
    yes: bool,
    ask: Ask,
    say: Say,
    missing: Callable[[], list[str]] = missing_binaries,
    run: Callable[[list[str]], int] = lambda argv: subprocess.call(argv),  # noqa: S603 - apt-get
    is_root: Callable[[], bool] = lambda: os.geteuid() == 0,
) -> None:
    """Install the rig's Debian packages if a program is missing, after asking (or --yes)."""
    absent = missing()
    if not absent:
        return
    command = [
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        *DEBIAN_PACKAGES,
    ]
    say(f"the demo needs {', '.join(absent)} (Debian packages {' '.join(DEBIAN_PACKAGES)})")
    if not is_root():
        raise DemoError(f"run as root to install them, or: sudo {' '.join(command)}")
    if shutil.which("apt-get") is None:
        raise DemoError("no apt-get here: the demo installs Debian packages (Debian 12 or later)")
    if not yes and not ask(f"install them now with `{' '.join(command)}`? [y/N] "):
        raise DemoError(f"not installed; install them with: {' '.join(command)}")
    env_prefix = ["env", "DEBIAN_FRONTEND=noninteractive"]
    for argv in (["apt-get", "update"], [*env_prefix, *command]):
        if run(argv) != 0:
            raise DemoError(f"`{' '.join(argv)}` failed: see its output above")
    still = missing()
    if still:
        raise DemoError(f"still missing after installing: {', '.join(still)}")


def run_demo(*, yes: bool, wait: bool, say: Say = print, ask: Ask | None = None) -> None:
    ask = ask or _ask_terminal
    ensure_packages(yes=yes, ask=ask, say=say)
    workdir = Path(tempfile.mkdtemp(prefix="certok-demo-"))
    say(
        f"# certok demo: a loopback CA (Pebble), resolver (unbound), DNS (NSD) and web server "
        f"(nginx); files in {workdir}"
    )
    with Rig() as rig:
        settings = rig_environment(rig, workdir / "data", apply_wait_seconds=10)
        server = _start_certok(rig, settings, workdir, say)
        try:
            _story(rig, settings, workdir, say)
            if wait:
                say(
                    "\ncertok, Pebble, unbound, NSD and nginx keep running: try the commands "
                    "above. Press Enter to stop."
                )
                with contextlib.suppress(EOFError, KeyboardInterrupt):
                    input()
        finally:
            server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def _start_certok(rig: Rig, settings: dict[str, str], workdir: Path, say: Say) -> ManagedProcess:
    shown = " ".join(
        f"{key}={_quote(value)}"
        for key, value in settings.items()
        if key in ("CERTOK_DNS_ZONE", "CERTOK_RESOLVERS", "CERTOK_API_PORT", "CERTOK_DNS_PORT")
    )
    _step(say, "Start certok (its settings point it at the loopback CA and resolver)")
    say(f"$ {shown} certok serve")
    server = ManagedProcess(
        "certok",
        [sys.executable, "-m", "certok", "serve"],
        log_path=workdir / "certok.log",
        cwd=workdir,
        env=child_environment(settings),
    )
    server.start()
    api = f"http://127.0.0.1:{rig.certok_api_port}"
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        status, _ = _http_get(f"{api}/readyz")
        if status == 200:
            break
        if not server.running or time.monotonic() > deadline:
            raise DemoError(f"certok did not start:\n{server.describe_logs(20)}")
        time.sleep(0.1)
    rig.flush_resolver()  # unbound may have asked certok's DNS before it listened
    say(f"  certok answers on {api} (log: {workdir / 'certok.log'})")
    return server


def _story(rig: Rig, settings: dict[str, str], workdir: Path, say: Say) -> None:
    api = f"http://127.0.0.1:{rig.certok_api_port}"
    _step(say, "Create a tenant; its token is shown once")
    say(f"$ CERTOK_DATA_DIR={settings['CERTOK_DATA_DIR']} certok tenant create {TENANT}")
    created = subprocess.run(  # noqa: S603 - this Python, fixed arguments
        [sys.executable, "-m", "certok", "tenant", "create", TENANT],
        env=child_environment(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if created.returncode != 0:
        raise DemoError(f"tenant create failed: {created.stderr.strip()}")
    token = created.stdout.split("token:")[1].split()[0]
    say(f"  token: {token}\n$ TOKEN={token}")

    dv_url = f"{api}/v1/cert/dv?domains={NAME}"
    _step(say, f"Ask which DNS record delegates {NAME} to certok")
    say(f'$ curl -s -H "httpsok-token: $TOKEN" "{dv_url}"')
    first = _api(dv_url, token)
    item = first["items"][0]
    say(_shown(first, ("valid", "code", "items")))
    record = f"{item['name']} IN CNAME {item['value']}."
    _step(say, f"The owner of {rig.customer_zone} adds that record once (here: in NSD)")
    say(f"  {rig.customer_zone} zone: {record}")
    rig.set_customer_records([record])

    _step(say, "Ask again: now valid, with a one-minute code")
    say(f'$ curl -s -H "httpsok-token: $TOKEN" "{dv_url}"')
    second = _api(dv_url, token)
    say(_shown(second, ("valid", "code")))
    if not second.get("valid") or not second.get("code"):
        raise DemoError(f"the delegation was not seen: {second['items'][0].get('detail')}")
    code = second["code"]

    apply_url = f"{api}/v1/cert/apply?code={code}&issuer=letsencrypt&algorithm=ECC"
    _step(say, "Apply for the certificate (ask again with the same code until issued)")
    say(f'$ curl -s -H "httpsok-token: $TOKEN" "{apply_url}"')
    deadline = time.monotonic() + ISSUE_TIMEOUT_SECONDS
    while True:
        data = _api(apply_url, token)
        if data.get("status") != PENDING:
            break
        if time.monotonic() > deadline:
            raise DemoError("the certificate was not issued in time: see certok.log")
        time.sleep(_POLL_SECONDS)
    if data.get("status") != ISSUED:
        raise DemoError(f"the order failed: {data.get('reason')}")
    say(_shown(data, ("status", "issuer", "subject", "notBefore", "notAfter", "domains")))

    site = workdir / "site"
    site.mkdir()
    cert, key = site / "fullchain.pem", site / "privkey.pem"
    cert.write_text(data["certificate"])
    key.write_text(data["privateKey"])
    key.chmod(0o600)
    root = site / "pebble-root.pem"
    root.write_text(rig.pebble_roots())
    port = rig.allocate_port("demo_https")
    _step(say, f"Install it in nginx for {NAME} (certificate and privateKey from the answer)")
    say(f"  ssl_certificate {cert}; ssl_certificate_key {key}; listen {port} ssl;")
    rig.serve_certificate(NAME, port, cert, key)

    _step(say, "nginx serves it, and it verifies against the CA's root")
    say(f"$ curl --resolve {NAME}:{port}:127.0.0.1 --cacert {root} https://{NAME}:{port}/")
    body, leaf = _fetch_https(NAME, port, root)
    say(f"  {body.strip()}")
    issuer = leaf.issuer.rfc4514_string()
    say(
        f"  certificate for {NAME}, issued by {issuer}, valid until "
        f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )
    say("\ncertok issued a certificate for a delegated name and nginx serves it: done.")


# --- helpers -----------------------------------------------------------------------------------


def _step(say: Say, title: str) -> None:
    say(f"\n## {title}")


def _quote(value: str) -> str:
    return f"'{value}'" if any(c in value for c in ' "[]') else value


def _shown(data: dict[str, Any], keys: tuple[str, ...]) -> str:
    view = {key: data.get(key) for key in keys}
    if "items" in view:
        view["items"] = [
            {k: item.get(k) for k in ("domain", "type", "name", "value", "valid")}
            for item in data.get("items", [])
        ]
    return "  " + json.dumps(view, ensure_ascii=False)


def _opener() -> urllib.request.OpenerDirector:
    # Loopback only: no proxy from the environment.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 - http://127.0.0.1
    try:
        with _opener().open(request, timeout=30) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except OSError:
        return 0, b""


def _api(url: str, token: str) -> dict[str, Any]:
    status, body = _http_get(url, {"httpsok-token": token})
    try:
        envelope = json.loads(body)
    except ValueError:
        raise DemoError(f"{url} answered HTTP {status}: {body[:200]!r}") from None
    if envelope.get("code") != 0:
        raise DemoError(f"{url} answered {envelope.get('code')}: {envelope.get('msg')}")
    data: dict[str, Any] = envelope["data"]
    return data


def _fetch_https(name: str, port: int, root: Path) -> tuple[str, x509.Certificate]:
    """GET / from nginx over TLS as curl would: SNI `name`, verified against `root`."""
    context = ssl.create_default_context(cafile=str(root))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
        der = tls.getpeercert(binary_form=True)
    if der is None:
        raise RigError("nginx sent no certificate")
    response = b"".join(chunks).decode(errors="replace")
    head, _, body = response.partition("\r\n\r\n")
    if not head.startswith("HTTP/1.1 200"):
        raise DemoError(f"nginx answered: {head.splitlines()[0] if head else '(nothing)'}")
    return body, x509.load_der_x509_certificate(der)


def _ask_terminal(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(question).strip().lower() in ("y", "yes")
