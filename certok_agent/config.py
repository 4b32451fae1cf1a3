"""The agent's configuration file (INI, read with configparser: no TOML reader before 3.11).

```
[agent]
server = https://certok.example.net     ; certok's public URL
token_file = /etc/certok-agent/token     ; mode 0600, the tenant's API token
mode = nginx                             ; nginx: pairs found in `nginx -T`; entries: only the
                                         ; [certificate …] sections below
nginx = nginx                            ; how to run nginx (e.g. `nginx -c /etc/nginx/nginx.conf`)
algorithm = ECC                          ; or RSA
issuer =                                 ; empty: certok's default
state_dir = /var/lib/certok-agent

[certificate mail]                       ; any TLS service: names → files, reload, where to check
names = mail.example.com
cert = /etc/dovecot/fullchain.pem
key = /etc/dovecot/privkey.pem
reload = systemctl reload dovecot
check = 127.0.0.1:993
```
"""

from __future__ import annotations

import configparser
import os
import shlex
from typing import NamedTuple

DEFAULT_CONFIG = "/etc/certok-agent/agent.ini"
DEFAULT_STATE_DIR = "/var/lib/certok-agent"
MODES = ("nginx", "entries")
ALGORITHMS = ("ECC", "RSA")
SECTION_PREFIX = "certificate "


class ConfigError(ValueError):
    """A setting is missing or wrong: the message names it and says what to write."""


class Entry(NamedTuple):
    """One certificate the agent keeps current."""

    label: str
    names: tuple[str, ...]
    cert_path: str
    key_path: str
    # None: the nginx command's `-s reload`.
    reload: tuple[str, ...] | None
    # host:port to handshake with after the reload; None skips the served-serial check.
    check: str | None


class AgentConfig(NamedTuple):
    path: str
    server: str
    token_file: str
    mode: str
    nginx: tuple[str, ...]
    algorithm: str
    issuer: str
    state_dir: str
    ca_file: str | None
    verify_seconds: float
    entries: tuple[Entry, ...]

    def token(self) -> str:
        try:
            with open(self.token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as error:
            raise ConfigError(
                f"token_file {self.token_file}: {error.strerror}; "
                "write the tenant's token there (mode 0600) or run `certok-agent install`"
            ) from error
        if not token:
            raise ConfigError(f"token_file {self.token_file} is empty: write the token there")
        return token


def load(path: str) -> AgentConfig:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle)
    except OSError as error:
        raise ConfigError(
            f"config {path}: {error.strerror}; run `certok-agent install` or pass --config"
        ) from error
    except configparser.Error as error:
        raise ConfigError(f"config {path}: {error}".replace("\n", " ")) from error
    if not parser.has_section("agent"):
        raise ConfigError(f"config {path}: no [agent] section; see `certok-agent --help`")
    agent = parser["agent"]
    server = agent.get("server", "").strip()
    if not server.startswith(("http://", "https://")):
        raise ConfigError(f"config {path}: [agent] server must be certok's http(s) URL")
    mode = agent.get("mode", "nginx").strip()
    if mode not in MODES:
        raise ConfigError(f"config {path}: [agent] mode is {mode!r}; use nginx or entries")
    algorithm = agent.get("algorithm", "ECC").strip().upper()
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"config {path}: [agent] algorithm is {algorithm!r}; use ECC or RSA")
    try:
        verify_seconds = float(agent.get("verify_seconds", "15"))
    except ValueError as error:
        raise ConfigError(f"config {path}: [agent] verify_seconds must be a number") from error
    entries = tuple(
        _entry(path, name, parser[name]) for name in parser.sections() if name != "agent"
    )
    if mode == "entries" and not entries:
        raise ConfigError(f"config {path}: mode = entries but no [certificate NAME] section")
    return AgentConfig(
        path=path,
        server=server.rstrip("/"),
        token_file=agent.get("token_file", os.path.join(os.path.dirname(path), "token")),
        mode=mode,
        nginx=tuple(shlex.split(agent.get("nginx", "nginx"))),
        algorithm=algorithm,
        issuer=agent.get("issuer", "").strip(),
        state_dir=agent.get("state_dir", DEFAULT_STATE_DIR),
        ca_file=agent.get("ca_file") or None,
        verify_seconds=verify_seconds,
        entries=entries,
    )


def _entry(path: str, section: str, values: configparser.SectionProxy) -> Entry:
    if not section.startswith(SECTION_PREFIX):
        raise ConfigError(f"config {path}: unknown section [{section}]; use [certificate NAME]")
    label = section[len(SECTION_PREFIX) :].strip()
    names = tuple(n.strip().lower() for n in values.get("names", "").split(",") if n.strip())
    missing = [key for key in ("cert", "key") if not values.get(key, "").strip()]
    if not names:
        missing.insert(0, "names")
    if missing:
        raise ConfigError(f"config {path}: [{section}] needs {', '.join(missing)}")
    reload = values.get("reload", "").strip()
    check = values.get("check", "").strip()
    return Entry(
        label=label,
        names=names,
        cert_path=values["cert"].strip(),
        key_path=values["key"].strip(),
        reload=tuple(shlex.split(reload)) if reload else None,
        check=None if check in ("", "none") else check,
    )


def render(server: str, token_file: str, state_dir: str) -> str:
    """A new configuration file: nginx mode, the defaults spelt out."""
    return (
        "[agent]\n"
        f"server = {server}\n"
        f"token_file = {token_file}\n"
        "mode = nginx\n"
        "nginx = nginx\n"
        "algorithm = ECC\n"
        f"state_dir = {state_dir}\n"
        "\n"
        "; Other TLS services: one section each.\n"
        "; [certificate mail]\n"
        "; names = mail.example.com\n"
        "; cert = /etc/dovecot/fullchain.pem\n"
        "; key = /etc/dovecot/privkey.pem\n"
        "; reload = systemctl reload dovecot\n"
        "; check = 127.0.0.1:993\n"
    )


def entry_names(entries: tuple[Entry, ...]) -> list[str]:
    return [entry.label for entry in entries]
