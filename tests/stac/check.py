"""Checks rastercast's STAC Items and statistics against the references. Run by
tests/api/tiles.rs with: BASE TOKEN CASES_JSON, each case an item and the COG file it holds.
For each: the Item validates against the official schemas (tests/stac/schemas, no network);
its fields equal what rio-stac (`rio stac`) writes for the same file (projection, shape,
transform, bbox, geometry, bands' data type and nodata); its asset's href opens the COG with
no credentials; and `/statistics` equals rio-tiler's statistics. Prints a JSON line per case."""

import json
import pathlib
import sys

import rasterio
import requests
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7
from rio_stac.stac import create_stac_item
from rio_tiler.io import Reader

SCHEMAS = pathlib.Path(__file__).parent / "schemas"
URLS = {}
for path in (SCHEMAS / "stac" / "v1.1.0").glob("*.json"):
    URLS[f"https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/{path.name}"] = path
for name in ("Feature", "Geometry"):
    URLS[f"https://geojson.org/schema/{name}.json"] = SCHEMAS / "geojson" / f"{name}.json"
URLS["https://stac-extensions.github.io/projection/v2.0.0/schema.json"] = SCHEMAS / "ext/projection/v2.0.0/schema.json"
URLS["https://stac-extensions.github.io/raster/v1.1.0/schema.json"] = SCHEMAS / "ext/raster/v1.1.0/schema.json"
URLS["https://proj.org/schemas/v0.7/projjson.schema.json"] = SCHEMAS / "projjson/v0.7/projjson.schema.json"


def retrieve(uri):
    path = URLS.get(uri.rstrip("#"))
    if path is None:
        raise LookupError(f"not vendored, and nothing is fetched: {uri}")
    return Resource.from_contents(json.loads(path.read_text()), default_specification=DRAFT7)


REGISTRY = Registry(retrieve=retrieve)


def errors(item):
    schemas = [f"https://schemas.stacspec.org/v{item['stac_version']}/item-spec/json-schema/item.json"]
    schemas += item.get("stac_extensions", [])
    out = []
    for schema in schemas:
        for e in Draft7Validator({"$ref": schema}, registry=REGISTRY).iter_errors(item):
            out.append(f"{schema}: {'/'.join(map(str, e.absolute_path))}: {e.message[:200]}")
    return out


def close(a, b, tolerance):
    return all(abs(x - y) <= tolerance for x, y in zip(a, b)) and len(a) == len(b)


def main():
    base, token, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    for case in cases:
        api = f"{base}/api/v1/tree-items/{case['item']}"
        ours = session.get(f"{api}/stac", timeout=60).json()
        problems = errors(ours)
        # A deliberately broken copy must fail, or the validation checks nothing.
        broken = json.loads(json.dumps(ours))
        broken["properties"]["proj:shape"] = "tall"
        assert errors(broken), "the schemas accepted a broken item"

        with rasterio.open(case["path"]) as src:
            theirs = create_stac_item(src, id=ours["id"], with_proj=True, with_raster=True,
                                      input_datetime=None).to_dict()
        props, their_props = ours["properties"], theirs["properties"]
        if their_props.get("proj:epsg") is not None:
            if props.get("proj:code") != f"EPSG:{their_props['proj:epsg']}":
                problems.append(f"proj:code {props.get('proj:code')} vs EPSG:{their_props['proj:epsg']}")
        for key in ("proj:shape",):
            if props[key] != their_props[key]:
                problems.append(f"{key} {props[key]} vs {their_props[key]}")
        if not close(props["proj:transform"], their_props["proj:transform"], 1e-9):
            problems.append(f"proj:transform {props['proj:transform']} vs {their_props['proj:transform']}")
        if not close(props["proj:bbox"], their_props["proj:bbox"], 1e-6):
            problems.append(f"proj:bbox {props['proj:bbox']} vs {their_props['proj:bbox']}")
        if not close(ours["bbox"], theirs["bbox"], 1e-6):
            problems.append(f"bbox {ours['bbox']} vs {theirs['bbox']}")
        ring = [p for p in ours["geometry"]["coordinates"][0]]
        their_ring = theirs["geometry"]["coordinates"][0]
        if not all(any(close(p, q, 1e-6) for q in their_ring) for p in ring):
            problems.append(f"geometry {ring} vs {their_ring}")
        asset = ours["assets"]["data"]
        if asset["roles"] != ["data"] or "cloud-optimized" not in asset["type"]:
            problems.append(f"asset {asset['roles']} {asset['type']}")
        their_bands = next(iter(theirs["assets"].values()))["raster:bands"]
        for mine, other in zip(asset["raster:bands"], their_bands):
            if mine["data_type"] != other["data_type"]:
                problems.append(f"data_type {mine['data_type']} vs {other['data_type']}")
            if str(mine.get("nodata")) != str(other.get("nodata")):
                problems.append(f"nodata {mine.get('nodata')} vs {other.get('nodata')}")
        opened = requests.get(asset["href"], headers={"Range": "bytes=0-3"}, timeout=30)
        if opened.status_code != 206 or opened.content[:2] not in (b"II", b"MM"):
            problems.append(f"the asset's href answered {opened.status_code}")

        stats = session.get(f"{api}/statistics", timeout=60).json()
        with Reader(case["path"]) as cog:
            reference = cog.statistics()
        for band, expected in reference.items():
            got = stats.get(band, {})
            for key in ("min", "max", "mean", "count", "sum", "std", "median", "majority", "minority",
                        "unique", "valid_percent", "masked_pixels", "valid_pixels",
                        "percentile_2", "percentile_98"):
                want = getattr(expected, key)
                if abs(got.get(key, float("nan")) - want) > 1e-6 * max(1.0, abs(want)):
                    problems.append(f"statistics {band}.{key}: {got.get(key)} vs {want}")
            if got.get("histogram", [None])[0] != list(expected.histogram[0]):
                problems.append(f"statistics {band}.histogram: {got.get('histogram')} vs {expected.histogram}")
        print(json.dumps({"case": case["name"], "problems": problems}))


if __name__ == "__main__":
    main()
