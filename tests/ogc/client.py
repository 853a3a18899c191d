"""Drives rastercast's OGC API - Processes face with OWSLib, the reference Python client, and
validates every answer against the standard's own schemas (tests/ogc/schemas, OAS 3.0
dialect). Run by tests/api/ogc.rs with: BASE TOKEN SMALL_ITEM BIG_ITEM SUCCESS_URI.
Prints one JSON object of what it saw; any failed check raises (a non-zero exit)."""

import json
import pathlib
import sys
import time

import requests
import yaml
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from owslib.ogcapi.processes import Processes
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

SCHEMAS = pathlib.Path(__file__).parent / "schemas"
ROOT = "https://schemas.opengis.net/ogcapi/processes/part1/1.0/openapi/schemas/"
REGISTRY = Registry().with_resources(
    (ROOT + p.name, Resource(contents=yaml.safe_load(p.read_text()), specification=DRAFT4))
    for p in SCHEMAS.glob("*.yaml")
)
CLASSES = [
    "core", "ogc-process-description", "json", "job-list", "dismiss", "callback", "oas30",
]


def valid(instance, schema_file):
    """Validates `instance` against one of the standard's schemas; returns it."""
    validator = OAS30Validator(
        {"$ref": ROOT + schema_file}, registry=REGISTRY,
        format_checker=OAS30Validator.FORMAT_CHECKER,
    )
    validator.validate(instance)
    return instance


def until(what, probe, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def main():
    base, token, small, big, success_uri = sys.argv[1:6]
    auth = {"Authorization": f"Bearer {token}"}
    seen = {}

    # Capabilities: the landing page (read by OWSLib itself), conformance, the API document.
    api = Processes(base + "/ogcapi", headers=auth)
    valid(api.response, "landingPage.yaml")
    rels = {link["rel"] for link in api.links}
    assert "service-desc" in rels and "http://www.opengis.net/def/rel/ogc/1.0/processes" in rels, rels
    conformance = valid(api._request(path="conformance"), "confClasses.yaml")
    for name in CLASSES:
        uri = f"http://www.opengis.net/spec/ogcapi-processes-1/1.0/conf/{name}"
        assert uri in conformance["conformsTo"], uri
    document = requests.get(base + "/ogcapi/api", timeout=30).json()
    assert document["openapi"].startswith("3.0"), document["openapi"]
    validate_spec(document)

    # The process.
    summaries = api.processes()
    for summary in summaries:
        valid(summary, "processSummary.yaml")
    assert [p["id"] for p in summaries] == ["convert-to-cog"]
    process = valid(api.process("convert-to-cog"), "process.yaml")
    assert set(process["jobControlOptions"]) == {"async-execute", "sync-execute"}
    assert {"item", "source", "compression", "target_crs", "nodata"} <= set(process["inputs"])

    # Synchronous (OWSLib sends Prefer: respond-sync): the results, a signed link that opens
    # the COG with no credentials at all.
    results = valid(api.execute("convert-to-cog", inputs={"item": small, "compression": "zstd"}), "results.yaml")
    monitor = api.response_headers.get("Link", "")
    assert 'rel="monitor"' in monitor, monitor
    cog = requests.get(results["cog"]["href"], timeout=30)
    assert cog.status_code == 200 and cog.content[:4] in (b"II*\x00", b"MM\x00*"), cog.status_code
    seen["sync_tree_item_id"] = results["tree_item_id"]
    seen["sync_job"] = monitor.split(">")[0].lstrip("<").rsplit("/", 1)[1]

    # Asynchronous, with a subscriber: 201, Location, then the job until it succeeds.
    accepted = valid(
        api.execute("convert-to-cog", inputs={"item": {"value": small}}, async_=True),
        "statusInfo.yaml",
    )
    assert accepted["status"] in ("accepted", "running", "successful"), accepted
    location = api.response_headers["Location"]
    job = accepted["jobID"]
    assert location.endswith("/ogcapi/jobs/" + job), location
    assert api.response_headers.get("Preference-Applied") == "respond-async"

    def finished():
        info = valid(api._request(path=f"jobs/{job}"), "statusInfo.yaml")
        return info if info["status"] == "successful" else None

    until("the asynchronous job", finished)
    valid(api._request(path=f"jobs/{job}/results"), "results.yaml")
    seen["async_job"] = job

    # The subscriber's successUri (checked by the caller, which holds the receiver).
    subscribed = requests.post(
        base + "/ogcapi/processes/convert-to-cog/execution",
        headers={**auth, "Prefer": "respond-async"},
        json={"inputs": {"item": small}, "subscriber": {"successUri": success_uri}},
        timeout=30,
    )
    assert subscribed.status_code == 201, subscribed.text
    seen["subscribed_job"] = valid(subscribed.json(), "statusInfo.yaml")["jobID"]

    # A long job: its results are not ready while it runs, and dismissing it stops it.
    long = requests.post(
        base + "/ogcapi/processes/convert-to-cog/execution",
        headers={**auth, "Prefer": "respond-async"},
        json={"inputs": {"item": big, "compression": "deflate"}},
        timeout=30,
    )
    assert long.status_code == 201, long.text
    long_job = long.json()["jobID"]

    def running():
        info = valid(api._request(path=f"jobs/{long_job}"), "statusInfo.yaml")
        return info if info["status"] == "running" else None

    until("the long job to run", running)
    not_ready = requests.get(f"{base}/ogcapi/jobs/{long_job}/results", headers=auth, timeout=30)
    assert not_ready.status_code == 404, not_ready.status_code
    exception = valid(not_ready.json(), "exception.yaml")
    assert exception["type"].endswith("/result-not-ready"), exception
    dismissed = requests.delete(f"{base}/ogcapi/jobs/{long_job}", headers=auth, timeout=60)
    assert dismissed.status_code == 200, dismissed.text
    assert valid(dismissed.json(), "statusInfo.yaml")["status"] == "dismissed"
    after = valid(api._request(path=f"jobs/{long_job}"), "statusInfo.yaml")
    assert after["status"] == "dismissed", after
    seen["dismissed_job"] = long_job

    # The job list, filtered.
    jobs = valid(api._request(path="jobs", kwargs={"status": "successful"}), "jobList.yaml")
    assert jobs["jobs"] and all(j["status"] == "successful" for j in jobs["jobs"]), jobs
    listed = {j["jobID"] for j in jobs["jobs"]}
    assert {seen["async_job"], seen["sync_job"]} <= listed, listed
    dismissed_list = valid(api._request(path="jobs", kwargs={"status": "dismissed"}), "jobList.yaml")
    assert [j["jobID"] for j in dismissed_list["jobs"]] == [long_job], dismissed_list

    # Refusals in the standard's exception shape.
    for path, status, kind in [
        ("/ogcapi/processes/no-such", 404, "/no-such-process"),
        ("/ogcapi/jobs/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12, 404, "/no-such-job"),
    ]:
        answer = requests.get(base + path, headers=auth, timeout=30)
        assert answer.status_code == status, (path, answer.status_code)
        assert valid(answer.json(), "exception.yaml")["type"].endswith(kind), answer.text
    anonymous = requests.get(base + "/ogcapi/jobs", timeout=30)
    assert anonymous.status_code == 401
    valid(anonymous.json(), "exception.yaml")

    print(json.dumps(seen))


if __name__ == "__main__":
    main()
