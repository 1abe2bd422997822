"""One canonical form for login names, so that no look-alike name reaches another user.

Contract: :func:`canonical_login` returns the NFKC-normalised, case-folded name when it
then matches :data:`LOGIN_PATTERN` (ASCII letters, digits, ``.``, ``_``, ``-``; starts
with a letter; at most 64 characters), else raises :class:`ValueError` with a sentence
for the user. ``Alice`` and ``alice`` are the same person (directories compare uids
without case); ``ａｌｉｃｅ`` (full-width) folds to ``alice`` too, and every name that is
still not plain ASCII after folding (Cyrillic ``аlice``, combining marks, ``ß`` ->
``ss`` is folded, dotless ``ı`` is not) is refused rather than guessed.
"""

from __future__ import annotations

import re
import unicodedata

LOGIN_PATTERN = re.compile(r"[a-z][a-z0-9._-]{0,63}")


def canonical_login(name: str) -> str:
    """The canonical form of a login name, or :class:`ValueError` (see module doc)."""
    if not isinstance(name, str):
        raise ValueError("A user name must be text.")
    folded = unicodedata.normalize("NFKC", name.strip()).casefold()
    folded = unicodedata.normalize("NFKC", folded)
    if not LOGIN_PATTERN.fullmatch(folded):
        raise ValueError(
            "User names may only use the letters a-z, digits and . _ - (starting with a letter)."
        )
    return folded
