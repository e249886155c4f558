"""A seeded, adversarial evaluation set for matching studies to requests (issue 6, "Safety, measured").

``generate_population(seed)`` (a ``ScenarioStream`` collected; the scale benchmark streams the same class)
builds a few thousand patients with names from several cultures, their open requests (worklist items as
DICOM JSON) and studies (DICOM JSON as a modality would send them), each study labelled with the
request it truly answers (or None) and the scenario that perturbed it.
The same seed always gives the same population, byte for byte.

Patients are named in reports only by their scenario id (``P00042``), never by their name.
"""

from __future__ import annotations

import random
import unicodedata
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

DicomJson = dict[str, Any]

EXACT = "exact copy"
TYPO = "typo"
SWAPPED = "swapped names"
MARRIED = "married name"
TWINS = "twins"
SAME_NAME = "same-day same-name"
MISSING_ACCESSION = "missing accession"
WRONG_ACCESSION = "wrong accession"
UMLAUT = "umlaut/transliteration"
NAMESPACE = "PatientID namespace"
TIME_SHIFT = "time shift"
MISSING_BIRTH_DATE = "missing birth date"
SECOND_ORDER = "another open order"
UNSCHEDULED = "unscheduled"

SCENARIOS = (EXACT, TYPO, SWAPPED, MARRIED, TWINS, SAME_NAME, MISSING_ACCESSION, WRONG_ACCESSION, UMLAUT,
             NAMESPACE, TIME_SHIFT, MISSING_BIRTH_DATE, SECOND_ORDER, UNSCHEDULED)

HOSPITAL_ISSUER = "HOSPITAL-A"


@dataclass(frozen=True)
class LabelledStudy:
    id: str
    document: DicomJson
    truth: str | None  # the request id this study answers, or None (unscheduled)
    scenario: str
    patient: str  # scenario id of the imaged patient, e.g. "P00042"
    accession: str  # "kept", "missing" or "wrong"


@dataclass
class Population:
    requests: dict[str, DicomJson]
    studies: list[LabelledStudy]
    request_patient: dict[str, str] = field(default_factory=dict)  # request id -> patient scenario id


# --------------------------------------------------------------------------------------------- names


def _words(text: str, sep: str | None = None) -> list[str]:
    return text.split(sep)


GERMAN_FAMILY = _words(
    "Müller Schmidt Schneider Fischer Weiß Meyer Wagner Becker Schulz Hoffmann Schäfer Koch Bauer Richter "
    "Klein Wolf Schröder Neumann Schwarz Zimmermann Braun Krüger Hofmann Hartmann Lange Werner Krause "
    "Lehmann Köhler Herrmann König Walter Huber Kaiser Fuchs Peters Scholz Möller Jung Hahn Schubert Vogel "
    "Friedrich Keller Günther Frank Berger Winkler Roth Beck Lorenz Baumann Albrecht Schuster Ludwig Böhm "
    "Winter Kraus Schumacher Krämer Vogt Stein Jäger Sommer Groß Seidel Brandt Haas Schreiber Graf Dietrich "
    "Ziegler Kühn Pohl Engel Horn Busch Bergmann Voigt Sauer Arnold Pfeiffer Strauß Nußbaum Großmann Süß "
    "Fröhlich Blümel Wöhler Gößmann Jürgens Dölling Schürmann Rößler Löffler Mößner"
)
GERMAN_MALE = _words("Jürgen Jörg Günter Uwe Klaus Stefan Thomas Michael Andreas Peter Hans Wolfgang Dieter Björn "
                     "Sören Matthias Lukas Jonas Leon Maximilian Felix Paul Moritz Tobias Florian Sebastian Jürgen "
                     "Hans-Jürgen Karl-Heinz Bernd Horst Rüdiger")
GERMAN_FEMALE = _words("Anna Käthe Jutta Ursula Gisela Brigitte Monika Petra Sabine Claudia Susanne Andrea Birgit "
                       "Katrin Lena Hannah Lea Mia Sophie Marie Jana Bärbel Grete Hildegard Renate Dörte "
                       "Anne-Kathrin Marie-Luise Jördis Heike")

TURKISH_FAMILY = _words("Yılmaz Kaya Demir Şahin Çelik Yıldız Yıldırım Öztürk Aydın Özdemir Arslan Doğan Kılıç "
                        "Aslan Çetin Kara Koç Kurt Özkan Şimşek Polat Özer Güneş Erdoğan Akın Çakır Aktaş Korkmaz "
                        "Karataş Bulut Keskin Ünal Güler Turan Uğur Işık Taşkın Gündoğdu")
