"""The services' config files, rendered from the templates in certok/demo/templates/."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from certok.demo.errors import RigError

TEMPLATES = Path(__file__).parent / "templates"
_LEFTOVER_PLACEHOLDER = re.compile(r"@(?:RIG|ZONE|P_[A-Z_]+)@")
# The templates' port placeholders, by the rig's port names (certok/demo/ports.py).
_PORT_PLACEHOLDERS = {
    "@P_NSD@": "nsd",
    "@P_UNBOUND@": "unbound",
    "@P_ACME@": "acme",
    "@P_MGMT@": "management",
    "@P_ACME_EAB@": "eab_acme",
    "@P_MGMT_EAB@": "eab_management",
    "@P_NGINX@": "nginx",
    "@P_TLSALPN@": "tls_alpn",
    "@P_SVCDNS@": "certok_dns",
    "@P_SVCHTTPS@": "certok_https",
}


def placeholder_values(
    runtime_dir: Path, certok_zone: str, ports: Mapping[str, int]
) -> dict[str, str]:
    """What each template placeholder stands for in one rig."""
    values = {"@RIG@": str(runtime_dir), "@ZONE@": certok_zone}
    for placeholder, port_name in _PORT_PLACEHOLDERS.items():
        values[placeholder] = str(ports[port_name])
    return values


def render_template(template: str, values: Mapping[str, str], destination: Path) -> Path:
    """Write `template` with every `@NAME@` placeholder replaced; refuse one left unknown."""
    text = (TEMPLATES / template).read_text()
    # Longest first, so @P_ACME@ never eats the front of @P_ACME_EAB@.
    for placeholder in sorted(values, key=len, reverse=True):
        text = text.replace(placeholder, values[placeholder])
    leftover = _LEFTOVER_PLACEHOLDER.search(text)
    if leftover:
        raise RigError(f"template {template} has an unknown placeholder {leftover.group()}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(text)
    return destination


def eab_mac_keys() -> dict[str, str]:
    """The EAB Pebble's key ids and HMAC keys, as its config template sets them."""
    # The template's ports are bare placeholders (not JSON yet): zero them to read the keys.
    eab_template = _LEFTOVER_PLACEHOLDER.sub("0", (TEMPLATES / "pebble-eab.json").read_text())
    return dict(json.loads(eab_template)["pebble"]["externalAccountMACKeys"])


def base_customer_zone() -> str:
    """The customer zone's base records (tests merge their own lines over them)."""
    return (TEMPLATES / "customer.test.zone").read_text()
