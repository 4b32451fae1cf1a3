"""Settings that follow others, and the environment check."""

from __future__ import annotations

from certok.settings import Settings
from certok.settings_loading import unknown_environment_variables


def test_public_url_follows_the_api_port_unless_set() -> None:
    settings = Settings(api_port=9000)
    assert settings.public_url == "http://127.0.0.1:9000"
    assert settings.updated(api_port=9100).public_url == "http://127.0.0.1:9100"
    assert Settings(api_host="0.0.0.0").updated(api_port=81).public_url == "http://127.0.0.1:81"
    given = Settings(public_url="https://certok.example.net/")
    assert given.public_url == "https://certok.example.net"
    assert given.updated(api_port=9100).public_url == "https://certok.example.net"


def test_unknown_environment_variables() -> None:
    env = {
        "CERTOK_API_PROT": "9",
        "CERTOK_API_PORT": "9",
        "CERTOK_CONFIG": "/etc/certok.toml",
        "CERTOK_PYTHON": "python3.12",
        "CERTOK_TEST_POSTGRES_URL": "postgresql+psycopg://postgres@127.0.0.1/test",
        "CERTOK_ISSUERS__PEBBLE__DIRECTORY": "https://ca.test/dir",
        "CERTOK_ISSUERS__PEBBLE__DIRECTROY": "x",
        "CERTOK_ISSUERS__PEBBLE": "x",
        "HOME": "/root",
    }
    assert unknown_environment_variables(env) == [
        "CERTOK_API_PROT",
        "CERTOK_ISSUERS__PEBBLE",
        "CERTOK_ISSUERS__PEBBLE__DIRECTROY",
    ]
