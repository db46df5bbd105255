//! Many Sluice instances on one database: start-up DDL and table evolution run under a
//! schema lock (a PostgreSQL advisory lock, MySQL's GET_LOCK, SQLite's own write lock),
//! so instances started at the same moment on an empty database all come up.

use crate::db_tests;
use crate::helpers::{shipped_schemas, spawn_binary, Binary, Db, TestDb};

async fn instances_started_at_once_on_an_empty_database_all_come_up(kind: Db) {
    let Some(db) = TestDb::create(kind).await else {
        return;
    };
    let env = [(
        "SLUICE_SCHEMAS_DIR",
        shipped_schemas().display().to_string(),
    )];
    // Each start blocks until its instance listens (or panics if it exits first).
    let instances: Vec<Binary> = std::thread::scope(|scope| {
        let starts: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| spawn_binary(None, &db, &env)))
            .collect();
        starts
            .into_iter()
            .map(|s| s.join().expect("every instance comes up"))
            .collect()
    });
    for table in ["order_placed", "cart_item_added", "stripe_event"] {
        assert_eq!(db.count(table).await, 0, "{table} exists once, empty");
    }
    for sluice in instances {
        let (status, logs) = sluice.terminate().await;
        assert!(status.success(), "{status}: {logs:#?}");
        assert!(
            !logs.iter().any(|l| l.contains("ERROR")),
            "no instance logged an error: {logs:#?}"
        );
    }
}

db_tests!(instances_started_at_once_on_an_empty_database_all_come_up);
