"""Uploads a file to rastercast with tuspy, the reference Python tus client, resuming the
upload it started before (its URL is kept in STATE, as tuspy's FileStorage keeps it).

usage: client.py SERVER_URL TOKEN FILE STATE CHUNK_BYTES [checksum]

Prints `start <offset>` once it knows where it resumes from, then `done <upload url>`; when
the connection breaks it prints `cut <error>` and exits with 3.
"""

import os
import sys

from tusclient import client
from tusclient.storage import filestorage

server, token, path, state, chunk = sys.argv[1:6]
checksum = sys.argv[6:] == ["checksum"]
tus = client.TusClient(
    server + "/api/v1/uploads", headers={"Authorization": "Bearer " + token}
)
try:
    uploader = tus.uploader(
        path,
        chunk_size=int(chunk),
        metadata={"filename": os.path.basename(path)},
        store_url=True,
        url_storage=filestorage.FileStorage(state),
        upload_checksum=checksum,
    )
    print("start", uploader.offset, flush=True)
    uploader.upload()
except Exception as e:  # noqa: BLE001 - any failure is a cut connection here
    print("cut", type(e).__name__, e, flush=True)
    sys.exit(3)
print("done", uploader.url, flush=True)
