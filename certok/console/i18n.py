"""The console's languages: one message catalog (a dict of message id -> text) per language.

English and Simplified Chinese, picked from the language cookie (the switch on every page),
else the browser's Accept-Language, else English. Every catalog has every id (a test holds
them together), and asking for an unknown id is an error, never the id shown as text.
"""

from __future__ import annotations

from typing import Any

from certok.console.catalog_en import MESSAGES as EN
from certok.console.catalog_zh_cn import MESSAGES as ZH_CN

CATALOGS: dict[str, dict[str, str]] = {"en": EN, "zh-CN": ZH_CN}
DEFAULT = "en"
LANGUAGES = tuple(CATALOGS)


def pick(tag: str | None) -> str | None:
    """The catalog for a language tag (en, en-US, zh, zh-CN, zh-Hans...), or None."""
    if not tag:
        return None
    tag = tag.strip().lower()
    if tag == "zh-cn" or tag == "zh" or tag.startswith(("zh-hans", "zh-cn-", "zh-sg")):
        return "zh-CN"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def negotiate(cookie: str | None, accept_language: str | None) -> str:
    chosen = pick(cookie) if cookie in CATALOGS else None
    if chosen:
        return chosen
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate((accept_language or "").split(",")[:20]):
        pieces = part.split(";")
        quality = 1.0
        for param in pieces[1:]:
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        lang = pick(pieces[0])
        if lang and quality > 0:
            ranked.append((-quality, index, lang))
    return min(ranked)[2] if ranked else DEFAULT


class Translator:
    def __init__(self, lang: str) -> None:
        self.lang = lang if lang in CATALOGS else DEFAULT
        self._messages = CATALOGS[self.lang]

    def __call__(self, key: str, **values: Any) -> str:
        text = self._messages[key]  # KeyError: a missing message is a bug, found by the tests
        return text.format(**values) if values else text
