"""Every setting is documented, and the documented env/file precedence holds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from certok.settings import IssuerSettings, Settings
from certok.settings_loading import load_settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_.<>]+)` \|", DOC.read_text(), flags=re.MULTILINE))


def test_every_setting_is_documented() -> None:
    names = documented_names()
    missing = [f for f in Settings.model_fields if f not in names]
    missing += [
        f"issuers.<name>.{f}"
        for f in IssuerSettings.model_fields
        if f"issuers.<name>.{f}" not in names
    ]
    assert not missing, f"add these to docs/settings.md: {missing}"


def test_no_documented_setting_is_stale() -> None:
    known = set(Settings.model_fields) | {
        f"issuers.<name>.{f}" for f in IssuerSettings.model_fields
    }
    stale = documented_names() - known
    assert not stale, f"docs/settings.md documents settings that do not exist: {stale}"


def test_env_beats_file_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "certok.toml"
    config.write_text(
        'api_port = 9000\ndns_zone = "Acme.Example.NET."\n'
        '[issuers.letsencrypt]\ndirectory = "https://ca.test/dir"\n'
    )
    monkeypatch.setenv("CERTOK_API_PORT", "9100")
    monkeypatch.setenv("CERTOK_ISSUERS__GOOGLE__EAB_KID", "kid-9")
    settings = load_settings(config)
    assert settings.api_port == 9100
    assert settings.dns_zone == "acme.example.net"
    assert settings.issuers["letsencrypt"].directory == "https://ca.test/dir"
    # configuring some issuers keeps the others and their defaults
    assert settings.issuers["google"].eab_kid == "kid-9"
    assert settings.issuers["google"].directory.startswith("https://dv.acme-v02.api.pki.goog")
    assert "zerossl" in settings.issuers


def test_unknown_setting_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "certok.toml"
    config.write_text("api_prot = 1\n")
    with pytest.raises(ValidationError, match="api_prot"):
        load_settings(config)


def test_default_issuer_must_exist() -> None:
    with pytest.raises(ValidationError, match="default_issuer"):
        Settings(default_issuer="nobody")


def test_trusted_proxies_read_from_env_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().trusted_proxies == []  # default: X-Forwarded-For is never believed
    monkeypatch.setenv("CERTOK_TRUSTED_PROXIES", '[" 127.0.0.1", "::1", "10.0.0.0/8"]')
    assert load_settings().trusted_proxies == ["127.0.0.1", "::1", "10.0.0.0/8"]


@pytest.mark.parametrize(
    "entry",
    ["nginx.internal", "10.0.0.1/8", "300.1.1.1", ""],  # a name, host bits set, no address
)
def test_a_trusted_proxy_that_is_no_address_or_network_is_named(entry: str) -> None:
    with pytest.raises(ValidationError, match=f"trusted_proxies entry '{re.escape(entry)}' is not"):
        Settings(trusted_proxies=["127.0.0.1", entry])


def test_trusting_every_peer_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"must not contain '\*'.*list your proxies"):
        Settings(trusted_proxies=["*"])
