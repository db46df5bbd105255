#!/usr/bin/env bash
# The control panel's reads at scale: 1,000,000 dead letters over 50 streams, then the
# time of the requests the panel makes (median of 5 runs each, curl's total time).
#
#   bash benches/panel-scale.sh sqlite
#   bash benches/panel-scale.sh postgres   # database sluice_panel_bench on 127.0.0.1:5432
#
# Uses target/release/sluice (cargo build --release). Dead letters are seeded with SQL
# (the database's own generate_series / recursive CTE), not through Sluice.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-sqlite}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/schemas"
for i in $(seq -w 0 49); do
  sed "s/urn:sluice:test:reading/urn:bench:s$i/" tests/fixtures/schemas/reading.json > "$work/schemas/s$i.json"
done
case "$kind" in
  sqlite)
    url="sqlite://$work/panel.db"
    ;;
  postgres)
    psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS sluice_panel_bench" -c "CREATE DATABASE sluice_panel_bench"
    url="postgres://postgres@127.0.0.1:5432/sluice_panel_bench"
    ;;
  *) echo "usage: $0 sqlite|postgres" >&2; exit 2 ;;
esac
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start() {
  SLUICE_DATABASE_URL="$url" SLUICE_SCHEMAS_DIR="$work/schemas" SLUICE_HTTP_LISTEN="127.0.0.1:$port" \
    SLUICE_TCP_LISTEN="" RUST_LOG=warn target/release/sluice >"$work/sluice.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && return; sleep 0.1; done
  echo "Sluice did not start" >&2; cat "$work/sluice.log" >&2; exit 1
}
start   # creates the tables
kill "$pid"; wait "$pid" 2>/dev/null || true
echo "seeding 1,000,000 dead letters over 50 streams..."
case "$kind" in
  sqlite)
    sqlite3 "$work/panel.db" "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 1000000)
      INSERT INTO sluice_dead_letters (stream, stage, error, payload, source, received_at, attempts)
      SELECT 's' || printf('%02d', n % 50), CASE WHEN n % 10 = 0 THEN 'parse' WHEN n % 10 = 1 THEN 'write' ELSE 'validate' END,
        'at /value: ' || n || ' is greater than the maximum of 1000',
        '{\"seq\": ' || n || ', \"sensor\": \"bench-sensor\", \"value\": ' || n || ', \"note\": \"a dead letter seeded for the panel benchmark\"}',
        'http 127.0.0.1:1', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 1 FROM g;"
    ;;
  postgres)
    psql -h 127.0.0.1 -U postgres -d sluice_panel_bench -qc "INSERT INTO sluice_dead_letters (stream, stage, error, payload, source, received_at, attempts)
      SELECT 's' || lpad((n % 50)::text, 2, '0'), CASE WHEN n % 10 = 0 THEN 'parse' WHEN n % 10 = 1 THEN 'write' ELSE 'validate' END,
        'at /value: ' || n || ' is greater than the maximum of 1000',
        '{\"seq\": ' || n || ', \"sensor\": \"bench-sensor\", \"value\": ' || n || ', \"note\": \"a dead letter seeded for the panel benchmark\"}',
        'http 127.0.0.1:1', now(), 1 FROM generate_series(1, 1000000) AS n; ANALYZE sluice_dead_letters;"
    ;;
esac
start
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_ms() {
  for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port$1"
  done | awk '{printf "%.1f\n", $1 * 1000}' | median
}
before=$(curl -s "http://127.0.0.1:$port/v1/dead-letters?stream=s07&limit=50" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next_before"])')
printf '%-62s %8s\n' "request ($kind, 1,000,000 dead letters, 50 streams)" "ms"
for path in \
  "/ui/" \
  "/v1/streams" \
  "/v1/jobs" \
  "/v1/dead-letters?limit=50" \
  "/v1/dead-letters?stream=s07&limit=50" \
  "/v1/dead-letters?stream=s07&limit=50&before=$before" \
  "/v1/dead-letters?stream=s07&stage=parse&limit=50" \
  "/v1/dead-letters?stage=write&limit=50" \
  "/v1/dead-letters?stream=s07&stage=route&limit=50" \
  "/v1/dead-letters?stage=route&limit=50"; do
  printf '%-62s %8s\n' "$path" "$(time_ms "$path")"
done
