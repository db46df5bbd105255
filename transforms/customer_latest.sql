-- The latest state of each customer: how many orders, the last one, where. A full
-- refresh (no :from_load/:to_load): rebuilt whole at each run, in one transaction, so
-- a reader sees the old table or the new one. Runs on SQLite, PostgreSQL and MariaDB.
CREATE TABLE IF NOT EXISTS customer_latest (
  customer_id bigint NOT NULL PRIMARY KEY,
  orders bigint NOT NULL,
  last_order_id varchar(64) NOT NULL,
  last_order_at timestamp NOT NULL,
  country varchar(2) NOT NULL
);

DELETE FROM customer_latest;

INSERT INTO customer_latest (customer_id, orders, last_order_id, last_order_at, country)
SELECT customer_id, orders, order_id, occurred_at, country
FROM (
  SELECT customer_id, order_id, occurred_at, country,
         COUNT(*) OVER (PARTITION BY customer_id) AS orders,
         ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY occurred_at DESC, order_id DESC) AS n
  FROM order_placed
) ranked
WHERE n = 1;