TURKISH_MALE = _words("Mehmet Mustafa Ahmet Ali Hüseyin Hasan İbrahim İsmail Osman Yusuf Murat Ömer Ramazan Halil "
                      "Süleyman Abdullah Mahmut Emre Burak Çağrı Oğuz Barış Gökhan Tolga Uğur Serkan")
TURKISH_FEMALE = _words("Fatma Ayşe Emine Hatice Zeynep Elif Meryem Şerife Zehra Sultan Hülya Özlem Gül Esra Büşra "
                        "Merve Gülşen Çiğdem Dilek Sevgi Şule Yağmur Nurşen Ilgın")

POLISH_FAMILY = _words("Nowak Kowalski Wiśniewski Wójcik Kowalczyk Kamiński Lewandowski Zieliński Szymański "
                       "Woźniak Dąbrowski Kozłowski Jankowski Mazur Wojciechowski Kwiatkowski Krawczyk Kaczmarek "
                       "Piotrowski Grabowski Zając Pawłowski Michalski Król Wieczorek Jabłoński Wróbel Majewski "
                       "Olszewski Stępień Malinowski Jaworski Adamczyk Dudek Nowicki Pawlak Górski Witkowski "
                       "Walczak Sikora Baran Rutkowski Szewczyk Ostrowski Tomaszewski Pietrzak Zalewski Bąk "
                       "Sadowski Zawadzki Chmielewski Włodarczyk Czarnecki Sawicki Sokołowski Kaźmierczak "
                       "Głowacki Kołodziej Ziółkowski Żak Łuczak Brzęczyszczykiewicz")
POLISH_MALE = _words("Piotr Krzysztof Andrzej Tomasz Paweł Michał Marcin Grzegorz Łukasz Wojciech Mateusz Jakub "
                     "Dariusz Zbigniew Jerzy Sławomir Przemysław Bartłomiej")
POLISH_FEMALE = _words("Anna Katarzyna Małgorzata Agnieszka Barbara Ewa Krystyna Elżbieta Zofia Joanna Magdalena "
                       "Teresa Danuta Jadwiga Grażyna Bożena Wiesława Jolanta")

ARABIC_FAMILY = _words("Al-Hassan El-Sayed Abdel-Rahman Haddad Khalil Nasser Mansour Saleh Hamdan Abu-Bakr Al-Masri "
                       "Farouk Ibrahim Youssef Mahmoud Hussein Khoury Aziz Qasim Al-Khatib Barakat Darwish "
                       "Al-Amin Suleiman Hammoud Shaheen")
ARABIC_MALE = _words("Mohammed Muhammad Ahmad Omar Khaled Youssef Abdullah Hamza Tariq Karim Samir Walid Bilal "
                     "Mahmoud Hussein Ibrahim Rami Ziad")
ARABIC_FEMALE = _words("Fatima Aisha Mariam Layla Nour Zainab Yasmin Rania Huda Amira Salma Hanan Reem Dina")

VIETNAMESE_FAMILY = (["Nguyễn"] * 12 + ["Trần"] * 4 + ["Lê"] * 3 + ["Phạm"] * 2
                     + _words("Hoàng Huỳnh Phan Vũ Võ Đặng Bùi Đỗ Hồ Ngô Dương Lý"))
VIETNAMESE_MALE = _words("Văn Hùng|Văn Nam|Minh Tuấn|Văn Đức|Quốc Bảo|Đức Anh|Thanh Sơn|Hữu Phúc|Minh Khoa|"
                         "Quang Huy|Văn Long|Tiến Dũng", "|")
VIETNAMESE_FEMALE = _words("Thị Lan|Thị Mai|Thị Hương|Thanh Hà|Ngọc Ánh|Thị Thu|Hoài Phương|Thị Hằng|Thu Trang|"
                           "Bích Ngọc|Thị Yến|Kim Oanh", "|")

CULTURES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "german": (GERMAN_FAMILY, GERMAN_MALE, GERMAN_FEMALE),
    "turkish": (TURKISH_FAMILY, TURKISH_MALE, TURKISH_FEMALE),
    "polish": (POLISH_FAMILY, POLISH_MALE, POLISH_FEMALE),
    "arabic": (ARABIC_FAMILY, ARABIC_MALE, ARABIC_FEMALE),
    "vietnamese": (VIETNAMESE_FAMILY, VIETNAMESE_MALE, VIETNAMESE_FEMALE),
}
CULTURE_WEIGHTS = {"german": 40, "turkish": 18, "polish": 14, "arabic": 10, "vietnamese": 8, "hyphenated": 10}

