"""Declarative mappings: YAML files that say how fields translate between DICOM and FHIR.

See: DESIGN.md "The declarative mapping engine", docs/mappings.md. A pure package: only the loader
reads files; nothing here opens a socket.
"""

from __future__ import annotations

from .engine import Mapping, choose
from .functions import FUNCTIONS
from .loader import check_mappings, load_folder, load_mapping, load_matching
from .matching import Choice, Difference, FieldScore, MatchingRules, MatchResult

__all__ = ["FUNCTIONS", "Choice", "Difference", "FieldScore", "Mapping", "MatchResult", "MatchingRules",
           "check_mappings", "choose", "load_folder", "load_mapping", "load_matching"]
