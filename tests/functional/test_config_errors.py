"""Configuration mistakes, as an operator makes them: the real `certok` command in a
subprocess, each mistake one or two lines on stderr naming the setting, exit status 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

EXIT_CONFIG = 2


def certok(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTOK_")}
    clean["CERTOK_DATA_DIR"] = str(tmp_path / "data")
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "certok", *args],
        env=clean,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tmp_path,
    )


def assert_config_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == EXIT_CONFIG, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("certok: error:")]
    assert len(errors) == 1, result.stderr
    message = "\n".join(lines[lines.index(errors[0]) :])
    assert len(message.splitlines()) <= 2, message
    for word in words:
        assert word in message, (word, message)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port taken on 127.0.0.1 for both UDP and TCP by another program (this test)."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind(("127.0.0.1", port))
    except OSError:
        udp.close()
        tcp.close()
        pytest.fail(f"port {port} was free for TCP but not UDP; run again")
    try:
        yield port
    finally:
        udp.close()
        tcp.close()


def serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"CERTOK_API_PORT": "0", "CERTOK_DNS_PORT": "0"}
    return certok(tmp_path, "serve", *args, env={**base, **env})


def test_toml_syntax_error(tmp_path: Path) -> None:
    config = tmp_path / "certok.toml"
    config.write_text('dns_zone = "acme.example.net"\napi_port = \n')
    result = certok(tmp_path, "--config", str(config), "tenant", "list")
    assert_config_error(result, str(config), "not valid TOML", "line 2")


def test_unknown_toml_key_suggests_the_setting(tmp_path: Path) -> None:
    config = tmp_path / "certok.toml"
    config.write_text("api_prot = 9\n")
    result = certok(tmp_path, "--config", str(config), "tenant", "list")
    assert_config_error(result, "api_prot", "did you mean api_port", str(config))


def test_unknown_log_level(tmp_path: Path) -> None:
    result = certok(tmp_path, "tenant", "list", env={"CERTOK_LOG_LEVEL": "CHATTY"})
    assert_config_error(result, "log_level", "CHATTY", "CERTOK_LOG_LEVEL", "DEBUG, INFO")


def test_unknown_environment_variable(tmp_path: Path) -> None:
    result = certok(tmp_path, "tenant", "list", env={"CERTOK_API_PROT": "9"})
    assert_config_error(result, "CERTOK_API_PROT", "did you mean CERTOK_API_PORT")


def test_unknown_nested_environment_variable(tmp_path: Path) -> None:
    env = {"CERTOK_ISSUERS__LETSENCRYPT__DIRECTROY": "https://ca.test/dir"}
    result = certok(tmp_path, "tenant", "list", env=env)
    assert_config_error(result, "CERTOK_ISSUERS__LETSENCRYPT__DIRECTROY")


@pytest.mark.parametrize("value", ["70000", "-1"])
def test_port_out_of_range(tmp_path: Path, value: str) -> None:
    result = certok(tmp_path, "tenant", "list", env={"CERTOK_API_PORT": value})
    assert_config_error(result, "api_port", value, "65535" if value != "-1" else "0")


def test_port_out_of_range_on_the_command_line(tmp_path: Path) -> None:
    result = certok(tmp_path, "serve", "--dns-port", "70000")
    assert result.returncode == EXIT_CONFIG and "--dns-port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [
        ("CERTOK_PUBLIC_URL", "certok.example.net", "public_url"),
        ("CERTOK_PUBLIC_URL", "https://certok.example.net:99999", "public_url"),
        ("CERTOK_ISSUERS__LETSENCRYPT__DIRECTORY", "ftp://ca.test/dir", "letsencrypt.directory"),
        ("CERTOK_DATABASE_URL", "mysql://db/certok", "database_url"),
    ],
)
def test_bad_urls(tmp_path: Path, variable: str, value: str, setting: str) -> None:
    result = certok(tmp_path, "tenant", "list", env={variable: value})
    assert_config_error(result, setting)


def test_dns_host_not_an_address(tmp_path: Path) -> None:
    result = certok(tmp_path, "tenant", "list", env={"CERTOK_DNS_HOST": "localhost"})
    assert_config_error(result, "dns_host", "localhost", "IP address")


def test_resolver_given_by_name(tmp_path: Path) -> None:
    result = serve(tmp_path, CERTOK_RESOLVERS='["dns.google"]')
    assert_config_error(result, "resolvers", "dns.google", "IP address")


def test_resolvers_not_json(tmp_path: Path) -> None:
    result = certok(tmp_path, "tenant", "list", env={"CERTOK_RESOLVERS": "127.0.0.1:53"})
    assert_config_error(result, "resolvers", "CERTOK_RESOLVERS=127.0.0.1:53", "JSON", '["')


def test_key_file_readable_by_others(tmp_path: Path) -> None:
    assert certok(tmp_path, "db", "upgrade").returncode == 0
    key = tmp_path / "data" / "secret.key"
    key.chmod(0o644)
    for args in (("tenant", "list"), ("serve",)):
        result = certok(tmp_path, *args, env={"CERTOK_API_PORT": "0", "CERTOK_DNS_PORT": "0"})
        assert_config_error(result, str(key), "chmod 600")


def test_unreachable_postgresql(tmp_path: Path) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql+psycopg://certok:s3cret@127.0.0.1:{port}/certok"
    result = certok(tmp_path, "tenant", "list", env={"CERTOK_DATABASE_URL": url})
    assert_config_error(result, "database_url", f"127.0.0.1:{port}", "PostgreSQL is running")
    assert "s3cret" not in result.stderr


def test_busy_dns_port(tmp_path: Path, busy_port: int) -> None:
    result = serve(tmp_path, CERTOK_DNS_PORT=str(busy_port))
    assert_config_error(result, "dns_port", f"127.0.0.1:{busy_port}", "already in use")


def test_busy_api_port(tmp_path: Path, busy_port: int) -> None:
    result = serve(tmp_path, "--api-port", str(busy_port))
    assert_config_error(result, "api_port", f"127.0.0.1:{busy_port}/tcp", "already in use")


def test_missing_tls_file(tmp_path: Path) -> None:
    result = serve(
        tmp_path,
        CERTOK_TLS_CERT_FILE=str(tmp_path / "missing.pem"),
        CERTOK_TLS_KEY_FILE=str(tmp_path / "missing.key"),
        CERTOK_HTTPS_PORT="0",
    )
    assert_config_error(result, "tls_cert_file", "missing.pem", "no such file")


def test_missing_issuer_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "no-such-ca.pem"
    result = serve(tmp_path, CERTOK_ISSUERS__LETSENCRYPT__CA_BUNDLE=str(bundle))
    assert_config_error(result, "issuers.letsencrypt.ca_bundle", str(bundle), "no such file")


def test_tls_cert_without_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    result = serve(tmp_path, CERTOK_TLS_CERT_FILE=str(cert))
    assert_config_error(result, "tls_cert_file", "tls_key_file")


def test_admin_commands_say_which_database(tmp_path: Path) -> None:
    first = certok(tmp_path, "tenant", "list")
    database = tmp_path / "data" / "certok.db"
    assert first.returncode == 0 and "created a new database" in first.stderr
    assert str(database) in first.stderr
    again = certok(tmp_path, "tenant", "list")
    assert f"certok: database sqlite:///{database}" in again.stderr
    assert "created" not in again.stderr


def test_serve_logs_a_summary_and_warns_of_an_issuer_without_eab(tmp_path: Path) -> None:
    """The start-up summary (zone, listeners, database, issuers) and the default issuer's
    missing EAB credentials, then the server runs until stopped."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CERTOK_")}
    clean.update(
        CERTOK_DATA_DIR=str(tmp_path / "data"),
        CERTOK_API_PORT="0",
        CERTOK_DNS_PORT="0",
        CERTOK_DNS_ZONE="acme.example.net",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "certok", "serve"],
        env=clean,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "cannot issue as configured" in line and "zerossl" in line:
                break
    finally:
        process.terminate()
        process.wait(30)
        process.stderr.close()
    text = "".join(lines)
    summary = next(line for line in lines if "zone acme.example.net" in line)
    for part in (
        "api 127.0.0.1:0 (public_url http://127.0.0.1:0)",  # public_url follows the API port
        "dns 127.0.0.1:0",
        "database SQLite",
        "google*=needs EAB",
    ):
        assert part in summary, (part, summary)
    assert "letsencrypt=ok" in summary
    assert "WARNING" in text and "issuer google (the default_issuer) cannot issue" in text
    assert "issuers.google.eab_kid" in text


def test_unknown_issuer_field_in_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "certok.toml"
    config.write_text('[issuers.google]\neab_kd = "kid-1"\n')
    result = certok(tmp_path, "--config", str(config), "tenant", "list")
    assert_config_error(result, "issuers.google.eab_kd", str(config))