# Spellings of the same Arabic name in Latin script, as different registration desks write them.
TRANSLITERATIONS: dict[str, tuple[str, ...]] = {
    "Mohammed": ("Muhammad", "Mohamed", "Mohammad"), "Muhammad": ("Mohammed", "Mohamed", "Muhammed"),
    "Ahmad": ("Ahmed",), "Youssef": ("Yousef", "Yusuf", "Youssif"), "Hussein": ("Husein", "Hussain", "Husain"),
    "Abdel-Rahman": ("Abdelrahman", "Abdul Rahman", "Abd El-Rahman"), "El-Sayed": ("Elsayed", "Al-Sayed"),
    "Al-Hassan": ("Alhassan", "El-Hassan", "Al Hassan"), "Khalil": ("Khaleel",), "Fatima": ("Fatimah", "Fatema"),
    "Aisha": ("Aysha", "Aischa"), "Layla": ("Leila", "Laila"), "Nour": ("Noor", "Nur"),
    "Zainab": ("Zeinab", "Zaynab"), "Mansour": ("Mansur",), "Qasim": ("Kassem", "Qassim"),
    "Khoury": ("Khouri", "El-Khoury"), "Mahmoud": ("Mahmud", "Mahmood"), "Omar": ("Umar",),
    "Khaled": ("Khalid",), "Tariq": ("Tarek", "Tarik"), "Walid": ("Waleed",), "Yasmin": ("Yasmine", "Jasmin"),
    "Suleiman": ("Sulaiman", "Süleyman"), "Shaheen": ("Shahin",), "Al-Khatib": ("El-Khatib", "Alkhatib"),
    "Al-Masri": ("El-Masry", "Almasri"), "Abu-Bakr": ("Abubakar", "Abu Bakr"), "Reem": ("Rim",),
}

ASCII_SPECIAL = str.maketrans({"ß": "ss", "ẞ": "SS", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ı": "i",
                               "ø": "o", "Ø": "O", "æ": "ae", "Æ": "AE"})
GERMAN_SPECIAL = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue", "ß": "ss"})


def ascii_fold(text: str) -> str:
    """Müller -> Muller, Yılmaz -> Yilmaz, Łuczak -> Luczak, Nguyễn -> Nguyen, Strauß -> Strauss."""
    decomposed = unicodedata.normalize("NFKD", text.translate(ASCII_SPECIAL))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def german_fold(text: str) -> str:
    """Müller -> Mueller, Strauß -> Strauss (then anything else folded to ASCII)."""
    return ascii_fold(text.translate(GERMAN_SPECIAL))


def name_variants(name: str) -> list[str]:
    """Other ways a modality may spell this name component, excluding the name itself."""
    out: list[str] = []
    words = name.split(" ")
    if any(w in TRANSLITERATIONS for w in words):
        for i, w in enumerate(words):
            for alt in TRANSLITERATIONS.get(w, ()):
                out.append(" ".join([*words[:i], alt, *words[i + 1:]]))
    for folded in {ascii_fold(name), german_fold(name)}:
        out.extend([folded, folded.upper()])
    out.append(name.upper())
    seen: list[str] = []
    for v in out:
        if v != name and v not in seen:
            seen.append(v)
    return seen


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typo(rng: random.Random, text: str, edits: int) -> str:
    """``edits`` keyboard mistakes (substitution, deletion, insertion, transposition) on letters."""
    result = text
    for _ in range(100):
        result = text
        for _ in range(edits):
            positions = [i for i, c in enumerate(result) if c.isalpha()]
            if len(positions) < 3:
                break
            i = rng.choice(positions[1:])  # keep the first letter: typists rarely miss it
            kind = rng.choice(("sub", "del", "ins", "swap"))
            letter = rng.choice(LETTERS)
            if result[i].isupper():
                letter = letter.upper()
            if kind == "sub":
                result = result[:i] + letter + result[i + 1:]
            elif kind == "del":
                result = result[:i] + result[i + 1:]
            elif kind == "ins":
                result = result[:i] + letter + result[i:]
            elif i + 1 < len(result):
                result = result[:i] + result[i + 1] + result[i] + result[i + 2:]
        if result != text:
            return result
    return text + "e"


