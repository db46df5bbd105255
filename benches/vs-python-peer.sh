#!/usr/bin/env bash
# Sluice against the Python asyncio baseline (../shared/peers/py_peer) in one run: the
# same events, the same load, the same PostgreSQL, one after the other.
#
#   bash benches/vs-python-peer.sh [EVENTS] [REPEAT]
#
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) and ../shared/peers.
# The peer's Python packages go into a virtualenv under target/ (not committed).
set -euo pipefail
cd "$(dirname "$0")/.."

events=${1:-500000}
repeat=${2:-3}
peers=${PEERS_DIR:-../shared/peers}
work=target/py-peer
pg=postgres://postgres@127.0.0.1:5432

[ -f "$peers/py_peer/server.py" ] || { echo "no Python peer in $peers (set PEERS_DIR)" >&2; exit 1; }
mkdir -p "$work"
rm -rf "$work/peers" && cp -r "$peers" "$work/peers"
if [ ! -x "$work/venv/bin/python" ]; then
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q -r "$work/peers/requirements.txt"
fi
for db in sluice_bench sluice_peer; do
  psql -h 127.0.0.1 -U postgres -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  psql -h 127.0.0.1 -U postgres -q -c "CREATE DATABASE $db"
done
cargo build --release -q

echo "== Sluice (PostgreSQL)"
target/release/sluice-bench --database-url "$pg/sluice_bench" --events "$events" --repeat "$repeat"

echo "== Python peer (aiohttp + asyncpg COPY, acknowledges on enqueue)"
"$work/venv/bin/python" "$work/peers/py_peer/server.py" --dsn "postgresql://postgres@127.0.0.1:5432/sluice_peer" \
  --http-port 18080 --tcp-port 19090 --create-tables >"$work/peer.log" 2>&1 &
peer=$!
trap 'kill $peer 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  curl -sf http://127.0.0.1:18080/healthz >/dev/null && break
  sleep 0.2
done
target/release/sluice-bench --database-url "$pg/sluice_peer" --events "$events" --repeat "$repeat" \
  --target-http 127.0.0.1:18080 --target-tcp 127.0.0.1:19090 --pid "$peer"
