"""Rule 1 of backends/sql/search.py: SQL matching and Python matching give the same answer."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from pacsbridge.backends.local import make_engine
from pacsbridge.backends.sql import schema
from pacsbridge.backends.sql.migrations import migrate
from pacsbridge.backends.sql.search import index_values, plan
from pacsbridge.domain.model import Level
from pacsbridge.domain.query import Match, MatchKind, Query, matches

NAMES = ["Müller^Jürgen", "Mueller^Juergen", "MÜLLER^Anna", "Doe^John", "Doe^Jane", "de la Cruz^María",
         "O'Neil^Mary", "Łukasiewicz^Jan", "Smith", "50%^under_score", "Back\\slash^X"]
pattern = st.text(alphabet=st.sampled_from(list("MÜLERüDOEJAN*?%_^ \\'")), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=pattern, fuzzy=st.booleans())
def test_person_name_matching_agrees(tmp_path: Path, value: str, fuzzy: bool) -> None:
    db = tmp_path / "agree.sqlite"
    engine = make_engine(f"sqlite:///{db}")
    if not db.exists() or db.stat().st_size == 0:
        migrate(engine)
        with engine.begin() as conn:
            for n, name in enumerate(NAMES):
                study = {"0020000D": {"vr": "UI", "Value": [f"1.2.{n}"]},
                         "00100010": {"vr": "PN", "Value": [{"Alphabetic": name}]}}
                columns = index_values(study, {}, {})[Level.STUDY]
                conn.execute(schema.studies.insert().values(**columns, attributes=json.dumps(study),
                                                            updated_at="x"))
    kind = MatchKind.WILDCARD if any(c in value for c in "*?") else MatchKind.SINGLE
    match = Match("00100010", "PN", kind, value=value)
    query = Query(Level.STUDY, (match,), fuzzy=fuzzy)
    with engine.connect() as conn:
        via_sql = {row.study_uid for row in conn.execute(plan(query).statement)}
        rows = conn.execute(select(schema.studies.c.study_uid, schema.studies.c.attributes)).all()
    via_python = {uid for uid, attrs in rows if matches(match, json.loads(attrs), fuzzy)}
    engine.dispose()
    assert via_sql == via_python, value