# ------------------------------------------------------------------------------------ DICOM JSON


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def put(doc: DicomJson, keyword: str, *values: Any) -> None:
    """Set ``keyword`` in a DICOM JSON object; no values gives an empty (type 2) element."""
    tag = _tag(keyword)
    vr = dictionary_VR(tag_for_keyword(keyword))
    if vr == "PN":
        values = tuple({"Alphabetic": v} for v in values)
    doc[tag] = {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def remove(doc: DicomJson, keyword: str) -> None:
    doc.pop(_tag(keyword), None)


def value(doc: DicomJson, keyword: str) -> Any:
    element = doc.get(_tag(keyword)) or {}
    values = element.get("Value") or [None]
    first = values[0]
    return first.get("Alphabetic") if isinstance(first, dict) and "Alphabetic" in first else first


def code_item(code: str, meaning: str) -> DicomJson:
    item: DicomJson = {}
    put(item, "CodeValue", code)
    put(item, "CodingSchemeDesignator", "99PB")
    put(item, "CodeMeaning", meaning)
    return item


# ----------------------------------------------------------------------------------- the hospital

# modality -> (stations, procedures (code, description))
CATALOG: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "CT": (("CT1", "CT2"), (("CT0101", "CT Schädel nativ"), ("CT0203", "CT Thorax mit KM"),
                           ("CT0305", "CT Abdomen/Becken mit KM"), ("CT0410", "CT-Angiographie Hals"))),
    "MR": (("MR1", "MR2"), (("MR0100", "MRT Kopf mit KM"), ("MR0520", "MRT Knie links"),
                           ("MR0310", "MRT LWS nativ"), ("MR0640", "MRT Prostata"))),
    "DX": (("DX1", "DX2", "DX3"), (("DX0001", "Röntgen Thorax p.a."), ("DX0210", "Röntgen Hand rechts"),
                                   ("DX0330", "Röntgen Knie beidseits"), ("DX0400", "Röntgen BWS 2 Ebenen"))),
    "US": (("US1", "US2"), (("US0100", "Sonographie Abdomen"), ("US0200", "Sonographie Schilddrüse"))),
    "MG": (("MG1",), (("MG0100", "Mammographie beidseits"),)),
}
MODALITY_WEIGHTS = {"CT": 25, "MR": 20, "DX": 35, "US": 15, "MG": 5}

REFERRING = ["Hartmann^Ulrike^^Dr. med.", "Yıldız^Cem^^Dr. med.", "Nowak^Ewa^^Dr.", "Becker^Frank^^Dr. med.",
             "Schäfer^Ina^^Prof. Dr.", "Haddad^Samir^^Dr.", "Lange^Tim", "Trần^Thị Lan^^Dr. med.",
             "Köhler^Markus^^Dr. med.", "Seidel^Nora", "Öztürk^Deniz^^Dr.", "Wagner^Jens^^PD Dr."]
PERFORMING = ["Fuchs^Mia", "Kaya^Emre", "Wójcik^Ola", "Brandt^Lars", "Hamdan^Rana", "Vogel^Tina"]

DAYS = [date(2024, 3, 4) + timedelta(days=d) for d in range(14) if (date(2024, 3, 4) + timedelta(days=d)).weekday() < 5]


@dataclass
class Patient:
    key: str
    family: str
    given: str
    sex: str
    birth_date: str
    pid: str
    culture: str

    @property
    def name(self) -> str:
        return f"{self.family}^{self.given}"


@dataclass
class Request:
    id: str
    patient: Patient
    accession: str
    modality: str
    station: str
    code: str
    description: str
    day: date
    time: str
    study_uid: str
    referring: str


