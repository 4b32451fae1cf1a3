"""certok-agent's reading of `nginx -T`: pairs, names, skipped names and TLS addresses."""

from __future__ import annotations

import pytest

from certok_agent.nginx_conf import ConfigError, certificate_pairs, skip_reason, tokenize

DUMP = """# configuration file /etc/nginx/nginx.conf:
user www-data;
http {
\tssl_certificate_key /etc/ssl/shared.key;   # inherited by the first server
\tserver {
\t\tlisten 443 ssl http2;
\t\tserver_name www.example.com example.com _ ~^(?<sub>.+)\\.example\\.com$;
\t\tssl_certificate "/etc/ssl/www example.pem";
\t}
\tinclude /etc/nginx/sites/*.conf;
}

# configuration file /etc/nginx/sites/shop.conf:
server {
    listen [::]:8443;
    ssl on;
    server_name 'shop.example.com' *.shop.example.com 192.0.2.7 localhost;
    ssl_certificate certs/shop.pem;
    ssl_certificate_key certs/shop.key;
}
server {
    listen 127.0.0.1:9443 ssl;
    server_name api.example.com;
    ssl_certificate certs/shop.pem;
    ssl_certificate_key certs/shop.key;
}
server {
    listen 80;
    server_name plain.example.com;
}
server {
    listen 443 ssl;
    server_name dyn.example.com;
    ssl_certificate /etc/ssl/$ssl_server_name.pem;
    ssl_certificate_key /etc/ssl/$ssl_server_name.key;
}
"""


def test_pairs_names_and_addresses() -> None:
    pairs = {pair.cert_path: pair for pair in certificate_pairs(DUMP)}
    assert sorted(pairs) == ["/etc/nginx/certs/shop.pem", "/etc/ssl/www example.pem"]
    www = pairs["/etc/ssl/www example.pem"]
    assert www.key_path == "/etc/ssl/shared.key"
    assert www.names == ("www.example.com", "example.com")
    assert [name for name, _ in www.skipped] == ["_", "~^(?<sub>.+)\\.example\\.com$"]
    assert www.address == "127.0.0.1:443"
    shop = pairs["/etc/nginx/certs/shop.pem"]
    # One pair used by two server blocks: the names of both, the first block's address.
    assert shop.names == ("shop.example.com", "*.shop.example.com", "api.example.com")
    assert dict(shop.skipped) == {"192.0.2.7": "an IP address", "localhost": "a local name"}
    assert shop.address == "[::1]:8443"


def test_a_configuration_without_file_headers_reads_as_one_file() -> None:
    text = (
        "server { listen 8443 ssl; server_name a.example;"
        " ssl_certificate a.pem; ssl_certificate_key a.key; }"
    )
    (pair,) = certificate_pairs(text)
    assert pair.names == ("a.example",) and pair.address == "127.0.0.1:8443"


@pytest.mark.parametrize(
    "text", ["server {", "}", 'server { server_name "open; }', "{ listen 1; }"]
)
def test_broken_configurations_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        certificate_pairs(text)


def test_tokens_keep_escapes_and_drop_comments() -> None:
    assert list(tokenize('a "b c" d\\;e # f ;\n;')) == ["a", "b c", "d\\;e", ";"]


@pytest.mark.parametrize(
    ("name", "skipped"),
    [
        ("www.example.com", False),
        ("*.example.com", False),
        ("xn--bcher-kva.example", False),
        ("_", True),
        ("~^re$", True),
        ("localhost", True),
        ("10.0.0.1", True),
        ("::1", True),
        (".example.com", True),
        ("www.*", True),
        ("$host", True),
    ],
)
def test_skip_reasons(name: str, skipped: bool) -> None:
    assert (skip_reason(name) is not None) is skipped
