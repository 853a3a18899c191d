"""The seed's polling flow through a client generated from rastercast's OpenAPI document.

    pip install openapi-python-client
    openapi-python-client generate --url http://127.0.0.1:8000/api/v1/openapi.json
    PYTHONPATH=rastercast-client python poll.py http://127.0.0.1:8000 "$TOKEN" RGB.byte.tif
"""
import sys
import time

from rastercast_client import AuthenticatedClient
from rastercast_client.api.conversion import start_conversion
from rastercast_client.api.tasks import get_task_status, list_tasks
from rastercast_client.api.tree_items import get_tree_item_content, upload_file
from rastercast_client.models import UploadForm
from rastercast_client.types import File

url, token, path = sys.argv[1:4]
client = AuthenticatedClient(base_url=url, token=token)
with open(path, "rb") as f:
    item = upload_file.sync(client=client, body=UploadForm(file=File(payload=f, file_name=path.split("/")[-1])))
task = start_conversion.sync(item.id, client=client)  # no options: every default
while (status := get_task_status.sync(task.task_id, client=client)).state.value not in ("SUCCESS", "FAILURE", "REVOKED"):
    print(f"{status.state.value} {status.progress:5.1f}% {status.status}")
    time.sleep(0.5)
print(status.state.value, status.result.tree_item_id if status.state.value == "SUCCESS" else status.error)
print("tasks:", " ".join(str(t.task_id) for t in list_tasks.sync(client=client, limit=10).tasks))
if status.result:
    head = get_tree_item_content.sync_detailed(status.result.tree_item_id, client=client, range_="bytes=0-15")
    print(head.status_code, head.headers["content-range"], head.content[:4].hex())