class _Builder:
    def __init__(self, seed: int, n_patients: int) -> None:
        self.rng = random.Random(seed)
        self.n_patients = n_patients
        self.patients: list[Patient] = []
        self.requests: list[Request] = []
        self.by_patient: dict[str, list[Request]] = {}
        self.used_pids: set[str] = set()
        self.accession_seq = self.rng.randrange(100_000, 200_000)
        self.local_ids: dict[tuple[str, str], str] = {}

    # patients -----------------------------------------------------------------------------------
    def _pid(self) -> str:
        while True:
            pid = f"{self.rng.randrange(10_000_000, 99_999_999)}"
            if pid not in self.used_pids:
                self.used_pids.add(pid)
                return pid

    def _birth_date(self) -> str:
        start = date(1930, 1, 1).toordinal()
        return date.fromordinal(self.rng.randrange(start, date(2023, 12, 31).toordinal())).strftime("%Y%m%d")

    def _name(self, culture: str, sex: str) -> tuple[str, str]:
        rng = self.rng
        if culture == "hyphenated":
            first, second = rng.sample(["german", "german", "turkish", "polish", "arabic"], 2)
            family = f"{self._family(first, sex)}-{self._family(second, sex)}"
            return family, rng.choice(CULTURES[first][1 if sex == "M" else 2])
        _, male, female = CULTURES[culture]
        return self._family(culture, sex), rng.choice(male if sex == "M" else female)

    def _family(self, culture: str, sex: str) -> str:
        family = self.rng.choice(CULTURES[culture][0])
        if culture == "polish" and sex == "F" and family.endswith("ki"):
            family = family[:-1] + "a"
        return family

    def new_patient(self, culture: str | None = None, sex: str | None = None) -> Patient:
        rng = self.rng
        culture = culture or rng.choices(list(CULTURE_WEIGHTS), weights=list(CULTURE_WEIGHTS.values()))[0]
        sex = sex or rng.choices(["F", "M", "O"], weights=[50, 49, 1])[0]
        family, given = self._name(culture, "M" if sex == "O" else sex)
        patient = Patient(f"P{len(self.patients) + 1:05d}", family, given, sex, self._birth_date(), self._pid(),
                          culture)
        self.patients.append(patient)
        return patient

    # requests -----------------------------------------------------------------------------------
    def new_request(self, patient: Patient, day: date, modality: str | None = None) -> Request:
        rng = self.rng
        if modality is None:
            choices = [m for m in MODALITY_WEIGHTS if not (m == "MG" and patient.sex == "M")]
            taken = {r.modality for r in self.by_patient.get(patient.key, []) if r.day == day}
            choices = [m for m in choices if m not in taken] or choices
            modality = rng.choices(choices, weights=[MODALITY_WEIGHTS[m] for m in choices])[0]
        stations, procedures = CATALOG[modality]
        code, description = rng.choice(procedures)
        self.accession_seq += rng.randrange(1, 4)
        request = Request(
            id=f"R{len(self.requests) + 1:06d}", patient=patient, accession=f"A24{self.accession_seq:07d}",
            modality=modality, station=rng.choice(stations), code=code, description=description, day=day,
            time=f"{rng.randrange(7, 18):02d}{rng.choice((0, 15, 30, 45)):02d}00",
            study_uid=f"2.25.{rng.getrandbits(120)}", referring=rng.choice(REFERRING),
        )
        self.requests.append(request)
        self.by_patient.setdefault(patient.key, []).append(request)
        return request

    def request_document(self, r: Request) -> DicomJson:
        doc: DicomJson = {}
        put(doc, "SpecificCharacterSet", "ISO_IR 192")
        put(doc, "AccessionNumber", r.accession)
        put(doc, "ReferringPhysicianName", r.referring)
        put(doc, "PatientName", r.patient.name)
        put(doc, "PatientID", r.patient.pid)
        put(doc, "IssuerOfPatientID", HOSPITAL_ISSUER)
        put(doc, "PatientBirthDate", r.patient.birth_date)
        put(doc, "PatientSex", r.patient.sex)
        put(doc, "StudyInstanceUID", r.study_uid)
        put(doc, "RequestedProcedureID", f"RP{r.id[1:]}")
        put(doc, "RequestedProcedureDescription", r.description)
        put(doc, "RequestedProcedureCodeSequence", code_item(r.code, r.description))
        step: DicomJson = {}
        put(step, "Modality", r.modality)
        put(step, "ScheduledStationAETitle", f"{r.station}_AE")
        put(step, "ScheduledStationName", r.station)
        put(step, "ScheduledProcedureStepStartDate", r.day.strftime("%Y%m%d"))
        put(step, "ScheduledProcedureStepStartTime", r.time)
        put(step, "ScheduledProcedureStepDescription", r.description)
        put(doc, "ScheduledProcedureStepSequence", step)
        return dict(sorted(doc.items()))

    # studies ------------------------------------------------------------------------------------
    def local_id(self, station: str, patient: Patient) -> str:
        key = (station, patient.key)
        if key not in self.local_ids:
            self.local_ids[key] = f"{station}-{self.rng.randrange(0, 999_999):06d}"
        return self.local_ids[key]

    def study_document(self, r: Request, *, name: str | None = None, accession: str | bool | None = True,
                       local_pid: bool = False, birth_date: str | bool | None = True, day_shift: int = 0,
                       hand_entered: bool = False) -> DicomJson:
        """What the modality sends for the procedure of ``r`` (or a similar, unscheduled one).

        ``accession``: True copies the request's, a string types another, None leaves it empty.
        ``hand_entered``: the technologist typed the patient in (no worklist): a new study UID, the
        protocol's own description and often no procedure code.
        """
        rng = self.rng
        p = r.patient
        doc: DicomJson = {}
        put(doc, "SpecificCharacterSet", "ISO_IR 192")
        put(doc, "PatientName", name if name is not None else p.name)
        if local_pid:
            put(doc, "PatientID", self.local_id(r.station, p))
            if rng.random() < 0.5:
                put(doc, "IssuerOfPatientID", f"{r.station}_AE")
        else:
            put(doc, "PatientID", p.pid)
            put(doc, "IssuerOfPatientID", HOSPITAL_ISSUER)
        if birth_date is True:
            put(doc, "PatientBirthDate", p.birth_date)
        elif birth_date is None or birth_date is False:
            if rng.random() < 0.5:
                put(doc, "PatientBirthDate")  # present and empty (type 2)
        else:
            put(doc, "PatientBirthDate", birth_date)
        put(doc, "PatientSex", p.sex)
        if accession is True:
            put(doc, "AccessionNumber", r.accession)
        elif isinstance(accession, str):
            put(doc, "AccessionNumber", accession)
        else:
            put(doc, "AccessionNumber")
        day = r.day + timedelta(days=day_shift)
        late = rng.randrange(180, 420) if rng.random() < 0.1 else 0  # an emergency took the scanner
        minutes = min(23 * 60 + 59, int(r.time[:2]) * 60 + int(r.time[2:4]) + rng.randrange(-20, 120) + late)
        time = f"{minutes // 60:02d}{minutes % 60:02d}{rng.randrange(60):02d}"
        put(doc, "StudyDate", day.strftime("%Y%m%d"))
        put(doc, "StudyTime", time)
        put(doc, "PerformedProcedureStepStartDate", day.strftime("%Y%m%d"))
        put(doc, "PerformedProcedureStepStartTime", time)
        put(doc, "StudyInstanceUID", f"2.25.{rng.getrandbits(120)}" if hand_entered else r.study_uid)
        put(doc, "StudyDescription", r.description.upper() if hand_entered and rng.random() < 0.5 else r.description)
        if not hand_entered or rng.random() < 0.5:
            put(doc, "ProcedureCodeSequence", code_item(r.code, r.description))
        if rng.random() < 0.85:
            put(doc, "ReferringPhysicianName", r.referring)
        else:
            put(doc, "ReferringPhysicianName")
        put(doc, "PerformingPhysicianName", rng.choice(PERFORMING))
        put(doc, "Modality", r.modality)
        modalities = [r.modality] + (["SR"] if rng.random() < 0.2 else [])
        put(doc, "ModalitiesInStudy", *modalities)
        stations = CATALOG[r.modality][0]
        put(doc, "StationName", r.station if rng.random() < 0.85 else rng.choice(stations))
        return dict(sorted(doc.items()))


