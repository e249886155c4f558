"""Which attribute belongs to which level of the hierarchy, and what each level must return.

See: PS3.3 §C.7.1–C.7.5 (Patient, Study, Series modules), PS3.18 Tables 10.6.1-5 and 10.6.3-3/-4/-5.
An attribute not listed at the study or series level is an instance-level attribute.
"""

from __future__ import annotations

from .model import Level

# Patient and Patient Study modules (PS3.3 C.7.1.1, C.7.2.2), General Study (C.7.2.1) and the
# study-level keys PS3.4 Table C.6-5 lists, plus what the index computes.
STUDY_TAGS: frozenset[str] = frozenset({
    "00080005",  # SpecificCharacterSet (kept with every level's attributes)
    "00080020", "00080030", "00080050", "00080051", "00080056", "00080061", "00080062",
    "00080090", "00080096", "00080201", "00081030", "00081032", "00081048", "00081049",
    "00081060", "00081062", "00081080", "00081084", "00081110",
    "00100010", "00100020", "00100021", "00100022", "00100024", "00100030", "00100032",
    "00100040", "00100050", "00101000", "00101001", "00101002", "00101005", "00101010",
    "00101020", "00101030", "00101040", "00101060", "00102000", "00102110", "00102154",
    "00102160", "00102180", "001021A0", "001021B0", "001021C0", "00104000", "00120062",
    "00120063", "00120064", "00120010", "00120020", "00120021", "00120030", "00120040",
    "00120042", "00120050", "00120051", "00120071",
    "0020000D", "00200010", "00201070", "00201206", "00201208",
    "00321032", "00321033", "00321060", "00321064", "00380010", "00380500", "00401012",
})

# General Series, Enhanced Series, General Equipment, Frame of Reference and the PPS keys QIDO
# returns at the series level.
SERIES_TAGS: frozenset[str] = frozenset({
    "00080021", "00080031", "00080060", "00080068", "00080070", "00080080", "00080081",
    "00081010", "0008103E", "00081040", "00081050", "00081052", "00081070", "00081072",
    "00081090", "00081111", "00081250", "00180015", "00181000", "00181020", "00181030",
    "00185100", "0020000E", "00200011", "00200052", "00200060", "00201040", "00201209",
    "00280108", "00280109", "00400244", "00400245", "00400253", "00400254", "00400260",
    "00400275", "00400280",
})

# Attributes the index computes; never read from an instance.
COMPUTED_TAGS: frozenset[str] = frozenset({
    "00080056",  # InstanceAvailability
    "00080061",  # ModalitiesInStudy
    "00080062",  # SOPClassesInStudy
    "00081190",  # RetrieveURL
    "00201206",  # NumberOfStudyRelatedSeries
    "00201208",  # NumberOfStudyRelatedInstances
    "00201209",  # NumberOfSeriesRelatedInstances
})

# PS3.18 §10.6.3 required return attributes (besides match keys and includefield).
REQUIRED_RETURN: dict[Level, tuple[str, ...]] = {
    Level.STUDY: (
        "00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090",
        "00080201", "00081190", "00100010", "00100020", "00100030", "00100040", "0020000D",
        "00200010", "00201206", "00201208",
    ),
    Level.SERIES: (
        "00080005", "00080060", "00080201", "0008103E", "00081190", "0020000E", "00200011",
        "00201209", "00400244", "00400245", "00400275",
    ),
    Level.INSTANCE: (
        "00080005", "00080016", "00080018", "00080056", "00080201", "00081190", "00200013",
        "00280010", "00280011", "00280100", "00280008",
    ),
}

# What the study-level `includefield=all` adds to the required attributes.
OPTIONAL_RETURN: dict[Level, frozenset[str]] = {
    Level.STUDY: STUDY_TAGS | {"00080062"},
    Level.SERIES: SERIES_TAGS,
    Level.INSTANCE: frozenset(),  # instance level: every stored non-bulk attribute
}

UNIQUE_KEY: dict[Level, str] = {
    Level.STUDY: "0020000D",
    Level.SERIES: "0020000E",
    Level.INSTANCE: "00080018",
}


def level_of(tag: str) -> Level:
    """The level an attribute (8 upper-case hex digits) belongs to."""
    if tag in STUDY_TAGS:
        return Level.STUDY
    if tag in SERIES_TAGS:
        return Level.SERIES
    return Level.INSTANCE


def split_levels(attributes: dict[str, object]) -> tuple[dict[str, object], dict[str, object],
                                                          dict[str, object]]:
    """Split one instance's attributes into its study, series and instance parts.

    SpecificCharacterSet goes with every part, because each part is decoded on its own later.
    """
    study: dict[str, object] = {}
    series: dict[str, object] = {}
    instance: dict[str, object] = {}
    for tag, value in attributes.items():
        if tag in COMPUTED_TAGS:
            continue
        if tag == "00080005":
            study[tag] = series[tag] = instance[tag] = value
            continue
        {Level.STUDY: study, Level.SERIES: series, Level.INSTANCE: instance}[level_of(tag)][tag] = value
    return study, series, instance

# VRs of the required return attributes, so an absent one can be returned empty (PS3.18 §10.6.3).
REQUIRED_VR: dict[str, str] = {
    "00080005": "CS", "00080016": "UI", "00080018": "UI", "00080020": "DA", "00080030": "TM",
    "00080050": "SH", "00080056": "CS", "00080060": "CS", "00080061": "CS", "00080090": "PN",
    "00080201": "SH", "0008103E": "LO", "00081190": "UR", "00100010": "PN", "00100020": "LO",
    "00100030": "DA", "00100040": "CS", "0020000D": "UI", "0020000E": "UI", "00200010": "SH",
    "00200011": "IS", "00200013": "IS", "00201206": "IS", "00201208": "IS", "00201209": "IS",
    "00280008": "IS", "00280010": "US", "00280011": "US", "00280100": "US", "00400244": "DA",
    "00400245": "TM", "00400275": "SQ",
}
# Conditional (type C) return keys: returned only when the object has them.
CONDITIONAL_RETURN: frozenset[str] = frozenset({
    "00080005", "00080056", "00080201", "0008103E", "00081190", "00400244", "00400245", "00400275",
    "00280008", "00280010", "00280011", "00280100",
})
