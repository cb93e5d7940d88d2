"""The registered signing schemes, by the name used on the wire (see :mod:`core.scheme`)."""

from __future__ import annotations

from collections.abc import Mapping

from core.scheme import SigningScheme
from core.schemes.frost import FROST

SCHEMES: Mapping[str, SigningScheme] = {FROST.name: FROST}
