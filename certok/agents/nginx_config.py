"""An nginx configuration, as httpsok.sh uploads it, → its TLS certificate pairs and their names.

The agent sends either `nginx -T` output (every file once, each after a
`# configuration file <path>:` line, `include` directives left in place) or, when `nginx -T`
fails, its own expansion (each `include` line commented out as `#import include ...` and the
files' text inlined between `#included-begin <path>;` and `#included-end <path>;`). Both are
read with crossplane's tokenizer and parser (quotes, escapes, tabs, comments), never with
regular expressions. `include`s of the `-T` form are resolved against the files in the same
upload only: nothing is ever read from certok's own disk.

The text is parsed in memory and dropped: only the derived facts below leave this module, and
no error message quotes the text (a parse failure names a line number only).
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import crossplane

from certok.errors import InvalidRequest

# `# configuration file /etc/nginx/nginx.conf:` (nginx -T, before each file's text)
_DUMP_HEADER = " configuration file "
# Deeper than any real configuration (http > server > location > if ...). Deeper still, the
# parser's own recursion gives up (RecursionError), which is refused like any parse failure.
MAX_BLOCK_DEPTH = 32
# httpsok.sh stops expanding includes after 20 rounds; nginx -T output is resolved as deep.
MAX_INCLUDE_DEPTH = 20
# Contexts whose ssl_certificate directives their server blocks inherit.
_INHERITING = ("http", "stream", "mail")

Directive = dict[str, Any]


class ConfigSyntaxError(InvalidRequest):
    """The uploaded configuration could not be parsed (the message names a line, not text)."""


@dataclass(frozen=True)
class CertificatePair:
    """One distinct `ssl_certificate` path, its key, and the server_name entries of every
    TLS server block that uses it (as written, lowercased, in order of appearance)."""

    cert_path: str
    key_path: str
    names: tuple[str, ...]


@dataclass
class ParsedConfig:
    pairs: list[CertificatePair] = field(default_factory=list)
    # What was found but cannot be managed, and why (no configuration text in these).
    notes: list[str] = field(default_factory=list)


@dataclass
class _Inherited:
    certs: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    ssl_on: bool = False


def certificate_pairs(text: str, config_home: str) -> ParsedConfig:
    """The distinct certificate pairs of the TLS server blocks in `text`.

    `config_home` (the agent's `nginx-config-home` header) anchors relative paths.
    """
    home = config_home if config_home.startswith("/") else "/etc/nginx"
    try:
        payload = crossplane.parse_string(
            text, single=True, comments=True, check_ctx=False, check_args=False
        )
    except Exception:  # the library's own failures (RecursionError too): never echo what it saw
        raise ConfigSyntaxError(
            "the nginx configuration could not be parsed: run `nginx -t` on the host"
        ) from None
    if payload.get("errors"):
        line = payload["errors"][0].get("line")
        raise ConfigSyntaxError(
            f"the nginx configuration could not be parsed (near line {line}: unbalanced "
            "braces or a directive without ';'): run `nginx -t` on the host and fix it"
        )
    top: list[Directive] = payload["config"][0]["parsed"] if payload["config"] else []
    _check_depth(top)
    tree, home = _resolve_dump(top, home)
    result = ParsedConfig()
    found: dict[str, tuple[str, list[str]]] = {}
    for pair_names, cert, key in _servers(tree, _Inherited(), result.notes):
        cert_path = _absolute(cert, home)
        key_path = _absolute(key, home)
        problem = _path_problem(cert) or _path_problem(key)
        if problem:
            result.notes.append(f"certificate {_shown(cert)} skipped: {problem}")
            continue
        if cert_path in found:
            known_key, names = found[cert_path]
            if known_key != key_path:
                result.notes.append(
                    f"certificate {cert_path} is paired with two different keys "
                    f"({known_key} and {key_path}): the first is kept"
                )
            names.extend(n for n in pair_names if n not in names)
        else:
            found[cert_path] = (key_path, list(dict.fromkeys(pair_names)))
    result.pairs = [
        CertificatePair(cert_path, key_path, tuple(names))
        for cert_path, (key_path, names) in found.items()
    ]
    result.notes = list(dict.fromkeys(result.notes))
    return result


def _check_depth(top: list[Directive]) -> None:
    """Refuse nesting no real configuration has, before walking the tree recursively."""
    level: list[list[Directive]] = [top]
    for depth in range(MAX_BLOCK_DEPTH + 1):
        level = [d["block"] for block in level for d in block if "block" in d]
        if not level:
            return
        if depth == MAX_BLOCK_DEPTH:
            raise ConfigSyntaxError(
                f"the nginx configuration nests blocks deeper than {MAX_BLOCK_DEPTH}: "
                "that is not a configuration nginx would load; run `nginx -t` on the host"
            )


# --- nginx -T: split into files, resolve includes within the upload ----------------------------


def _resolve_dump(top: list[Directive], home: str) -> tuple[list[Directive], str]:
    """`nginx -T` output → the main file with its includes inlined, and the main file's
    directory (nginx's base for relative paths); anything else unchanged, with `home`."""
    files: dict[str, list[Directive]] = {}
    current: list[Directive] | None = None
    preamble: list[Directive] = []
    for directive in top:
        comment = directive.get("comment", "") if directive["directive"] == "#" else ""
        if comment.startswith(_DUMP_HEADER) and comment.rstrip().endswith(":"):
            path = comment[len(_DUMP_HEADER) :].rstrip()[:-1].strip()
            current = files.setdefault(path, [])
            continue
        (preamble if current is None else current).append(directive)
    if not files:
        return top, home
    main_path = next(iter(files))
    main_dir = posixpath.dirname(main_path) if main_path.startswith("/") else home
    return preamble + _inline(files[main_path], files, main_dir, (main_path,)), main_dir


def _inline(
    block: list[Directive],
    files: dict[str, list[Directive]],
    conf_dir: str,
    stack: tuple[str, ...],
) -> list[Directive]:
    out: list[Directive] = []
    for directive in block:
        if directive["directive"] == "include" and directive.get("args"):
            if len(stack) > MAX_INCLUDE_DEPTH:
                continue
            pattern = _absolute(directive["args"][0], conf_dir)
            for path in sorted(p for p in files if _glob_match(p, pattern)):
                if path not in stack:  # an include cycle nginx itself would refuse
                    out.extend(_inline(files[path], files, conf_dir, (*stack, path)))
            continue
        if "block" in directive:
            directive = {**directive, "block": _inline(directive["block"], files, conf_dir, stack)}
        out.append(directive)
    return out


def _glob_match(path: str, pattern: str) -> bool:
    """glob(3) as nginx uses it: wildcards never cross a '/'."""
    parts, wanted = path.split("/"), pattern.split("/")
    return len(parts) == len(wanted) and all(
        fnmatch.fnmatchcase(p, w) for p, w in zip(parts, wanted, strict=True)
    )


# --- server blocks -------------------------------------------------------------------------------


def _servers(
    block: list[Directive], inherited: _Inherited, notes: list[str]
) -> Iterator[tuple[list[str], str, str]]:
    """(server names, certificate, key) for every pair of every TLS server block."""
    for directive in block:
        name = directive["directive"]
        if "block" not in directive:
            continue
        if name == "server":
            yield from _server(directive, inherited, notes)
        elif name in _INHERITING:
            yield from _servers(directive["block"], _context(directive["block"]), notes)
        else:
            yield from _servers(directive["block"], inherited, notes)


def _context(block: list[Directive]) -> _Inherited:
    context = _Inherited()
    for directive in block:
        args = directive.get("args") or []
        if directive["directive"] == "ssl_certificate" and args:
            context.certs.append(args[0])
        elif directive["directive"] == "ssl_certificate_key" and args:
            context.keys.append(args[0])
        elif directive["directive"] == "ssl" and args:
            context.ssl_on = args[0].lower() == "on"
    return context


def _server(
    server: Directive, inherited: _Inherited, notes: list[str]
) -> Iterator[tuple[list[str], str, str]]:
    block: list[Directive] = server["block"]
    own = _context(block)
    names: list[str] = []
    tls = own.ssl_on or inherited.ssl_on
    for directive in block:
        args = directive.get("args") or []
        if directive["directive"] == "server_name":
            names.extend(arg.lower() for arg in args if arg)
        elif directive["directive"] == "listen" and "ssl" in (a.lower() for a in args[1:]):
            tls = True
    if not tls:
        return
    # nginx merges each list on its own: a server block without ssl_certificate (or without
    # ssl_certificate_key) takes the enclosing context's.
    certs = own.certs or inherited.certs
    keys = own.keys or inherited.keys
    line = server.get("line")
    if not certs:
        notes.append(f"a TLS server block (line {line}) has no ssl_certificate")
        return
    if len(keys) < len(certs):
        notes.append(f"a TLS server block (line {line}) has an ssl_certificate without a key")
    for cert, key in zip(certs, keys, strict=False):
        yield names, cert, key


# --- paths ---------------------------------------------------------------------------------------


def _absolute(path: str, base: str) -> str:
    joined = path if path.startswith("/") else posixpath.join(base, path)
    return posixpath.normpath(joined)


def _path_problem(path: str) -> str | None:
    if "$" in path:
        return "its path uses a variable (one file per request): certok manages fixed paths"
    if path.startswith(("data:", "engine:", "store:")):
        return "it is not a file path"
    if any(c.isspace() or c == "," or ord(c) < 32 for c in path):
        # httpsok.sh splits its lines on ',' and word-splits on blanks.
        return "its path contains a blank or a comma, which httpsok.sh cannot handle"
    if len(path) > 1024:
        return "its path is over 1024 characters"
    return None


def _shown(path: str) -> str:
    return path if len(path) <= 120 else path[:117] + "..."
