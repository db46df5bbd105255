#!/usr/bin/env bash
# Sluice's user-space instructions per event end to end (HTTP in, SQLite out), counted
# by valgrind's callgrind: a figure that a shared VM's noise does not move, unlike its
# CPU seconds. Sluice runs under callgrind; sluice-bench sends the HTTP load to it and
# waits until every row is committed; Sluice is stopped and callgrind's total, less a
# run with no load, is divided by the events.
#
#   bash benches/instructions-e2e.sh BINARY [EVENTS] [ITEMS]
#
# e.g. `bash benches/instructions-e2e.sh target/release/sluice 20000` (about a minute),
# or with ITEMS = 30 for orders of about 2.9 KB. Two binaries: run each twice,
# alternated; one binary's totals differ by about 1 % between runs (the run with no
# load by more: it is subtracted, use the lower of two). With KEEP=FILE, the loaded
# run's callgrind output is kept there, for `callgrind_annotate`. With DATABASE_URL
# (e.g. postgres://postgres@127.0.0.1:5432/bench_l), Sluice writes there instead of a
# new SQLite file: its own instructions only, the database's are in its own process.
# With MODE=tcp, the load is sent as TCP lines instead of HTTP requests.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=$(realpath "$1")
events=${2:-20000}
items=${3:-}
port=${PORT:-18181}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
[ -x target/release/sluice-bench ] || cargo build --release -q --bin sluice-bench

# Callgrind's total for one run of Sluice with `n` events (0: start and stop only).
count() {
  local n=$1 dir
  dir=$(mktemp -d -p "$work")
  local url=${DATABASE_URL:-sqlite://$dir/db.db}
  SLUICE_DATABASE_URL="$url" SLUICE_HTTP_LISTEN="127.0.0.1:$port" \
    SLUICE_TCP_LISTEN="127.0.0.1:$((port + 1))" SLUICE_TCP_DEFAULT_STREAM=order_placed \
    SLUICE_SCHEMAS_DIR="$PWD/schemas" \
    SLUICE_LOG=warn SLUICE_PRIVACY_KEY_ENV=E2E_PRIVACY_KEY \
    E2E_PRIVACY_KEY=instructions-e2e-key-instructions-e2e-key \
    valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" "$bin" serve \
    >"$dir/log" 2>&1 &
  local pid=$!
  # `count` runs in its own subshell (`$(count …)`): should the load fail, this stops
  # the Sluice under callgrind, which would otherwise keep the ports for the next run.
  server=$pid
  trap 'kill -TERM "$server" 2>/dev/null' EXIT
  for _ in $(seq 1 240); do
    curl -sf "127.0.0.1:$port/readyz" >/dev/null && break
    sleep 0.5
  done
  if [ "$n" -gt 0 ]; then
    target/release/sluice-bench --target-http "127.0.0.1:$port" \
      --target-tcp "127.0.0.1:$((port + 1))" --pid "$pid" \
      --database-url "$url" --modes "${MODE:-http}" --events "$n" --connections 2 \
      ${items:+--items "$items"} >"$dir/bench" 2>&1 || { cat "$dir/bench" >&2; exit 1; }
  fi
  kill -TERM "$pid"
  wait "$pid" || true
  if [ "$n" -gt 0 ] && [ -n "${KEEP:-}" ]; then cp "$dir/callgrind.out" "$KEEP"; fi
  local total
  total=$(grep -o 'Collected : [0-9]*' "$dir/log" | awk '{print $3}')
  # The clock calibration of the metrics' timer (quanta) loops until its readings settle,
  # once per process, for a varying count of instructions: not the events' cost.
  # With MODE=tcp, sluice-bench reads /metrics every 10 ms to learn that its lines are
  # in: a count of renders set by the run's length under callgrind, not by the events.
  local inclusive calibration render
  inclusive=$(callgrind_annotate --inclusive=yes "$dir/callgrind.out" 2>/dev/null)
  calibration=$(awk '/quanta::Calibration::calibrate \[/ {gsub(",", "", $1); print $1; exit}' <<<"$inclusive")
  render=$(awk '/PrometheusHandle::render \[/ {gsub(",", "", $1); print $1; exit}' <<<"$inclusive")
  echo $((total - ${calibration:-0} - ${render:-0}))
}

idle=$(count 0)
loaded=$(count "$events")
echo "$(basename "$bin"): $(( (loaded - idle) / events )) instructions per event" \
  "(loaded $loaded, idle $idle, $events events${items:+ of $items items})"
