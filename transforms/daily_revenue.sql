-- Revenue per market and currency per day: the bookshop's orders joined to their
-- captured payments. Incremental: each run recomputes only the days that the loads
-- :from_load to :to_load touch (a payment in them, or a payment whose order is in
-- them), from every row up to :to_load, so a payment that arrives before its order
-- is counted when the order comes. Runs on SQLite, PostgreSQL and MariaDB; dates are
-- UTC (Sluice runs transforms in UTC).
CREATE TABLE IF NOT EXISTS daily_revenue (
  day date NOT NULL,
  country varchar(2) NOT NULL,
  currency varchar(3) NOT NULL,
  payments bigint NOT NULL,
  revenue numeric(14, 2) NOT NULL,
  PRIMARY KEY (day, country, currency)
);

DELETE FROM daily_revenue WHERE day IN (
  SELECT date(p.occurred_at) FROM payment_processed p
  WHERE p._load_id BETWEEN :from_load AND :to_load
  UNION
  SELECT date(p.occurred_at) FROM payment_processed p
  JOIN order_placed o ON o.order_id = p.order_id
  WHERE o._load_id BETWEEN :from_load AND :to_load
);

INSERT INTO daily_revenue (day, country, currency, payments, revenue)
SELECT date(p.occurred_at), o.country, p.currency, COUNT(*), ROUND(SUM(p.amount), 2)
FROM payment_processed p
JOIN order_placed o ON o.order_id = p.order_id
WHERE p.status = 'captured'
  AND p._load_id <= :to_load
  AND o._load_id <= :to_load
  AND date(p.occurred_at) IN (
    SELECT date(p2.occurred_at) FROM payment_processed p2
    WHERE p2._load_id BETWEEN :from_load AND :to_load
    UNION
    SELECT date(p2.occurred_at) FROM payment_processed p2
    JOIN order_placed o2 ON o2.order_id = p2.order_id
    WHERE o2._load_id BETWEEN :from_load AND :to_load
  )
GROUP BY date(p.occurred_at), o.country, p.currency;
