"""The FHIR R4 door against a running pacsbridge on loopback: fhirpy (an independent FHIR client) for
ServiceRequest and Patient, httpx for headers and status codes, fhir.resources R4B for every answer.

See: FHIR R4 http.html, search.html, imagingstudy.html, endpoint.html; standards.md §E.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound, ResourceNotFound
from fhirpy.base.exceptions import OperationOutcome as OutcomeError
from joserfc import jwt
from joserfc.jwk import ECKey
from pydicom.uid import generate_uid

from pacsbridge.services.issuer import hash_secret
from pacsbridge.settings import Settings

from ..support.dicom import instance
from ..support.http import stow_body
from ..support.servers import RunningServer, serve

PID_SYSTEM = "urn:pacsbridge:patient-id"
ACCESSION_SYSTEM = "urn:pacsbridge:accession"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
LOINC = "http://loinc.org"
FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("fhir") / "data", storage={"fsync": False},
                        dimse={"enabled": False}, auth={"open_routes": ["/fhir", "/dicomweb"]},
                        orders={"stable_seconds": 0.5})
    with serve(settings) as running:
        yield running


def base(server: RunningServer) -> str:
    return server.url + "/fhir"


def client(server: RunningServer, **headers: str) -> SyncFHIRClient:
    return SyncFHIRClient(base(server), extra_headers=headers or None)


def unique(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:10].upper()


def patient_json(patient_id: str, family: str = "Doe", birth_date: str = "1970-01-01") -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": PID_SYSTEM, "value": patient_id}],
            "name": [{"family": family, "given": ["Jane"]}], "birthDate": birth_date, "gender": "female"}


def order_json(subject: str, **fields: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": subject},
        "code": {"coding": [{"system": DCM, "code": "CT"}, {"system": LOINC, "code": "24725-4"}],
                 "text": "CT head"},
        "performer": [{"identifier": {"system": "urn:dicom:ae", "value": "CT1"}}],
        "occurrenceDateTime": "2024-05-01T10:00:00Z", "authoredOn": "2024-04-30T09:00:00Z",
    }
    resource.update(fields)
    return resource


def with_contained_patient(patient_id: str, **fields: Any) -> dict[str, Any]:
    return order_json("#p", contained=[{**patient_json(patient_id), "id": "p"}], **fields)


def new_patient(server: RunningServer, patient_id: str | None = None) -> Any:
    patient = client(server).resource("Patient", **patient_json(patient_id or unique("PID-")))
    patient.save()
    return patient


def acsn(value: str) -> dict[str, Any]:
    return {"type": {"coding": [{"system": V2_0203, "code": "ACSN"}]}, "system": ACCESSION_SYSTEM, "value": value}


def outcome_of(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/fhir+json; charset=utf-8"
    body = r.json()
    OperationOutcome.model_validate(body)
    return body


def bundle_of(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body = r.json()
    Bundle.model_validate(body)
    return body


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


# --- ServiceRequest: create, read, vread, history, update, delete ----------------------------------------


def test_create_with_a_contained_patient_then_read_update_vread_history(server: RunningServer) -> None:
    fhir = client(server)
    created = fhir.resource("ServiceRequest", **with_contained_patient(unique("PID-")))
    created.save()
    assert created.id and created["meta"]["versionId"] == "1"
    ServiceRequest.model_validate(created.serialize())
    # pacsbridge assigned an accession number, written back as an ACSN identifier
    (assigned,) = [i for i in created["identifier"] if i["type"]["coding"][0]["code"] == "ACSN"]
    assert assigned["system"] == ACCESSION_SYSTEM and 1 <= len(assigned["value"]) <= 16

    url = f"{base(server)}/ServiceRequest/{created.id}"
    r = httpx.get(url, headers={"Accept": FHIR_JSON})
    assert r.status_code == 200 and r.headers["content-type"] == "application/fhir+json; charset=utf-8"
    assert r.headers["etag"] == 'W/"1"' and r.headers["last-modified"].endswith(" GMT")
    assert httpx.get(url, headers={"If-None-Match": 'W/"1"'}).status_code == 304

    # update with the current version: 200, version 2
    changed = {**r.json(), "priority": "urgent"}
    r2 = httpx.put(url, json=changed, headers={"If-Match": 'W/"1"', "Content-Type": FHIR_JSON})
    assert r2.status_code == 200, r2.text
    assert r2.headers["etag"] == 'W/"2"' and r2.json()["priority"] == "urgent"
    # a stale If-Match: 412, nothing written
    stale = httpx.put(url, json={**changed, "priority": "stat"}, headers={"If-Match": 'W/"1"'})
    assert outcome_of(stale, 412)["issue"][0]["code"] == "conflict"
    assert fhir.get("ServiceRequest", created.id)["priority"] == "urgent"

    # vread both versions
    v1 = httpx.get(f"{url}/_history/1")
    assert v1.status_code == 200 and v1.headers["etag"] == 'W/"1"' and "priority" not in v1.json()
    assert httpx.get(f"{url}/_history/2").json()["priority"] == "urgent"
    assert outcome_of(httpx.get(f"{url}/_history/9"), 404)["issue"][0]["code"] == "not-found"

    history = bundle_of(httpx.get(f"{url}/_history"))
    assert history["type"] == "history" and history["total"] == 2
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
    assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]


def test_create_answers_201_with_location_etag_and_last_modified(server: RunningServer) -> None:
    r = httpx.post(f"{base(server)}/ServiceRequest", json=with_contained_patient(unique("PID-")),
                   headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON})
    assert r.status_code == 201, r.text
    body = r.json()
    assert r.headers["location"] == f"{base(server)}/ServiceRequest/{body['id']}/_history/1"
    assert r.headers["etag"] == 'W/"1"' and r.headers["last-modified"].endswith(" GMT")
    ServiceRequest.model_validate(body)


def test_prefer_return_minimal_and_operation_outcome(server: RunningServer) -> None:
    url = f"{base(server)}/ServiceRequest"
    minimal = httpx.post(url, json=with_contained_patient(unique("PID-")), headers={"Prefer": "return=minimal"})
    assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["location"]
    told = httpx.post(url, json=with_contained_patient(unique("PID-")), headers={"Prefer": "return=OperationOutcome"})
    assert outcome_of(told, 201)["issue"][0]["severity"] == "information"


def test_create_referencing_a_patient_created_here_first(server: RunningServer) -> None:
    fhir = client(server)
    patient = new_patient(server)
    assert patient.id and patient["meta"]["versionId"] == "1"
    order = fhir.resource("ServiceRequest", **order_json(f"Patient/{patient.id}"))
    order.save()
    found = fhir.resources("ServiceRequest").search(patient=f"Patient/{patient.id}").fetch_all()
    assert [o.id for o in found] == [order.id]
    # the Patient has the same interactions
    assert fhir.get("Patient", patient.id)["identifier"][0]["system"] == PID_SYSTEM
    by_identifier = fhir.resources("Patient").search(identifier=f"{PID_SYSTEM}|{patient['identifier'][0]['value']}")
    assert [p.id for p in by_identifier.fetch_all()] == [patient.id]
    patient["birthDate"] = "1970-01-02"
    patient.save()
    assert patient["meta"]["versionId"] == "2"
    history = bundle_of(httpx.get(f"{base(server)}/Patient/{patient.id}/_history"))
    assert history["total"] == 2


def test_conditional_create_201_then_200_then_412_for_several(server: RunningServer) -> None:
    placer = unique("PLAC-")
    identifier = {"type": {"coding": [{"system": V2_0203, "code": "PLAC"}]}, "system": "urn:emr:placer",
                  "value": placer}
    condition = f"identifier=urn:emr:placer|{placer}"
    url = f"{base(server)}/ServiceRequest"
    resource = with_contained_patient(unique("PID-"), identifier=[identifier])
    first = httpx.post(url, json=resource, headers={"If-None-Exist": condition})
    assert first.status_code == 201, first.text
    again = httpx.post(url, json=resource, headers={"If-None-Exist": condition})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["etag"] == 'W/"1"'
    # fhirpy with the header: the same resource back
    same = client(server, **{"If-None-Exist": condition}).resource("ServiceRequest", **resource)
    same.save()
    assert same.id == first.json()["id"]
    # a second one with the same identifier, unconditionally: then the condition matches two
    assert httpx.post(url, json=resource).status_code == 201
    several = httpx.post(url, json=resource, headers={"If-None-Exist": condition})
    assert outcome_of(several, 412)["issue"][0]["severity"] == "error"
    with pytest.raises(MultipleResourcesFound):
        client(server, **{"If-None-Exist": condition}).resource("ServiceRequest", **resource).save()
    # an unknown parameter in the condition is refused, never ignored (it would match everything)
    outcome_of(httpx.post(url, json=resource, headers={"If-None-Exist": "no-such-param=1"}), 400)


def test_delete_then_read_is_410(server: RunningServer) -> None:
    fhir = client(server)
    order = fhir.resource("ServiceRequest", **with_contained_patient(unique("PID-")))
    order.save()
    order.delete()
    url = f"{base(server)}/ServiceRequest/{order.id}"
    assert outcome_of(httpx.get(url), 410)["issue"][0]["code"] == "deleted"
    with pytest.raises(ResourceNotFound):
        fhir.get("ServiceRequest", order.id)
    history = bundle_of(httpx.get(f"{url}/_history"))
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    assert httpx.delete(url).status_code == 204  # deleting again is no error
    assert not fhir.resources("ServiceRequest").search(_id=order.id).fetch_all()


# --- ServiceRequest search -----------------------------------------------------------------------------


def test_search_by_patient_status_identifier_authored_and_code_with_paging(server: RunningServer) -> None:
    fhir = client(server)
    patient = new_patient(server)
    subject = f"Patient/{patient.id}"
    accession = unique("A")
    made = []
    for month in range(1, 6):
        fields: dict[str, Any] = {"authoredOn": f"2023-{month:02d}-10T09:00:00Z"}
        if month == 3:
            fields["identifier"] = [acsn(accession)]
            fields["code"] = {"coding": [{"system": DCM, "code": "MR"}], "text": "MR knee"}
        if month == 5:
            fields["status"] = "draft"
        order = fhir.resource("ServiceRequest", **order_json(subject, **fields))
        order.save()
        made.append(order.id)
    mine = fhir.resources("ServiceRequest").search(patient=subject)

    assert sorted(o.id for o in mine.fetch_all()) == sorted(made)
    assert [o.id for o in mine.search(status="draft").fetch_all()] == [made[4]]
    assert len(mine.search(status="active").fetch_all()) == 4
    assert [o.id for o in mine.search(identifier=f"{ACCESSION_SYSTEM}|{accession}").fetch_all()] == [made[2]]
    of_type = fhir.resources("ServiceRequest").search(identifier__of_type=f"{V2_0203}|ACSN|{accession}")
    assert [o.id for o in of_type.fetch_all()] == [made[2]]
    ranged = mine.search(authored__ge="2023-02-01", authored__lt="2023-04-10")
    assert sorted(o.id for o in ranged.fetch_all()) == sorted(made[1:3])
    assert [o.id for o in mine.search(code=f"{DCM}|MR").fetch_all()] == [made[2]]
    assert len(mine.search(code=f"{LOINC}|24725-4").fetch_all()) == 4
    newest_first = mine.sort("-authored").fetch_all()
    assert [o.id for o in newest_first] == list(reversed(made))

    # paging: links followed to the end, by fhirpy and by hand
    assert sorted(o.id for o in mine.limit(2).fetch_all()) == sorted(made)
    url: str | None = f"{base(server)}/ServiceRequest?patient={subject}&_count=2&_sort=authored"
    seen: list[str] = []
    pages = 0
    while url:
        bundle = bundle_of(httpx.get(url))
        assert bundle["total"] == 5
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert ("previous" in links) == (pages > 0)
        seen += ids(bundle)
        url = links.get("next")
        pages += 1
    assert pages == 3 and seen == made

    # POST _search with a form body is the same search
    posted = bundle_of(httpx.post(f"{base(server)}/ServiceRequest/_search",
                                  data={"patient": subject, "status": "draft"}))
    assert ids(posted) == [made[4]]


def test_unknown_search_parameters_are_ignored_unless_strict(server: RunningServer) -> None:
    url = f"{base(server)}/ServiceRequest?no-such-param=1&_count=1"
    bundle = bundle_of(httpx.get(url))
    assert "no-such-param" not in bundle["link"][0]["url"]
    (warning,) = [e for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    assert "no-such-param" in warning["resource"]["issue"][0]["diagnostics"]
    strict = httpx.get(url, headers={"Prefer": "handling=strict"})
    assert outcome_of(strict, 400)["issue"][0]["code"] == "invalid"


# --- refusals -----------------------------------------------------------------------------------------


def test_a_patient_that_cannot_be_resolved_is_422_saying_why(server: RunningServer) -> None:
    r = httpx.post(f"{base(server)}/ServiceRequest", json=order_json("Patient/nobody-here"))
    (issue,) = outcome_of(r, 422)["issue"]
    assert issue["code"] == "business-rule" and "Patient/nobody-here" in issue["diagnostics"]
    assert "not held here" in issue["diagnostics"]
    with pytest.raises(OutcomeError):
        client(server).resource("ServiceRequest", **order_json("Patient/nobody-here")).save()


def test_an_invalid_resource_is_400_naming_each_element_and_no_patient_value(server: RunningServer) -> None:
    secret_name, secret_birth = "Zyxwvutsrq", "1970-13-45"
    resource = order_json("#p", contained=[{**patient_json("PID-SECRET-77", secret_name, secret_birth), "id": "p",
                                            "active": "maybe"}],
                          authoredOn="yesterday")
    r = httpx.post(f"{base(server)}/ServiceRequest", json=resource)
    body = outcome_of(r, 400)
    where = {e for issue in body["issue"] for e in issue.get("expression", [])}
    assert {"ServiceRequest.contained[0].birthDate", "ServiceRequest.contained[0].active",
            "ServiceRequest.authoredOn"} <= where
    for value in (secret_name, secret_birth, "PID-SECRET-77", "maybe", "yesterday"):
        assert value not in r.text
    bad_code = httpx.post(f"{base(server)}/ServiceRequest", json=order_json("#p", status="bogus"))
    assert outcome_of(bad_code, 400)["issue"][0]["expression"] == ["ServiceRequest.status"]


@pytest.mark.parametrize(("body", "headers", "status"), [
    (b"{not json", {"Content-Type": FHIR_JSON}, 400),
    (b"[1, 2]", {"Content-Type": FHIR_JSON}, 400),
    (b'{"resourceType": "Patient"}', {"Content-Type": FHIR_JSON}, 400),
    (b"<ServiceRequest/>", {"Content-Type": "application/fhir+xml"}, 415),
    (b"{}", {"Content-Type": FHIR_JSON, "Accept": "application/fhir+xml"}, 406),
])
def test_bodies_and_formats_refused_with_an_operation_outcome(server: RunningServer, body: bytes,
                                                              headers: dict[str, str], status: int) -> None:
    outcome_of(httpx.post(f"{base(server)}/ServiceRequest", content=body, headers=headers), status)


def test_unknown_paths_and_methods_are_operation_outcomes(server: RunningServer) -> None:
    assert outcome_of(httpx.get(f"{base(server)}/Observation"), 404)["issue"][0]["code"] == "not-found"
    r = httpx.patch(f"{base(server)}/ServiceRequest/x", json={})
    assert outcome_of(r, 405)["issue"][0]["code"] == "not-supported"
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "DELETE"}
    outcome_of(httpx.get(f"{base(server)}/ServiceRequest/no-such-id"), 404)
    outcome_of(httpx.get(f"{base(server)}/ServiceRequest?_format=xml"), 406)
    assert httpx.get(f"{base(server)}/Endpoint?_format=json").status_code == 200


# --- ImagingStudy and Endpoint ---------------------------------------------------------------------------


def stow(server: RunningServer, parts: list[Any]) -> None:
    body, content_type = stow_body(parts)
    r = httpx.post(server.dicomweb + "/studies", content=body,
                   headers={"Content-Type": content_type, "Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text


def wait_for_link(server: RunningServer, study_uid: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(f"{base(server)}/ImagingStudy/{study_uid}")
        assert r.status_code == 200, r.text
        if r.json().get("basedOn") or time.monotonic() > deadline:
            return r.json()  # type: ignore[no-any-return]
        time.sleep(0.25)


def test_imaging_study_read_and_search_after_stow(server: RunningServer) -> None:
    fhir = client(server)
    patient_id, accession = unique("PID-"), unique("A")
    patient = new_patient(server, patient_id)
    order = fhir.resource("ServiceRequest", **order_json(f"Patient/{patient.id}", identifier=[acsn(accession)]))
    order.save()
    study_uid, series_uid = generate_uid(), generate_uid()
    stow(server, [instance(study_uid, series_uid, number=n, PatientID=patient_id, AccessionNumber=accession,
                           StudyDate="20240131") for n in (1, 2)])
    other_uid = generate_uid()
    stow(server, [instance(other_uid, PatientID=unique("PID-"), AccessionNumber=unique("A"), StudyDate="20230615",
                           Modality="MR")])

    study = wait_for_link(server, study_uid)
    ImagingStudy.model_validate(study)
    assert study["id"] == study_uid and study["status"] == "available"
    assert {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"} in study["identifier"]
    assert study["basedOn"] == [{"reference": f"ServiceRequest/{order.id}"}]
    assert study["subject"] == {"reference": f"Patient/{patient.id}"}
    assert study["numberOfInstances"] == 2 and study["series"][0]["uid"] == series_uid
    assert study["endpoint"] == [{"reference": "Endpoint/dicomweb"}]

    def found(query: str) -> list[str]:
        return ids(bundle_of(httpx.get(f"{base(server)}/ImagingStudy?{query}")))

    assert found(f"identifier=urn:dicom:uid|urn:oid:{study_uid}") == [study_uid]
    assert found(f"identifier=urn:oid:{study_uid}") == [study_uid]
    assert found(f"identifier={accession}") == [study_uid]
    assert found(f"identifier:of-type={V2_0203}|ACSN|{accession}") == [study_uid]
    assert found(f"patient=Patient/{patient.id}") == [study_uid]
    assert found(f"subject=Patient/{patient.id}") == [study_uid]
    assert found(f"patient:identifier={PID_SYSTEM}|{patient_id}") == [study_uid]
    assert found(f"patient:identifier=urn:other|{patient_id}") == []
    assert found(f"basedon=ServiceRequest/{order.id}") == [study_uid]
    pair = f"_id={study_uid},{other_uid}"
    assert sorted(found(pair)) == sorted([study_uid, other_uid])
    assert found(f"{pair}&started=2024-01-31") == [study_uid]
    assert found(f"{pair}&started=ge2024-01") == [study_uid]
    assert found(f"{pair}&started=lt2024-01-31") == [other_uid]
    assert found(f"{pair}&started=gt2023-06-15&started=le2024") == [study_uid]
    assert found(f"{pair}&modality={DCM}|CT") == [study_uid]
    assert sorted(found(f"{pair}&modality=CT,MR")) == sorted([study_uid, other_uid])
    assert len(found(f"{pair}&status=available")) == 2 and found(f"{pair}&status=cancelled") == []
    assert len(found(f"{pair}&endpoint=Endpoint/dicomweb")) == 2 and found(f"{pair}&endpoint=Endpoint/x") == []
    assert outcome_of(httpx.get(f"{base(server)}/ImagingStudy?started=ne2024-01-31"), 400)["issue"][0]["code"] == (
        "invalid")
    assert outcome_of(httpx.get(f"{base(server)}/ImagingStudy?started=ap2024-01-31"), 400)

    paged = bundle_of(httpx.get(f"{base(server)}/ImagingStudy?{pair}&_count=1"))
    assert paged["total"] == 2 and len(ids(paged)) == 1
    assert any(link["relation"] == "next" for link in paged["link"])

    included = bundle_of(httpx.get(f"{base(server)}/ImagingStudy?_id={study_uid}&_include=ImagingStudy:endpoint"))
    assert ids(included) == [study_uid] and ids(included, "include") == ["dicomweb"]
    assert "_include=ImagingStudy:endpoint" in included["link"][0]["url"]
    outcome_of(httpx.get(f"{base(server)}/ImagingStudy/{generate_uid()}"), 404)


def test_the_endpoint(server: RunningServer) -> None:
    r = httpx.get(f"{base(server)}/Endpoint/dicomweb")
    assert r.status_code == 200
    endpoint = r.json()
    Endpoint.model_validate(endpoint)
    assert endpoint["status"] == "active" and endpoint["address"] == server.dicomweb
    assert endpoint["connectionType"]["system"] == "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["payloadMimeType"] == ["application/dicom"]
    assert {"url": "http://hl7.org/fhir/smart-app-launch/StructureDefinition/requires-access-token",
            "valueBoolean": True} in endpoint["extension"]
    assert ids(bundle_of(httpx.get(f"{base(server)}/Endpoint?connection-type=dicom-wado-rs"))) == ["dicomweb"]
    assert ids(bundle_of(httpx.get(f"{base(server)}/Endpoint?status=off"))) == []
    outcome_of(httpx.get(f"{base(server)}/Endpoint/other"), 404)


# --- a closed server: tokens and scopes --------------------------------------------------------------------

SECRET = "s3cret-for-fhir-tests"
CLIENTS = {
    "emr": ["orders.read", "orders.write"],
    "placer": ["system/ServiceRequest.c"],
    "orders-reader": ["orders.read"],
    "viewer": ["dicomweb.read"],
}


@pytest.fixture(scope="module")
def closed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("fhir-closed") / "data", storage={"fsync": False},
                        dimse={"enabled": False}, auth={"clients": [
                            {"client_id": name, "secret_hash": hash_secret(SECRET), "scopes": scopes}
                            for name, scopes in CLIENTS.items()]})
    with serve(settings) as running:
        yield running


def bearer(server: RunningServer, client_id: str) -> dict[str, str]:
    r = httpx.post(server.url + "/oauth/token", data={"grant_type": "client_credentials"}, auth=(client_id, SECRET))
    assert r.status_code == 200, r.text
    return {"Authorization": "Bearer " + r.json()["access_token"]}


def minted(server: RunningServer, **claims: Any) -> dict[str, str]:
    """A token the built-in issuer signs with its own key, with claims it would not give (a patient)."""
    keys = anyio.run(server.app.state.services.records.signing_keys)
    active = [k for k in keys if k.retired_at is None][-1]
    now = int(time.time())
    body = {"iss": server.settings.resolved_issuer(), "aud": "pacsbridge", "sub": "minted", "client_id": "minted",
            "iat": now, "nbf": now, "exp": now + 300, **claims}
    token = jwt.encode({"alg": "ES256", "kid": active.kid, "typ": "at+jwt"}, body, ECKey.import_key(active.private_jwk))
    return {"Authorization": "Bearer " + token}


def test_the_capability_statement_needs_no_token_and_a_search_does(closed: RunningServer) -> None:
    r = httpx.get(closed.url + "/fhir/metadata")
    assert r.status_code == 200 and r.headers["content-type"] == "application/fhir+json; charset=utf-8"
    CapabilityStatement.model_validate(r.json())
    assert r.json()["implementation"]["url"] == closed.url + "/fhir"
    search = httpx.get(closed.url + "/fhir/ServiceRequest?status=active")
    assert search.status_code == 401
    assert search.headers["www-authenticate"].startswith('Bearer realm="pacsbridge"')
    assert outcome_of(search, 401)["issue"][0]["code"] == "login"  # every FHIR error is an OperationOutcome
    bad = httpx.get(closed.url + "/fhir/Patient", headers={"Authorization": "Bearer not.a.jwt"})
    assert outcome_of(bad, 401)["issue"][0]["code"] == "login" and "not.a.jwt" not in bad.text
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]


def test_each_action_needs_its_own_scope(closed: RunningServer) -> None:
    fhir = closed.url + "/fhir"
    emr, placer = bearer(closed, "emr"), bearer(closed, "placer")
    reader, viewer = bearer(closed, "orders-reader"), bearer(closed, "viewer")
    order = with_contained_patient(unique("PID-"))
    created = httpx.post(f"{fhir}/ServiceRequest", json=order, headers=emr)
    assert created.status_code == 201, created.text
    url = f"{fhir}/ServiceRequest/{created.json()['id']}"
    # SMART system/ServiceRequest.c places orders, and does nothing else
    assert httpx.post(f"{fhir}/ServiceRequest", json=with_contained_patient(unique("PID-")),
                      headers=placer).status_code == 201
    refused = httpx.get(url, headers=placer)
    assert outcome_of(refused, 403)["issue"][0]["code"] == "forbidden"
    assert 'error="insufficient_scope"' in refused.headers["www-authenticate"]
    assert httpx.delete(url, headers=placer).status_code == 403
    conditional = httpx.post(f"{fhir}/ServiceRequest", json=order,
                             headers={**placer, "If-None-Exist": f"_id={created.json()['id']}"})
    assert outcome_of(conditional, 403)["issue"][0]["code"] == "forbidden"  # it would search and read
    # orders.read reads and searches, never writes
    assert httpx.get(url, headers=reader).status_code == 200
    assert httpx.get(f"{fhir}/Patient", headers=reader).status_code == 200
    assert httpx.put(url, json=created.json(), headers=reader).status_code == 403
    # dicomweb.read: images, and the Endpoint, not orders
    assert httpx.get(f"{fhir}/ServiceRequest", headers=viewer).status_code == 403
    assert httpx.get(f"{fhir}/ImagingStudy", headers=viewer).status_code == 200
    assert httpx.get(f"{fhir}/Endpoint/dicomweb", headers=viewer).status_code == 200
    assert outcome_of(httpx.get(f"{fhir}/Observation", headers=viewer), 404)["issue"][0]["code"] == "not-found"
    assert httpx.delete(url, headers=emr).status_code == 204


def test_a_token_bound_to_a_patient_is_refused_on_orders(closed: RunningServer) -> None:
    bound = minted(closed, scope="orders.read dicomweb.read", patient="PID-SOMEONE")
    r = httpx.get(closed.url + "/fhir/ServiceRequest", headers=bound)
    assert outcome_of(r, 403)["issue"][0]["code"] == "forbidden"
    assert httpx.get(closed.url + "/fhir/ImagingStudy", headers=bound).status_code == 200
