"""Certificate pairs in an nginx configuration, read from `nginx -T` on the host.

Only facts leave the host: the names of the server blocks, the certificate and key paths and
the address to check. The configuration text itself is never sent anywhere.

`nginx -T` prints every file it read, each after a `# configuration file PATH:` line. A file is
tokenized on its own (nginx's own rules: words, quoted strings with escapes, `;`, `{`, `}`,
`#` comments), and `server` blocks are found in it at any depth, so an included file of bare
`server { }` blocks reads like the `http { }` block that included it.
"""

from __future__ import annotations

import os
import re
from typing import Iterator, NamedTuple

_PAIR_DIRECTIVES = ("ssl_certificate", "ssl_certificate_key")
_FILE_HEADER = re.compile(r"^# configuration file (.+):$")
# Names an agent cannot ask a public CA for, with why.
_SKIP_REASONS = (
    (re.compile(r"^~"), "a regular expression"),
    (re.compile(r"^_$"), "the catch-all name `_`"),
    (re.compile(r"^localhost$|\.localhost$"), "a local name"),
    (re.compile(r"^\d{1,3}(\.\d{1,3}){3}$|:"), "an IP address"),
    (re.compile(r"^\.|\*.+\*|.\*"), "a pattern nginx expands, not one certificate name"),
    (re.compile(r"\$"), "a variable"),
)


class Directive(NamedTuple):
    name: str
    args: tuple[str, ...]
    block: list[Directive] | None


class CertificatePair(NamedTuple):
    """One certificate/key pair and what uses it."""

    cert_path: str
    key_path: str
    names: tuple[str, ...]
    # host:port of the first TLS listener of a block using it, for the served-serial check.
    address: str | None
    skipped: tuple[tuple[str, str], ...]


class ConfigError(ValueError):
    """The configuration could not be read (unbalanced braces, an open quote)."""


def tokenize(text: str) -> Iterator[str]:
    """nginx's tokens: `{`, `}`, `;` and words (quotes removed, escapes kept as nginx does)."""
    i, length = 0, len(text)
    while i < length:
        char = text[i]
        if char.isspace():
            i += 1
        elif char == "#":
            end = text.find("\n", i)
            i = length if end < 0 else end + 1
        elif char in "{};":
            yield char
            i += 1
        elif char in "\"'":
            quote, i, word = char, i + 1, []
            while i < length and text[i] != quote:
                if text[i] == "\\" and i + 1 < length:
                    word.append(text[i + 1])
                    i += 2
                else:
                    word.append(text[i])
                    i += 1
            if i >= length:
                raise ConfigError("a quoted string is never closed")
            i += 1
            yield "".join(word)
        else:
            start = i
            while i < length and not text[i].isspace() and text[i] not in "{};\"'":
                if text[i] == "\\" and i + 1 < length:
                    i += 1
                i += 1
            yield text[start:i]


def parse(text: str) -> list[Directive]:
    """The directive tree of one file."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for piece in tokenize(text):
        if piece == ";":
            if words:
                stack[-1].append(Directive(words[0], tuple(words[1:]), None))
            words = []
        elif piece == "{":
            if not words:
                raise ConfigError("a `{` with no directive before it")
            block: list[Directive] = []
            stack[-1].append(Directive(words[0], tuple(words[1:]), block))
            stack.append(block)
            words = []
        elif piece == "}":
            if len(stack) == 1:
                raise ConfigError("a `}` closes no block")
            stack.pop()
        else:
            words.append(piece)
    if len(stack) != 1:
        raise ConfigError("a block is never closed")
    return stack[0]


def split_files(dump: str) -> list[tuple[str, str]]:
    """(path, text) for each file in `nginx -T` output; the whole text as one file otherwise."""
    files: list[tuple[str, list[str]]] = []
    for line in dump.splitlines():
        header = _FILE_HEADER.match(line)
        if header:
            files.append((header.group(1), []))
        elif files:
            files[-1][1].append(line)
    if not files:
        return [("nginx.conf", dump)]
    return [(path, "\n".join(lines)) for path, lines in files]


def skip_reason(name: str) -> str | None:
    """Why `name` cannot be put on a certificate by this agent, or None."""
    if name.startswith("*."):
        return None
    for pattern, reason in _SKIP_REASONS:
        if pattern.search(name):
            return reason
    return None


def _servers(
    directives: list[Directive], inherited: dict[str, tuple[str, ...]]
) -> Iterator[tuple[list[Directive], dict[str, tuple[str, ...]]]]:
    own = dict(inherited)
    for directive in directives:
        if directive.block is None and directive.name in _PAIR_DIRECTIVES:
            own[directive.name] = directive.args
    for directive in directives:
        if directive.block is None:
            continue
        if directive.name == "server":
            yield directive.block, own
        elif directive.name in ("http", "stream"):
            yield from _servers(directive.block, own)


def _tls_address(block: list[Directive]) -> str | None:
    ssl_on = any(d.name == "ssl" and d.args[:1] == ("on",) for d in block)
    for directive in block:
        if directive.name != "listen" or not directive.args:
            continue
        if "ssl" not in directive.args[1:] and not ssl_on:
            continue
        where = directive.args[0]
        if where.startswith("unix:"):
            continue
        if where.startswith("["):
            host, _, port = where[1:].partition("]:")
            host = "::1" if host == "::" else host
            return f"[{host}]:{port or '443'}"
        if where.isdigit():
            return f"127.0.0.1:{where}"
        host, _, port = where.rpartition(":")
        if not host:
            host, port = where, "443"
        host = "127.0.0.1" if host in ("*", "0.0.0.0") else host  # noqa: S104 - a listen wildcard
        return f"{host}:{port or '443'}"
    return None


class _Uses:
    """What the server blocks using one pair have said so far."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.address: str | None = None

    def add_name(self, name: str) -> None:
        reason = skip_reason(name)
        if reason is None:
            if name not in self.names:
                self.names.append(name)
        elif (name, reason) not in self.skipped:
            self.skipped.append((name, reason))


def certificate_pairs(dump: str) -> list[CertificatePair]:
    """Every distinct certificate pair in `nginx -T` output, with the names that use it.

    A pair whose path holds a variable (`$ssl_server_name`) is left out: it is not one file.
    """
    files = split_files(dump)
    base_dir = os.path.dirname(files[0][0])
    found: dict[tuple[str, str], _Uses] = {}
    for _path, text in files:
        for block, inherited in _servers(parse(text), {}):
            values = dict(inherited)
            for directive in block:
                if directive.block is None and directive.name in _PAIR_DIRECTIVES:
                    values[directive.name] = directive.args
            cert = values.get("ssl_certificate", ())
            key = values.get("ssl_certificate_key", ())
            if not cert or not key or "$" in cert[0] or "$" in key[0]:
                continue
            pair = (_absolute(cert[0], base_dir), _absolute(key[0], base_dir))
            uses = found.setdefault(pair, _Uses())
            for directive in block:
                if directive.name == "server_name":
                    for name in directive.args:
                        if name.rstrip("."):
                            uses.add_name(name.lower().rstrip("."))
            if uses.address is None:
                uses.address = _tls_address(block)
    return [
        CertificatePair(cert, key, tuple(uses.names), uses.address, tuple(uses.skipped))
        for (cert, key), uses in found.items()
    ]


def _absolute(path: str, base_dir: str) -> str:
    # nginx reads a relative path from its prefix; the main file's directory stands in for it.
    return path if os.path.isabs(path) or not base_dir else os.path.join(base_dir, path)
