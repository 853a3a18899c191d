"""Compares rastercast's map tiles with rio-tiler's, pixel by pixel. Run by tests/api/tiles.rs
with: BASE TOKEN CASES_JSON. Each case names an item, the COG file it holds (read by
rio-tiler directly), zoom levels, a tile size and the query; for each zoom the script takes
the tile at the data's centre and one just outside it, fetches rastercast's, renders
rio-tiler's with the same parameters, decodes both and compares every channel.
Prints one JSON line per tile: the case, z/x/y, the largest difference and the share of
pixels that differ."""

import json
import sys
import urllib.parse
import warnings

import morecantile
import numpy as np
import rasterio
import requests
from rio_tiler.colormap import cmap
from rio_tiler.io import Reader

warnings.filterwarnings("ignore", category=rasterio.errors.NotGeoreferencedWarning)
TMS = morecantile.tms.get("WebMercatorQuad")


def decode(png):
    with rasterio.io.MemoryFile(png) as memory, memory.open() as image:
        return image.read()


def bands(params):
    """rio-tiler's `indexes` for a `bidx` query."""
    if "bidx" not in params:
        return {}
    return {"indexes": tuple(int(b) for v in params["bidx"] for b in v.split(","))}


def render(image, own_colormap, params):
    """Draws a rio-tiler image as TiTiler does: the stretch, then the named colormap, else the
    file's own palette (`colormap or dst_colormap`), with the mask as alpha unless
    `return_mask=false`."""
    if "rescale" in params:
        image.rescale(in_range=[tuple(float(v) for v in r.split(",")) for r in params["rescale"]])
    colormap = cmap.get(params["colormap_name"][0]) if "colormap_name" in params else own_colormap
    add_mask = params.get("return_mask", ["true"])[0] != "false"
    return decode(image.render(img_format="PNG", colormap=colormap, add_mask=add_mask))


def reference(path, z, x, y, tilesize, query):
    params = urllib.parse.parse_qs(query)
    options = bands(params)
    if "resampling" in params:
        options["resampling_method"] = params["resampling"][0]
    opened = {"nodata": float(params["nodata"][0])} if "nodata" in params else {}
    with Reader(path, options=opened) as cog:
        return render(cog.tile(x, y, z, tilesize=tilesize, **options), cog.colormap, params)


def reference_preview(path, max_size, query):
    params = urllib.parse.parse_qs(query)
    with Reader(path) as cog:
        return render(cog.preview(max_size=max_size, **bands(params)), cog.colormap, params)


def previews(session, base, cases):
    """Whole-file previews, as TiTiler's /preview draws them."""
    for case in cases:
        url = f"{base}/api/v1/tree-items/{case['item']}/preview.png?max_size={case['max_size']}"
        if case["query"]:
            url += "&" + case["query"]
        answer = session.get(url, timeout=60)
        assert answer.status_code == 200, (url, answer.status_code, answer.text)
        ours = decode(answer.content)
        theirs = reference_preview(case["path"], case["max_size"], case["query"])
        if theirs.shape != ours.shape:
            print(json.dumps({"case": case["name"], "shape": [list(theirs.shape), list(ours.shape)], "max": 255, "differing": 1.0, "shown": 0.0}))
            continue
        diff = np.abs(theirs.astype(int) - ours.astype(int))
        print(json.dumps({
            "case": case["name"],
            "max": int(diff.max()),
            "differing": float((diff.max(axis=0) > 0).mean()),
            "shown": float((ours[-1] > 0).mean()),
        }))


def main():
    base, token, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    previews(session, base, [c for c in cases if "max_size" in c])
    for case in [c for c in cases if "max_size" not in c]:
        with rasterio.open(case["path"]) as cog:
            west, south, east, north = rasterio.warp.transform_bounds(cog.crs, "EPSG:4326", *cog.bounds)
        if "tilejson" in case:
            # The zoom range and bounds TiTiler would put in its TileJSON.
            with Reader(case["path"]) as cog:
                theirs = {"minzoom": cog.minzoom, "maxzoom": cog.maxzoom, "bounds": list(cog.get_geographic_bounds(rasterio.crs.CRS.from_epsg(4326)))}
            ours = case["tilejson"]
            assert (ours["minzoom"], ours["maxzoom"]) == (theirs["minzoom"], theirs["maxzoom"]), (case["name"], ours, theirs)
            assert max(abs(a - b) for a, b in zip(ours["bounds"], theirs["bounds"])) < 1e-6, (case["name"], ours, theirs)
        for z in case["zooms"]:
            centre = TMS.tile((west + east) / 2, (south + north) / 2, z)
            for x, y in [(centre.x, centre.y), (TMS.tile(east, north, z).x + 2, centre.y)]:
                suffix = "@2x" if case["tilesize"] == 512 else ""
                url = f"{base}/api/v1/tree-items/{case['item']}/tiles/WebMercatorQuad/{z}/{x}/{y}{suffix}.png"
                if case["query"]:
                    url += "?" + case["query"]
                answer = session.get(url, timeout=60)
                assert answer.status_code == 200, (url, answer.status_code, answer.text)
                ours = decode(answer.content)
                try:
                    theirs = reference(case["path"], z, x, y, case["tilesize"], case["query"])
                except Exception as e:
                    # rio-tiler refuses a tile outside the data (TileOutsideBounds); rastercast
                    # draws it transparent: its alpha must be 0 everywhere.
                    if "outside" not in str(e).lower():
                        raise
                    print(json.dumps({
                        "case": case["name"],
                        "tile": [z, x, y],
                        "max": int(ours[-1].max()),
                        "differing": float((ours[-1] > 0).mean()),
                        "shown": 0.0,
                    }))
                    continue
                if theirs.shape != ours.shape:
                    print(json.dumps({"case": case["name"], "tile": [z, x, y], "shape": [list(theirs.shape), list(ours.shape)]}))
                    continue
                diff = np.abs(theirs.astype(int) - ours.astype(int))
                print(json.dumps({
                    "case": case["name"],
                    "tile": [z, x, y],
                    "max": int(diff.max()),
                    "differing": float((diff.max(axis=0) > 0).mean()),
                    "shown": float((ours[-1] > 0).mean()),
                }))


if __name__ == "__main__":
    main()
