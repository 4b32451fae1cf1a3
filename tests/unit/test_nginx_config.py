"""The uploaded nginx configuration → certificate pairs and names (httpsok.sh's two forms)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certok.agents.nginx_config import (
    MAX_BLOCK_DEPTH,
    ConfigSyntaxError,
    certificate_pairs,
)
from certok.agents.server_names import (
    IP_ADDRESS,
    LOCALHOST,
    PLACEHOLDER,
    REGEX,
    TAIL_WILDCARD,
    classify,
    split_delegated,
)

# `nginx -T` output: every file once after its header, includes left in place.
DUMP = """# configuration file /etc/nginx/nginx.conf:
user nginx;
events { worker_connections 1024; }
http {
\tinclude       mime.types;
\tinclude conf.d/*.conf;   # sites
\tserver {
\t\tlisten 80 default_server;
\t\tserver_name _;
\t}
}

# configuration file /etc/nginx/mime.types:
types { text/html html; }

# configuration file /etc/nginx/conf.d/a.conf:
server {
    listen 443 ssl http2;
    server_name "www.customer.test" customer.test;  # both names
    server_name ~^img\\d+\\.customer\\.test$ 127.0.0.1;
    ssl_certificate     /etc/nginx/ssl/customer.pem;
    ssl_certificate_key /etc/nginx/ssl/customer.key;
    include snippets/tls.conf;
}

# configuration file /etc/nginx/snippets/tls.conf:
ssl_protocols TLSv1.2 TLSv1.3;

# configuration file /etc/nginx/conf.d/b.conf:
server {
    listen 443;
    ssl on;
    server_name api.customer.test localhost;
    ssl_certificate ssl/customer.pem;
    ssl_certificate_key ssl/customer.key;
}
server {
    listen 8443 ssl;
    server_name 'shop.customer.test';
    ssl_certificate "/etc/nginx/ssl/shop.pem";
    ssl_certificate_key "/etc/nginx/ssl/shop.key";
}
server {
    listen 80;
    server_name plain.customer.test;
    ssl_certificate /etc/nginx/ssl/unused.pem;
    ssl_certificate_key /etc/nginx/ssl/unused.key;
}
"""

# httpsok.sh's own expansion when `nginx -T` fails: include lines commented out, files inlined.
EXPANDED = """user nginx;
http {
    #import include /etc/nginx/mime.types;
    #import     include conf.d/*.conf;
#included-begin /etc/nginx/conf.d/a.conf;
server {
\tlisten\t443\tssl;
\tserver_name\twww.customer.test;
\t#import include /etc/nginx/snippets/more.conf;
#included-begin /etc/nginx/snippets/more.conf;
\tserver_name .customer.test;
#included-end /etc/nginx/snippets/more.conf;
\tssl_certificate /etc/nginx/ssl/customer.pem;
\tssl_certificate_key /etc/nginx/ssl/customer.key;
}
#included-end /etc/nginx/conf.d/a.conf;
#included-begin /etc/nginx/conf.d/b.conf;
server { listen [::]:443 ssl; server_name www.customer.test api.customer.test;
  ssl_certificate /etc/nginx/ssl/customer.pem; ssl_certificate_key /etc/nginx/ssl/customer.key; }
#included-end /etc/nginx/conf.d/b.conf;
}
"""


def test_nginx_dump_resolves_includes_from_the_upload_only() -> None:
    parsed = certificate_pairs(DUMP, "/etc/nginx")
    pairs = {p.cert_path: p for p in parsed.pairs}
    # relative paths are anchored at the configuration's home; one cert path → one pair
    assert list(pairs) == ["/etc/nginx/ssl/customer.pem", "/etc/nginx/ssl/shop.pem"]
    customer = pairs["/etc/nginx/ssl/customer.pem"]
    assert customer.key_path == "/etc/nginx/ssl/customer.key"
    assert customer.names == (
        "www.customer.test",
        "customer.test",
        "~^img\\d+\\.customer\\.test$",
        "127.0.0.1",
        "api.customer.test",
        "localhost",
    )
    assert pairs["/etc/nginx/ssl/shop.pem"].names == ("shop.customer.test",)


def test_the_agents_own_expansion_with_markers_tabs_and_several_blocks() -> None:
    parsed = certificate_pairs(EXPANDED, "/etc/nginx")
    assert len(parsed.pairs) == 1
    pair = parsed.pairs[0]
    assert pair.cert_path == "/etc/nginx/ssl/customer.pem"
    assert pair.names == ("www.customer.test", ".customer.test", "api.customer.test")
    assert parsed.notes == []


def test_inherited_certificates_dual_certificates_and_variables() -> None:
    text = """
http {
  ssl_certificate /c/http.pem;
  ssl_certificate_key /c/http.key;
  server { listen 443 ssl; server_name a.customer.test; }
  server {
    listen 443 ssl; server_name b.customer.test;
    ssl_certificate /c/rsa.pem; ssl_certificate_key /c/rsa.key;
    ssl_certificate /c/ecc.pem; ssl_certificate_key /c/ecc.key;
  }
  server { listen 443 ssl; server_name c.customer.test;
    ssl_certificate /c/$ssl_server_name.pem; ssl_certificate_key /c/$ssl_server_name.key; }
  server { listen 443 ssl; server_name d.customer.test;
    ssl_certificate "/c/with space.pem"; ssl_certificate_key /c/d.key; }
}
stream { server { listen 853 ssl; ssl_certificate /c/dot.pem; ssl_certificate_key /c/dot.key; } }
"""
    parsed = certificate_pairs(text, "/etc/nginx")
    by_path = {p.cert_path: p for p in parsed.pairs}
    assert by_path["/c/http.pem"].names == ("a.customer.test",)
    assert by_path["/c/rsa.pem"].key_path == "/c/rsa.key"
    assert by_path["/c/ecc.pem"].key_path == "/c/ecc.key"
    assert by_path["/c/dot.pem"].names == ()
    assert not any("$" in path or " " in path for path in by_path)
    assert any("variable" in note for note in parsed.notes)
    assert any("blank or a comma" in note for note in parsed.notes)


def test_same_path_with_two_keys_keeps_the_first_and_says_so() -> None:
    text = """http {
  server { listen 443 ssl; server_name a.customer.test;
    ssl_certificate /c/x.pem; ssl_certificate_key /c/x.key; }
  server { listen 443 ssl; server_name b.customer.test;
    ssl_certificate /c/x.pem; ssl_certificate_key /c/other.key; }
}"""
    parsed = certificate_pairs(text, "/etc/nginx")
    assert [(p.key_path, p.names) for p in parsed.pairs] == [
        ("/c/x.key", ("a.customer.test", "b.customer.test"))
    ]
    assert "two different keys" in parsed.notes[0]


@pytest.mark.parametrize(
    "text",
    [
        "http { server { listen 443 ssl; ",
        "http { } }",
        "a {" * (MAX_BLOCK_DEPTH + 1) + "}" * (MAX_BLOCK_DEPTH + 1),
        "a {" * 5000 + "}" * 5000,
        "server { server_name 'unterminated; }",
    ],
)
def test_broken_configurations_are_refused_without_quoting_them(text: str) -> None:
    marker = "MARKER-b7f1c2"
    with pytest.raises(ConfigSyntaxError) as refusal:
        certificate_pairs(f"# {marker}\n{marker} on;\n" + text, "/etc/nginx")
    assert marker not in refusal.value.message
    assert "nginx" in refusal.value.message


def test_nesting_up_to_the_limit_is_read() -> None:
    text = (
        "a {" * (MAX_BLOCK_DEPTH - 1)
        + (
            "server { listen 443 ssl; server_name a.customer.test; "
            "ssl_certificate /c/a.pem; ssl_certificate_key /c/a.key; }"
        )
        + "}" * (MAX_BLOCK_DEPTH - 1)
    )
    assert [p.cert_path for p in certificate_pairs(text, "/etc/nginx").pairs] == ["/c/a.pem"]


def test_includes_never_read_certoks_own_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "secret.conf"
    secret.write_text("server { listen 443 ssl; server_name leak.test; "
                      "ssl_certificate /leak.pem; ssl_certificate_key /leak.key; }")  # fmt: skip
    text = f"# configuration file /etc/nginx/nginx.conf:\nhttp {{ include {secret}; }}\n"
    assert certificate_pairs(text, "/etc/nginx").pairs == []
    assert certificate_pairs(f"http {{ include {secret}; }}", "/etc/nginx").pairs == []


def test_relative_paths_of_a_dump_follow_its_main_file() -> None:
    text = (
        "# configuration file /opt/nginx/conf/nginx.conf:\n"
        "http { server { listen 443 ssl; server_name a.customer.test; "
        "ssl_certificate cert/a.pem; ssl_certificate_key cert/a.key; } }\n"
    )
    (pair,) = certificate_pairs(text, "/etc/nginx").pairs
    assert (pair.cert_path, pair.key_path) == (
        "/opt/nginx/conf/cert/a.pem",
        "/opt/nginx/conf/cert/a.key",
    )


def test_include_cycles_end() -> None:
    text = (
        "# configuration file /e/nginx.conf:\nhttp { include a.conf; }\n"
        "# configuration file /e/a.conf:\ninclude /e/a.conf;\n"
        "server { listen 443 ssl; server_name a.customer.test; "
        "ssl_certificate /c/a.pem; ssl_certificate_key /c/a.key; }\n"
    )
    assert [p.cert_path for p in certificate_pairs(text, "/e").pairs] == ["/c/a.pem"]


def test_server_names_skipped_with_reasons() -> None:
    result = classify(
        [
            "www.customer.test",
            "_",
            "~^img\\d+$",
            "localhost",
            "127.0.0.1",
            "[::1]",
            "www.customer.*",
            ".shop.test",
            "*.api.test",
            "WWW.Customer.Test",
            "$hostname",
            "bad_name!.test",
        ],
        max_names=10,
    )
    assert result.names == ["www.customer.test", "shop.test", "*.shop.test", "*.api.test"]
    reasons = dict(result.skipped)
    assert reasons["_"] == PLACEHOLDER
    assert reasons["~^img\\d+$"] == REGEX
    assert reasons["localhost"] == LOCALHOST
    assert reasons["127.0.0.1"] == reasons["[::1]"] == IP_ADDRESS
    assert reasons["www.customer.*"] == TAIL_WILDCARD
    assert "variable" in reasons["$hostname"]
    assert "bad_name!.test" in reasons


def test_names_over_the_limit_and_not_delegated() -> None:
    result = classify([f"n{i}.customer.test" for i in range(5)], max_names=3)
    assert len(result.names) == 3 and len(result.skipped) == 2
    kept, skipped = split_delegated(["a.test", "*.a.test", "b.test"], {"a.test"})
    assert kept == ["a.test", "*.a.test"]
    assert skipped[0][0] == "b.test" and "/v1/cert/dv?domains=b.test" in skipped[0][1]


_PIECES = st.sampled_from(
    [
        "server", "http", "stream", "listen", "443", "ssl", "on", "ssl_certificate",
        "ssl_certificate_key", "server_name", "include", "/c/a.pem", "c/b.key", "www.x.test",
        "_", "~^a$", "$host", "{", "}", ";", " ", "\t", "\n", "#", "'", '"', "\\", "*.x.test",
        "# configuration file /e/nginx.conf:\n", "#included-begin /e/a.conf;\n", "MARKER-9f3e",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=60).map(" ".join))
def test_any_text_parses_or_is_refused_without_being_quoted(text: str) -> None:
    # A refusal names a line, never the text; what parses yields absolute, comma-free paths.
    try:
        parsed = certificate_pairs(text, "/etc/nginx")
    except ConfigSyntaxError as refusal:
        assert "MARKER-9f3e" not in refusal.message
        return
    for pair in parsed.pairs:
        assert pair.cert_path.startswith("/") and pair.key_path.startswith("/")
        assert "," not in pair.cert_path + pair.key_path
    classify([name for pair in parsed.pairs for name in pair.names], max_names=100)
