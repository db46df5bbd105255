#!/usr/bin/env bash
# A flow's cost against the same SQL run by hand (BENCHMARKS.md, "Flows").
# Usage: bash benches/flow-bench.sh [N]   (N orders and N payments, default 100000)
# Needs a release build (cargo build --release) and PostgreSQL on 127.0.0.1:5432.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
python3 - "$n" "$work" <<'PY'
import json, random, sys, uuid
n, out = int(sys.argv[1]), sys.argv[2]
random.seed(1)
markets = [("US", "CA", "USD"), ("DE", "BE", "EUR"), ("JP", "13", "JPY"), ("ET", "AA", "ETB")]
u = lambda: str(uuid.UUID(int=random.getrandbits(128), version=4))
with open(f"{out}/orders.ndjson", "w") as o, open(f"{out}/payments.ndjson", "w") as p:
    for i in range(n):
        country, region, cur = random.choice(markets)
        amount, day = round(random.uniform(5, 200), 2), 1 + i % 28
        o.write(json.dumps({"event_id": u(), "occurred_at": f"2026-11-{day:02}T10:00:00Z", "customer_id": 1 + i % 5000,
                            "order_id": f"BK-{i}", "country": country, "region": region, "currency": cur,
                            "total_amount": amount, "item_count": 1,
                            "items": [{"isbn": "9780306406157", "title": "x", "qty": 1, "unit_price": amount}]}) + "\n")
        p.write(json.dumps({"event_id": u(), "occurred_at": f"2026-11-{day:02}T10:05:00Z", "payment_id": u(),
                            "order_id": f"BK-{i}", "status": "captured", "amount": amount, "currency": cur,
                            "method": "card"}) + "\n")
PY
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS flowbench" -c "CREATE DATABASE flowbench"
cat > "$work/sluice.toml" <<TOML
[database]
url = "postgres://postgres@127.0.0.1:5432/flowbench"
[transforms.daily_revenue]
sql_file = "$PWD/transforms/daily_revenue.sql"
after = ["order_placed", "payment_processed"]
TOML
SLUICE_CONFIG="$work/sluice.toml" SLUICE_HTTP_LISTEN=127.0.0.1:18080 SLUICE_TCP_LISTEN= \
  SLUICE_PRIVACY_KEY_FILE=tests/fixtures/privacy.key target/release/sluice >"$work/log" 2>&1 &
pid=$!
sleep 2
(cd "$work" && split -l 5000 orders.ndjson o_ && split -l 5000 payments.ndjson p_)
for f in "$work"/o_* "$work"/p_*; do
  stream=order_placed; [[ $(basename "$f") == p_* ]] && stream=payment_processed
  curl -sf -o /dev/null -H 'Content-Type: application/x-ndjson' --data-binary @"$f" \
    "http://127.0.0.1:18080/v1/streams/$stream/events"
done
# Both sides on warm tables: the first scan after a bulk load sets hint bits.
psql -q -h 127.0.0.1 -U postgres -d flowbench -c "SELECT count(*) FROM order_placed" -c "SELECT count(*) FROM payment_processed" >/dev/null
id=$(curl -sf -H 'Content-Type: application/json' -d '{"targets": ["daily_revenue"]}' \
  http://127.0.0.1:18080/v1/jobs/flow | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 1 600); do
  job=$(curl -sf "http://127.0.0.1:18080/v1/jobs/$id")
  state=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["state"])' "$job")
  [ "$state" != running ] && [ "$state" != ready ] && break
  sleep 0.2
done
python3 - "$job" <<'PY'
import json, sys
from datetime import datetime
t = json.loads(sys.argv[1])["result"]["tasks"][0]
at = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
print(f"flow task {t['name']}: {t['state']}, loads {t['range']}, "
      f"{(at(t['finished_at']) - at(t['started_at'])).total_seconds() * 1000:.0f} ms")
PY
to=$(psql -tA -h 127.0.0.1 -U postgres -d flowbench -c "SELECT load_id FROM sluice_pointers WHERE source = 'daily_revenue'")
sed -e "s/:from_load/1/g" -e "s/:to_load/$to/g" transforms/daily_revenue.sql >"$work/raw.sql"
for _ in 1 2 3; do
  /usr/bin/time -f "by hand in psql: %e s (psql start-up included)" psql -q -h 127.0.0.1 -U postgres -d flowbench \
    -c "BEGIN" -c "SET LOCAL TIME ZONE 'UTC'" -c "DROP TABLE daily_revenue" -f "$work/raw.sql" -c "ROLLBACK"
done