class ScenarioStream:
    """The open requests of about ``n_requests`` and a lazy stream of ``n_studies`` labelled studies:
    twelve scenarios of n studies each, n twins, n namesakes, and unscheduled studies for the rest
    (n = n_studies / 14). The safety test collects it (``generate_population``); the scale benchmark
    (bench/matching_scale.py) streams it at 100,000."""

    def __init__(self, seed: int, n_requests: int, n_studies: int) -> None:
        self.b = b = _Builder(seed, n_requests)
        rng = b.rng
        self.n = n = max(2, round(n_studies / 14))
        self.n_studies = n_studies
        pairs = max(1, n // 2)
        ordinary = max(1, n_requests - 4 * pairs - n)
        # Ordinary patients and their open requests: some without any, some with several on one day.
        while len(b.requests) < ordinary:
            patient = b.new_patient()
            count = rng.choices([0, 1, 2, 3], weights=[15, 65, 15, 5])[0]
            day = rng.choice(DAYS)
            for k in range(min(count, ordinary - len(b.requests))):
                b.new_request(patient, day if k == 0 or rng.random() < 0.6 else rng.choice(DAYS))
        # Twins: same family name and birth date, different given names, both expected the same day.
        self.twin_requests: list[Request] = []
        for _ in range(pairs):
            a = b.new_patient()
            b_sex = rng.choice(["F", "M"])
            given_pool = CULTURES.get(a.culture, CULTURES["german"])[1 if b_sex == "M" else 2]
            twin = b.new_patient(culture=a.culture, sex=b_sex)
            twin.family, twin.birth_date = a.family, a.birth_date
            twin.given = rng.choice([g for g in given_pool if g != a.given])
            day, modality = rng.choice(DAYS), rng.choice(["DX", "US", "CT", "MR"])
            self.twin_requests += [b.new_request(a, day, modality), b.new_request(twin, day, modality)]
        # Namesakes: same family and given name, different birth dates, expected the same day.
        self.namesake_requests: list[Request] = []
        for _ in range(pairs):
            a = b.new_patient()
            other = b.new_patient(culture=a.culture, sex=a.sex)
            other.family, other.given = a.family, a.given
            while other.birth_date == a.birth_date:
                other.birth_date = b._birth_date()
            day, modality = rng.choice(DAYS), rng.choice(["DX", "US", "CT", "MR"])
            self.namesake_requests += [b.new_request(a, day, modality), b.new_request(other, day, modality)]
        # Another open order: the patient has a second request of the same modality within three days (a
        # follow-up, a repeated chest X-ray; a third of them for the same procedure). Without an accession
        # only the procedure, the day and the station tell the two apart.
        self.second_orders: list[tuple[Request, Request]] = []
        for first in rng.sample(b.requests[:ordinary], min(n, ordinary)):
            near = [d for d in DAYS if abs((d - first.day).days) <= 3]
            second = b.new_request(first.patient, rng.choice(near), first.modality)
            if rng.random() < 1 / 3:
                second.code, second.description = first.code, first.description
            self.second_orders.append((first, second) if rng.random() < 0.5 else (second, first))
        # Patients never scheduled (unscheduled studies, and the victims of a wrong accession).
        self.unscheduled = [b.new_patient() for _ in range(n)]
        special = {r.id for r in self.twin_requests + self.namesake_requests} | {
            r.id for pair in self.second_orders for r in pair}
        self.free = [r for r in b.requests if r.id not in special]
        rng.shuffle(self.free)
        self.by_day_modality: dict[tuple[Any, str], list[Request]] = defaultdict(list)
        for r in b.requests:
            self.by_day_modality[(r.day, r.modality)].append(r)

    @property
    def requests(self) -> list[Request]:
        return self.b.requests

    def _take(self, predicate: Any = None) -> Request:
        free = self.free
        if not free:  # more studies than requests: a second study for an already imaged request
            return self.b.rng.choice(self.b.requests)
        for i, r in enumerate(free):
            if predicate is None or predicate(r):
                return free.pop(i)
        return free.pop()

    def _wrong(self, victim: Request) -> Request:
        """Another patient's request of the same day, same modality where there is one."""
        rng = self.b.rng
        same = self.by_day_modality[(victim.day, victim.modality)]
        for _ in range(20):
            o = rng.choice(same)
            if o.patient.key != victim.patient.key:
                return o
        same_day = [o for m in MODALITY_WEIGHTS for o in self.by_day_modality[(victim.day, m)]
                    if o.patient.key != victim.patient.key]
        return rng.choice(same_day)

    def studies(self) -> Iterator[LabelledStudy]:
        b, rng, n = self.b, self.b.rng, self.n
        count = 0

        def make(r: Request | None, scenario: str, document: DicomJson, accession: str,
                 patient: Patient | None = None) -> LabelledStudy:
            nonlocal count
            count += 1
            imaged = patient or (r.patient if r else None)
            return LabelledStudy(f"S{count:06d}", document, r.id if r else None, scenario,
                                 imaged.key if imaged else "-", accession)

        def acc() -> tuple[bool | None, str]:
            return (True, "kept") if rng.random() < 0.5 else (None, "missing")

        def stream() -> Iterator[LabelledStudy]:
            for _ in range(n):
                r = self._take()
                yield make(r, EXACT, b.study_document(r), "kept")
            for _ in range(n):
                r = self._take()
                a, label = acc()
                family, given = r.patient.family, r.patient.given
                edits = rng.choice((1, 2))
                if rng.random() < 0.6:
                    family = typo(rng, family, edits)
                else:
                    given = typo(rng, given, edits)
                yield make(r, TYPO, b.study_document(r, name=f"{family}^{given}", accession=a,
                                                     hand_entered=a is None), label)
            for _ in range(n):
                r = self._take()
                a, label = acc()
                yield make(r, SWAPPED, b.study_document(r, name=f"{r.patient.given}^{r.patient.family}",
                                                        accession=a, hand_entered=a is None), label)
            for _ in range(n):
                r = self._take(lambda r: r.patient.sex == "F")
                a, label = acc()
                p = r.patient
                culture = p.culture if p.culture in CULTURES else "german"
                new_family = b._family(culture, "F")
                while new_family == p.family:
                    new_family = b._family(culture, "F")
                if rng.random() < 0.3:
                    new_family = f"{new_family}-{p.family}"
                yield make(r, MARRIED, b.study_document(r, name=f"{new_family}^{p.given}", accession=a,
                                                        local_pid=rng.random() < 0.3, hand_entered=a is None), label)
            for r in self.twin_requests:
                yield make(r, TWINS, b.study_document(r, accession=None, local_pid=rng.random() < 0.5,
                                                      hand_entered=True), "missing")
            for r in self.namesake_requests:
                yield make(r, SAME_NAME, b.study_document(r, accession=None, local_pid=rng.random() < 0.5,
                                                          hand_entered=True), "missing")
            for _ in range(n):
                r = self._take()
                yield make(r, MISSING_ACCESSION, b.study_document(r, accession=None, hand_entered=True), "missing")
            for i in range(n):
                # The technologist typed (or picked) the accession of ANOTHER patient's request, same day.
                victim = self._take()
                wrong = self._wrong(victim)
                if i % 3 == 2:  # the imaged patient had no request at all
                    patient = self.unscheduled[i % len(self.unscheduled)]
                    pseudo = Request("-", patient, "", victim.modality, victim.station, victim.code,
                                     victim.description, victim.day, victim.time, "", victim.referring)
                    self.free.append(victim)
                    yield make(None, WRONG_ACCESSION, b.study_document(
                        pseudo, accession=wrong.accession, local_pid=rng.random() < 0.3, hand_entered=True),
                        "wrong", patient)
                else:
                    yield make(victim, WRONG_ACCESSION, b.study_document(
                        victim, accession=wrong.accession, local_pid=rng.random() < 0.3, hand_entered=True), "wrong")
            for _ in range(n):
                r = self._take(lambda r: r.patient.name != ascii_fold(r.patient.name) or any(
                    w in TRANSLITERATIONS for w in r.patient.name.replace("^", " ").split()))
                a, label = acc()
                p = r.patient
                family, given = p.family, p.given
                part = rng.random()
                if part < 0.45:
                    family = rng.choice(name_variants(family))
                elif part < 0.7:
                    given = rng.choice(name_variants(given))
                else:
                    fold = rng.choice((ascii_fold, german_fold))
                    family, given = fold(family), fold(given)
                    if rng.random() < 0.5:
                        family, given = family.upper(), given.upper()
                if f"{family}^{given}" == p.name:
                    family = family.upper() if family != family.upper() else ascii_fold(family)
                yield make(r, UMLAUT, b.study_document(r, name=f"{family}^{given}", accession=a,
                                                       hand_entered=a is None), label)
            for _ in range(n):
                r = self._take()
                a, label = acc()
                yield make(r, NAMESPACE, b.study_document(r, accession=a, local_pid=True, hand_entered=a is None),
                           label)
            for _ in range(n):
                r = self._take()
                a, label = acc()
                yield make(r, TIME_SHIFT, b.study_document(r, accession=a, day_shift=1, hand_entered=a is None),
                           label)
            for _ in range(n):
                r = self._take()
                a, label = acc()
                yield make(r, MISSING_BIRTH_DATE, b.study_document(r, accession=a, birth_date=None,
                                                                   hand_entered=a is None), label)
            for imaged, _other in self.second_orders:
                yield make(imaged, SECOND_ORDER, b.study_document(imaged, accession=None, hand_entered=True),
                           "missing")
            i = 0
            while True:
                # A study nobody requested, as many as needed to reach n_studies: half of a known patient
                # (requests on other days or for another modality the same day), half never scheduled.
                if i % 2 == 0:
                    known = self._take()
                    self.free.append(known)
                    patient: Patient = known.patient
                    others = [m for m in MODALITY_WEIGHTS
                              if m not in {o.modality for o in b.by_patient[patient.key]} and not (
                                  m == "MG" and patient.sex == "M")]
                    modality = rng.choice(others or ["DX"])
                    day = known.day if rng.random() < 0.5 else rng.choice(DAYS)
                else:
                    patient = self.unscheduled[-1 - (i // 2) % len(self.unscheduled)]
                    modality, day = rng.choice(["DX", "CT", "US"]), rng.choice(DAYS)
                stations, procedures = CATALOG[modality]
                code, description = rng.choice(procedures)
                pseudo = Request("-", patient, "", modality, rng.choice(stations), code, description, day,
                                 f"{rng.randrange(7, 18):02d}0000", "", rng.choice(REFERRING))
                yield make(None, UNSCHEDULED, b.study_document(pseudo, accession=None, hand_entered=True), "missing",
                           patient)
                i += 1

        for study in stream():
            if count > self.n_studies:
                return
            yield study


def generate_population(seed: int = 20240611, n_requests: int = 3600, studies_per_scenario: int = 150,
                        ) -> Population:
    """A deterministic adversarial population: about ``n_requests`` open requests and
    ``14 * studies_per_scenario`` studies, collected from a ``ScenarioStream``."""
    stream = ScenarioStream(seed, n_requests, 14 * studies_per_scenario)
    studies = list(stream.studies())
    b = stream.b
    requests = {r.id: b.request_document(r) for r in b.requests}
    return Population(requests, studies, {r.id: r.patient.key for r in b.requests})
