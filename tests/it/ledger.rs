//! The load ledger and the watermark: every committed batch is a load in
//! `sluice_loads`, in the same transaction as its rows (which carry its id in
//! `_load_id`); the watermark never passes a load that may still commit, and a load
//! whose writer is gone holds it only for `[ledger] in_flight_timeout`.
//!
//! The watermark is a bound, not a stream's last load: on MySQL and SQLite an idle
//! stream's is the last load of the database (one stream here), on PostgreSQL the
//! newest transaction id that has ended (plus an offset), at or above it.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{readings_ndjson, spawn_app, Db, TestApp};

/// The stream's watermark from the API.
async fn watermark_api(app: &TestApp, stream: &str) -> i64 {
    let (status, body) = app
        .get_json(&format!("/v1/streams/{stream}/watermark"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["watermark"].as_i64().unwrap()
}

/// The stream's watermark from the API and from `sluice_watermarks`, which agree
/// (while no load commits or expires in between; on PostgreSQL the view, read after,
/// is at or above the API's, as other transactions end meanwhile).
async fn watermark(app: &TestApp, stream: &str) -> i64 {
    let api = watermark_api(app, stream).await;
    let sql: i64 = app
        .db
        .query(&format!(
            "SELECT {} FROM sluice_watermarks WHERE stream = '{stream}'",
            app.db.text("watermark")
        ))
        .await[0][0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    match app.db.kind {
        Db::Postgres => assert!(sql >= api, "view {sql}, API {api}"),
        _ => assert_eq!(sql, api),
    }
    api
}

/// Whether watermark `w` of an idle stream has taken load `last`, its last (see the
/// module's note: on PostgreSQL at or above it, elsewhere that load).
fn taken(kind: Db, w: i64, last: i64) -> bool {
    match kind {
        Db::Postgres => w >= last,
        _ => w == last,
    }
}

/// Asserts that `app`'s watermark of `reading` is held below load `stuck`, which is in
/// flight, and not below a load committed before it.
async fn assert_held_below(app: &TestApp, stuck: i64) {
    let w = watermark(app, "reading").await;
    let below = ids(
        app,
        "MAX(load_id)",
        &format!("FROM sluice_loads WHERE stream = 'reading' AND load_id < {stuck}"),
    )
    .await;
    let kind = app.db.kind;
    assert!(
        w < stuck && w >= below[0],
        "{kind:?}: watermark {w}, load in flight {stuck}, the last load below it {}",
        below[0]
    );
}

/// The integers of `expr` in `rest` (`FROM … ORDER BY …`).
async fn ids(app: &TestApp, expr: &str, rest: &str) -> Vec<i64> {
    app.db
        .query(&format!("SELECT {} {rest}", app.db.text(expr)))
        .await
        .into_iter()
        .map(|r| r[0].as_deref().unwrap().parse().unwrap())
        .collect()
}

async fn every_committed_batch_is_a_load_with_its_rows(kind: Db) {
    let Some(app) = spawn_app(kind, crate::helpers::fixture_schemas(), |_| {}).await else {
        return;
    };
    for (first, n) in [(0, 10), (10, 500), (510, 1)] {
        let r = app
            .post(
                "reading",
                "",
                "application/x-ndjson",
                readings_ndjson(first..first + n),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let rows = app.db.count("reading").await;
    assert_eq!(rows, 511);
    let loads = app
        .db
        .query(&format!(
            "SELECT {}, {}, stream, table_name, source, instance, schema_sha256 FROM sluice_loads ORDER BY load_id",
            app.db.text("load_id"),
            app.db.text(&app.db.quote("rows"))
        ))
        .await;
    let total: i64 = loads
        .iter()
        .map(|l| l[1].as_deref().unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(
        total, rows,
        "{kind:?}: the ledger's rows sum to the table's: {loads:?}"
    );
    let schema = std::fs::read(crate::helpers::fixture_schemas().join("reading.json")).unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&schema))
    };
    for load in &loads {
        assert_eq!(load[2].as_deref(), Some("reading"));
        assert_eq!(load[3].as_deref(), Some("reading"));
        assert_eq!(load[4].as_deref(), Some("http"));
        assert!(
            load[5].as_deref().is_some_and(|i| i.contains(':')),
            "{load:?}"
        );
        assert_eq!(load[6].as_deref(), Some(digest.as_str()));
    }
    // Every row carries a load of the ledger.
    let orphans = ids(
        &app,
        "COUNT(*)",
        "FROM reading WHERE _load_id IS NULL OR _load_id NOT IN (SELECT load_id FROM sluice_loads)",
    )
    .await;
    assert_eq!(orphans, [0], "{kind:?}");
    // `_load_id` is indexed: BRIN on PostgreSQL (rows are appended load by load, and a
    // B-tree there cost about 15 % of the server's CPU per row), a B-tree elsewhere.
    let index = app
        .db
        .query(match kind {
            Db::Postgres => "SELECT indexdef FROM pg_indexes WHERE tablename = 'reading' AND indexdef LIKE '%(_load_id)%'",
            Db::Mysql => "SELECT index_type FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = 'reading' AND column_name = '_load_id' AND seq_in_index = 1",
            Db::Sqlite => "SELECT name FROM pragma_index_list('reading') AS l WHERE EXISTS (SELECT 1 FROM pragma_index_info(l.name) WHERE name = '_load_id')",
        })
        .await;
    assert_eq!(index.len(), 1, "{kind:?}: one index on _load_id: {index:?}");
    if kind == Db::Postgres {
        let def = index[0][0].as_deref().unwrap_or_default();
        assert!(def.contains("USING brin"), "{def}");
    }
    // The API lists them oldest first, a page at a time.
    let (status, page) = app.get_json("/v1/streams/reading/loads?limit=2").await;
    assert_eq!(status, 200, "{page}");
    let first_page = page["loads"].as_array().unwrap().clone();
    assert_eq!(first_page.len(), 2.min(loads.len()), "{page}");
    let after = first_page.last().unwrap()["load_id"].as_i64().unwrap();
    let (_, rest) = app
        .get_json(&format!(
            "/v1/streams/reading/loads?after={after}&limit=1000"
        ))
        .await;
    let listed: Vec<Value> = first_page
        .into_iter()
        .chain(rest["loads"].as_array().unwrap().iter().cloned())
        .collect();
    assert_eq!(listed.len(), loads.len());
    let listed_rows: i64 = listed.iter().map(|l| l["rows"].as_i64().unwrap()).sum();
    assert_eq!(listed_rows, rows);
    assert_eq!(listed[0]["source"], "http");
    assert!(
        listed[0]["committed_at"].as_str().unwrap().ends_with('Z'),
        "{}",
        listed[0]
    );
    let (status, _) = app.get_json("/v1/streams/reading/loads?limit=0").await;
    assert_eq!(status, 400);
    // The most recent ones, newest first.
    let (status, newest) = app
        .get_json("/v1/streams/reading/loads?before=9223372036854775807&limit=2")
        .await;
    assert_eq!(status, 200, "{newest}");
    let newest: Vec<i64> = newest["loads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["load_id"].as_i64().unwrap())
        .collect();
    let mut expected: Vec<i64> = listed
        .iter()
        .map(|l| l["load_id"].as_i64().unwrap())
        .collect();
    expected.reverse();
    expected.truncate(2);
    assert_eq!(newest, expected);
    let (status, _) = app
        .get_json("/v1/streams/reading/loads?after=1&before=5")
        .await;
    assert_eq!(status, 400);

    // Per day: the rows and loads committed, and the dead letters received.
    let r = app
        .post(
            "reading",
            "",
            "application/json",
            r#"{"seq": 9999, "sensor": "a", "value": 99999}"#,
        )
        .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["dead_lettered"], 1, "{answer}");
    let (status, daily) = app.get_json("/v1/streams/reading/daily").await;
    assert_eq!(status, 200, "{daily}");
    let days = daily["days"].as_array().unwrap();
    let sum = |key: &str| days.iter().map(|d| d[key].as_i64().unwrap()).sum::<i64>();
    assert_eq!(
        (sum("rows"), sum("loads"), sum("dead_letters")),
        (rows, loads.len() as i64, 1),
        "{kind:?}: {daily}"
    );
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert!(
        days.iter().any(|d| d["day"] == today.as_str()),
        "{kind:?}: {daily}"
    );
    let view = app
        .db
        .query(&format!(
            "SELECT {}, {}, {} FROM sluice_daily WHERE stream = 'reading'",
            app.db.text(&format!("SUM({})", app.db.quote("rows"))),
            app.db.text("SUM(loads)"),
            app.db.text("SUM(dead_letters)")
        ))
        .await;
    assert_eq!(
        view[0],
        [
            Some(rows.to_string()),
            Some(loads.len().to_string()),
            Some("1".to_string())
        ],
        "{kind:?}"
    );
    // Idle: the watermark is the last load.
    let load_ids = ids(&app, "load_id", "FROM sluice_loads ORDER BY load_id").await;
    assert!(load_ids.windows(2).all(|w| w[0] < w[1]));
    let (w, last) = (watermark(&app, "reading").await, *load_ids.last().unwrap());
    assert!(
        taken(kind, w, last),
        "{kind:?}: watermark {w}, last load {last}"
    );
}

/// A load in flight that does not commit (its writer stuck, or killed) holds the
/// watermark below it while later loads commit; once older than
/// `in_flight_timeout` it is abandoned (on MySQL its registration deleted, on
/// PostgreSQL its session ended) and the watermark moves on.
async fn a_load_in_flight_holds_the_watermark_until_it_expires(kind: Db) {
    if kind == Db::Sqlite {
        return; // SQLite takes a load's id as it commits: nothing is ever in flight.
    }
    let Some(app) = spawn_app(kind, crate::helpers::fixture_schemas(), |c| {
        c.ledger.in_flight_timeout = Duration::from_secs(5);
    })
    .await
    else {
        return;
    };
    let post = |first: i64| {
        app.post(
            "reading",
            "",
            "application/x-ndjson",
            readings_ndjson(first..first + 5),
        )
    };
    assert_eq!(post(0).await.status(), 200);
    let before = watermark(&app, "reading").await;
    // A writer of another instance begins a load, as the ledger's protocol does, and
    // then hangs.
    let mut _held = None;
    let stuck = match kind {
        Db::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
            sqlx::query("BEGIN").execute(&mut c).await.unwrap();
            sqlx::query(&format!(
                "SELECT pg_advisory_xact_lock_shared({}, hashtext('reading'))",
                sluice::sink::ledger::LOCK_CLASS
            ))
            .execute(&mut c)
            .await
            .unwrap();
            let stuck: i64 = sqlx::query_scalar(
                "SELECT CAST(CAST(pg_current_xact_id() AS text) AS bigint) + last_id FROM sluice_load_seq WHERE id = 1",
            )
            .fetch_one(&mut c)
            .await
            .unwrap();
            _held = Some(c);
            stuck
        }
        _ => {
            app.db
                .execute("UPDATE sluice_load_seq SET last_id = last_id + 1 WHERE id = 1")
                .await;
            let stuck = ids(&app, "last_id", "FROM sluice_load_seq WHERE id = 1").await[0];
            app.db
                .execute(&format!(
                    "INSERT INTO sluice_loads_in_flight (load_id, stream, instance, registered_at) VALUES ({stuck}, 'reading', 'gone:1', NOW(6))"
                ))
                .await;
            stuck
        }
    };
    assert_eq!(post(5).await.status(), 200);
    assert_eq!(post(10).await.status(), 200);
    let committed = ids(&app, "load_id", "FROM sluice_loads ORDER BY load_id").await;
    assert!(*committed.last().unwrap() > stuck, "{committed:?}");
    assert_held_below(&app, stuck).await;
    assert!(stuck > before);
    // After in_flight_timeout (5 s; the sweep runs every 1.25 s) it is abandoned.
    crate::helpers::eventually(20, "the stuck load expires", || async {
        let w = watermark_api(&app, "reading").await;
        let last = *committed.last().unwrap();
        if taken(kind, w, last) {
            Ok(())
        } else {
            Err(format!("watermark {w}, last load {last}"))
        }
    })
    .await;
    let left: Value = app.get_json("/v1/streams/reading").await.1;
    assert_eq!(left["stream"], "reading");
}

/// The reader the watermark is for: 8 producers post for 20 s to two instances on one database
/// (one on SQLite), two writer connections each, while a reader polls the watermark
/// every 50 ms and reads `_load_id` in `(last, W]`. At the end it has seen every row
/// exactly once, and the ledger's rows sum to the table's count. (A watermark that were
/// simply the highest committed load would let it skip the rows of a lower load that
/// commits later: a trigger holds every load with a row whose `seq` ends in 4,999 of
/// 5,000 for 0.2 s, mid-transaction, while the other writers commit.)
async fn a_reader_following_the_watermark_sees_every_row_exactly_once(kind: Db) {
    let Some(first) = spawn_app(kind, crate::helpers::fixture_schemas(), |_| {}).await else {
        return;
    };
    let second = match kind {
        Db::Sqlite => None,
        _ => Some(
            crate::helpers::spawn_app_on(
                first.db.via(first.db.url.clone()),
                crate::helpers::fixture_schemas(),
                |_| {},
            )
            .await,
        ),
    };
    let urls: Vec<String> = std::iter::once(&first)
        .chain(second.as_ref())
        .map(|a| a.url("/v1/streams/reading/events"))
        .collect();
    match kind {
        Db::Postgres => {
            first.db.execute("CREATE FUNCTION reading_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.2); RETURN NEW; END $$").await;
            first.db.execute("CREATE TRIGGER reading_slow BEFORE INSERT ON reading FOR EACH ROW WHEN (NEW.seq % 5000 = 4999) EXECUTE FUNCTION reading_slow()").await;
        }
        Db::Mysql => {
            first.db.execute("CREATE TRIGGER reading_slow BEFORE INSERT ON reading FOR EACH ROW BEGIN IF NEW.seq % 5000 = 4999 THEN DO SLEEP(0.2); END IF; END").await;
        }
        Db::Sqlite => {} // one writer at a time: no load commits past another
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut producers = Vec::new();
    for p in 0..8i64 {
        let url = urls[p as usize % urls.len()].clone();
        producers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut sent = Vec::new();
            // Each producer's own range of `seq`: a producer of large requests can send
            // more than a million rows in the 20 s.
            let mut next = p * 1_000_000_000;
            while tokio::time::Instant::now() < deadline {
                // Half the producers send small requests, half large ones: loads of
                // very different lengths overlap, and commit out of id order.
                let n = if p % 2 == 0 {
                    1 + (next % 37)
                } else {
                    500 + (next % 1500)
                };
                let r = client
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(readings_ndjson(next..next + n))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                sent.extend(next..next + n);
                next += n;
            }
            sent
        }));
    }
    let db = first.db.via(first.db.url.clone());
    let read = |last: i64| {
        let db = db.via(db.url.clone());
        async move {
            let w: i64 = db
                .query(&format!(
                    "SELECT {} FROM sluice_watermarks WHERE stream = 'reading'",
                    db.text("watermark")
                ))
                .await[0][0]
                .as_deref()
                .unwrap()
                .parse()
                .unwrap();
            let rows: Vec<i64> = db
                .query(&format!(
                    "SELECT {} FROM reading WHERE _load_id > {last} AND _load_id <= {w}",
                    db.text("seq")
                ))
                .await
                .into_iter()
                .map(|r| r[0].as_deref().unwrap().parse().unwrap())
                .collect();
            (w, rows)
        }
    };
    let mut seen = std::collections::HashSet::new();
    let mut last = 0;
    let mut reads = 0;
    while producers.iter().any(|p| !p.is_finished()) {
        let (w, rows) = read(last).await;
        assert!(w >= last, "the watermark never goes back");
        for seq in rows {
            assert!(seen.insert(seq), "{kind:?}: row {seq} read twice");
        }
        last = w;
        reads += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sent = Vec::new();
    for p in producers {
        sent.extend(p.await.unwrap());
    }
    // Every request was answered after its commit: the last read takes the rest.
    let (_, rows) = read(last).await;
    for seq in rows {
        assert!(seen.insert(seq), "{kind:?}: row {seq} read twice");
    }
    assert!(reads > 20, "{reads} reads");
    assert_eq!(seen.len(), sent.len(), "{kind:?}: every row read once");
    assert!(sent.iter().all(|s| seen.contains(s)));
    let count = db.count("reading").await;
    let ledger = ids(
        &first,
        &format!("SUM({})", first.db.quote("rows")),
        "FROM sluice_loads WHERE stream = 'reading'",
    )
    .await;
    assert_eq!(ledger, [count], "{kind:?}");
    assert_eq!(count as usize, sent.len());
}

/// `[ledger] retention` deletes ledger rows older than it, in the background; the
/// stream's rows and its watermark stay.
async fn ledger_rows_older_than_the_retention_are_purged_and_data_rows_stay(kind: Db) {
    let Some(app) = spawn_app(kind, crate::helpers::fixture_schemas(), |c| {
        c.ledger.retention = Some(Duration::from_secs(1));
    })
    .await
    else {
        return;
    };
    for first in [0, 10, 20] {
        let r = app
            .post(
                "reading",
                "",
                "application/x-ndjson",
                readings_ndjson(first..first + 10),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let last = *ids(&app, "load_id", "FROM sluice_loads ORDER BY load_id")
        .await
        .last()
        .expect("the posts made loads");
    crate::helpers::eventually(20, "the ledger rows are purged", || async {
        match ids(&app, "COUNT(*)", "FROM sluice_loads").await[..] {
            [0] => Ok(()),
            ref n => Err(format!("{n:?} ledger rows left")),
        }
    })
    .await;
    assert_eq!(
        app.db.count("reading").await,
        30,
        "{kind:?}: data rows stay"
    );
    // With no ledger row left at or below it, the watermark is its bound: at or above
    // the last load (on PostgreSQL it then moves with the database's transactions).
    let w = watermark(&app, "reading").await;
    assert!(w >= last, "{kind:?}: watermark {w}, last load {last}");
}

/// A session of the test's holding `reading` locked, so that a writer's transaction
/// stays open (as one held up by the network or by a long lock would) until
/// [`TableLock::release`].
enum TableLock {
    Postgres(sqlx::PgConnection),
    Mysql(sqlx::MySqlConnection),
}

impl TableLock {
    async fn take(db: &crate::helpers::TestDb) -> TableLock {
        use sqlx::Connection;
        match db.kind {
            Db::Postgres => {
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                sqlx::query("BEGIN").execute(&mut c).await.unwrap();
                sqlx::query("LOCK TABLE reading IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                TableLock::Postgres(c)
            }
            Db::Mysql => {
                let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
                sqlx::query("LOCK TABLES reading WRITE")
                    .execute(&mut c)
                    .await
                    .unwrap();
                TableLock::Mysql(c)
            }
            Db::Sqlite => unreachable!("SQLite has no loads in flight"),
        }
    }

    async fn release(self) {
        match self {
            TableLock::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
            }
            TableLock::Mysql(mut c) => {
                sqlx::query("UNLOCK TABLES").execute(&mut c).await.unwrap();
            }
        }
    }
}

/// The load process `instance` has begun and not committed, once there is one: on
/// MySQL its registration; on PostgreSQL the transaction of a session of that
/// instance (`application_name` `sluice host:pid`) holding a stream's advisory lock.
async fn load_in_flight(app: &TestApp, instance: &str) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let sql = match app.db.kind {
        // The session's 32-bit `backend_xid` widened to the id of the snapshot's epoch
        // nearest to it (the load's id may be at or above the snapshot's `xmax`).
        Db::Postgres => format!(
            "SELECT CAST(MIN(n.next + MOD(CAST(CAST(a.backend_xid AS text) AS bigint) - MOD(n.next, 4294967296) + 6442450944, 4294967296) - 2147483648) + (SELECT last_id FROM sluice_load_seq WHERE id = 1) AS text) FROM pg_stat_activity a, (SELECT CAST(CAST(pg_snapshot_xmax(pg_current_snapshot()) AS text) AS bigint) AS next) n WHERE a.application_name LIKE 'sluice %:{instance}' AND a.backend_xid IS NOT NULL AND a.pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = {} AND granted)",
            sluice::sink::ledger::LOCK_CLASS
        ),
        _ => format!(
            "SELECT {} FROM sluice_loads_in_flight WHERE instance LIKE '%:{instance}'",
            app.db.text("load_id")
        ),
    };
    loop {
        let rows = app.db.query(&sql).await;
        if let Some(id) = rows.first().and_then(|r| r[0].as_deref()) {
            return id.parse().unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instance {instance} registered no load"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Through the real binary: a writer whose transaction is held open holds the watermark
/// below its load until it commits; held open past `in_flight_timeout`, its load
/// expires, cannot commit (on MySQL its claim is refused, on PostgreSQL its session
/// is ended), and its rows are written once as a new load; a writer killed (`kill -9`)
/// mid-load, its transaction held open, holds it for about `[ledger]
/// in_flight_timeout`, no less and not much more, and then another instance goes on
/// committing; the killed writer's rows are not in the table and every row there
/// belongs to a load of the ledger.
async fn a_writer_held_open_or_killed_mid_load_holds_the_watermark_for_a_bounded_time(kind: Db) {
    if kind == Db::Sqlite {
        return; // SQLite takes a load's id as it commits: nothing is ever in flight.
    }
    let Some(db) = crate::helpers::TestDb::create(kind).await else {
        return;
    };
    let timeout = Duration::from_secs(4);
    let mut writer = crate::helpers::spawn_binary(
        None,
        &db,
        &[("SLUICE_LEDGER_IN_FLIGHT_TIMEOUT", "4s".into())],
    );
    let pid = writer.child.id().to_string();
    let other = crate::helpers::spawn_app_on(
        db.via(db.url.clone()),
        crate::helpers::fixture_schemas(),
        |c| c.ledger.in_flight_timeout = timeout,
    )
    .await;
    let post = |base: String, first: i64| async move {
        reqwest::Client::new()
            .post(format!("{base}/v1/streams/reading/events"))
            .header("content-type", "application/x-ndjson")
            .body(readings_ndjson(first..first + 5))
            .send()
            .await
    };
    let writer_url = format!("http://{}", writer.http);
    let other_url = format!("http://{}", other.addr);
    assert_eq!(post(writer_url.clone(), 0).await.unwrap().status(), 200);

    // Held open, then committed: the watermark waits for it, then takes it.
    let lock = TableLock::take(&db).await;
    let held = tokio::spawn(post(writer_url.clone(), 5));
    let stuck = load_in_flight(&other, &pid).await;
    assert_held_below(&other, stuck).await;
    lock.release().await;
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    let w = watermark(&other, "reading").await;
    assert!(
        taken(kind, w, stuck),
        "{kind:?}: watermark {w}, load {stuck}"
    );

    // From here a trigger holds a writer's transaction mid-load, as a slow disk or a
    // long lock would, while the other instance commits: rows with `seq` 20 (once) and
    // 10 (each time) sleep 8 s.
    match kind {
        Db::Postgres => {
            db.execute("CREATE SEQUENCE reading_slow_20").await;
            db.execute("CREATE FUNCTION reading_slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.seq = 10 THEN PERFORM pg_sleep(8); ELSIF NEW.seq = 20 THEN IF nextval('reading_slow_20') = 1 THEN PERFORM pg_sleep(8); END IF; END IF; RETURN NEW; END $$").await;
            db.execute("CREATE TRIGGER reading_slow BEFORE INSERT ON reading FOR EACH ROW EXECUTE FUNCTION reading_slow()").await;
        }
        _ => {
            db.execute("CREATE SEQUENCE reading_slow_20").await;
            db.execute("CREATE TRIGGER reading_slow BEFORE INSERT ON reading FOR EACH ROW BEGIN IF NEW.seq = 10 THEN DO SLEEP(8); ELSEIF NEW.seq = 20 THEN IF NEXTVAL(reading_slow_20) = 1 THEN DO SLEEP(8); END IF; END IF; END").await;
        }
    }
    let last_load = || async {
        *ids(&other, "load_id", "FROM sluice_loads ORDER BY load_id")
            .await
            .last()
            .unwrap()
    };

    // Held open past in_flight_timeout: the load is abandoned (MySQL: its registration
    // deleted; PostgreSQL: its session ended), the watermark passes it, and the writer
    // can no longer commit that load; it writes the rows again as a new load, once.
    let late = tokio::spawn(post(writer_url.clone(), 20));
    let expired = load_in_flight(&other, &pid).await;
    assert_eq!(post(other_url.clone(), 30).await.unwrap().status(), 200);
    let later = last_load().await;
    assert!(later > expired, "{kind:?}: a later load committed");
    assert_held_below(&other, expired).await;
    crate::helpers::eventually(20, "the held load expires", || async {
        match watermark_api(&other, "reading").await {
            w if w >= later => Ok(()),
            w => Err(format!(
                "watermark {w}, held load {expired}, later load {later}"
            )),
        }
    })
    .await;
    assert_eq!(late.await.unwrap().unwrap().status(), 200);
    let late_loads = ids(
        &other,
        "_load_id",
        "FROM reading WHERE seq >= 20 AND seq < 25 GROUP BY _load_id",
    )
    .await;
    assert_eq!(late_loads.len(), 1, "{kind:?}: {late_loads:?}");
    assert!(
        late_loads[0] > expired,
        "{kind:?}: written again as a new load"
    );
    assert_eq!(
        ids(
            &other,
            "COUNT(*)",
            &format!("FROM sluice_loads WHERE load_id = {expired}")
        )
        .await,
        [0],
        "{kind:?}: the expired load never committed"
    );

    // Killed mid-load, its transaction still open (on PostgreSQL a session busy in a
    // statement does not notice its client is gone): held for in_flight_timeout while
    // the other instance commits, then passed.
    let lost = tokio::spawn(post(writer_url.clone(), 10));
    let stuck = load_in_flight(&other, &pid).await;
    let registered = std::time::Instant::now();
    writer.child.kill().unwrap();
    writer.child.wait().unwrap();
    assert!(lost.await.unwrap().is_err(), "the killed writer answered");
    assert_eq!(post(other_url.clone(), 15).await.unwrap().status(), 200);
    let last = last_load().await;
    assert!(last > stuck, "{kind:?}: a later load committed");
    assert_held_below(&other, stuck).await;
    assert!(
        registered.elapsed() < timeout - Duration::from_secs(1),
        "{kind:?}: too slow to see the watermark held"
    );
    crate::helpers::eventually(20, "the killed writer's load expires", || async {
        match watermark_api(&other, "reading").await {
            w if taken(kind, w, last) => Ok(()),
            w => Err(format!(
                "watermark {w}, killed writer's load {stuck}, last load {last}"
            )),
        }
    })
    .await;
    let held_for = registered.elapsed();
    assert!(
        held_for >= timeout - Duration::from_millis(500) && held_for < timeout * 3,
        "{kind:?}: the watermark was held {held_for:?} with in_flight_timeout {timeout:?}"
    );
    // The killed writer's five rows never committed; every row is in a load.
    assert_eq!(db.count("reading").await, 25, "{kind:?}");
    let orphans = ids(
        &other,
        "COUNT(*)",
        "FROM reading WHERE _load_id IS NULL OR _load_id NOT IN (SELECT load_id FROM sluice_loads)",
    )
    .await;
    assert_eq!(orphans, [0], "{kind:?}");
}

/// The literals the ledger writes its text in (stream, instance, a pulled source's
/// pointer) read back as the same text from the database, under each setting that
/// changes how a quoted string is read.
async fn text_literals_read_back_the_same_under_every_quoting_setting(kind: Db) {
    use sqlx::{Connection, Row};
    let Some(db) = crate::helpers::TestDb::create(kind).await else {
        return;
    };
    let dialect = match kind {
        Db::Postgres => sluice::sink::dialect::Dialect::Postgres,
        Db::Mysql => sluice::sink::dialect::Dialect::Mysql,
        Db::Sqlite => sluice::sink::dialect::Dialect::Sqlite,
    };
    let texts = [
        "order_placed",
        "o'rder",
        r"back\slash",
        r"\'",
        r#"{"id": "a'b\"c\\", "at": "2026-12-06"}"#,
        "$$ E'x' $q$",
        "ünïcödé ✓ 漢字",
        "",
    ];
    let settings: &[&str] = match kind {
        Db::Postgres => &[
            "SET standard_conforming_strings = on",
            "SET standard_conforming_strings = off",
        ],
        Db::Mysql => &[
            "SET SESSION sql_mode = ''",
            "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES,ANSI_QUOTES'",
        ],
        Db::Sqlite => &["SELECT 1"],
    };
    let url = match kind {
        Db::Sqlite => format!("{}?mode=rwc", db.url),
        _ => db.url.clone(),
    };
    for setting in settings {
        for text in texts {
            let select = format!("SELECT {}", dialect.text_literal(text));
            // A session of its own for each text, its setting first.
            macro_rules! read_back {
                ($conn:ty) => {{
                    let mut c = <$conn>::connect(&url).await.unwrap();
                    sqlx::query(setting).execute(&mut c).await.unwrap();
                    let row = sqlx::query(&select).fetch_one(&mut c).await;
                    row.unwrap_or_else(|e| panic!("{setting}; {select}: {e}"))
                        .get(0)
                }};
            }
            let read: String = match kind {
                Db::Postgres => read_back!(sqlx::PgConnection),
                Db::Mysql => read_back!(sqlx::MySqlConnection),
                Db::Sqlite => read_back!(sqlx::SqliteConnection),
            };
            assert_eq!(read, text, "{kind:?}, {setting}: {select}");
        }
    }
}

crate::db_tests!(
    text_literals_read_back_the_same_under_every_quoting_setting,
    a_writer_held_open_or_killed_mid_load_holds_the_watermark_for_a_bounded_time,
    ledger_rows_older_than_the_retention_are_purged_and_data_rows_stay,
    a_reader_following_the_watermark_sees_every_row_exactly_once,
    every_committed_batch_is_a_load_with_its_rows,
    a_load_in_flight_holds_the_watermark_until_it_expires,
);
