//! The control panel in a real browser: headless Chromium driven by Playwright
//! (tests/ui/panel.py) against the real server, with dead letters seeded through the
//! API and a schema fix in between, as an operator would do it.

use std::path::Path;
use std::process::Command;

use crate::helpers::{fixture_schemas, spawn_binary, Db, TestDb};

fn browser_installed(root: &Path) -> bool {
    let ok = Path::new("/usr/bin/chromium").exists()
        && Command::new(root.join(".ci/.venv/bin/python"))
            .args(["-c", "import playwright"])
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        crate::helpers::skip(
            "the browser test: chromium or Playwright is missing; bash .ci/run installs them",
        );
    }
    ok
}

#[tokio::test]
async fn the_panel_shows_streams_and_dead_letters_and_replays_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !browser_installed(root) {
        return;
    }
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let schemas = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_schemas()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, schemas.path().join(path.file_name().unwrap())).unwrap();
    }
    // A stream that treats personal fields, for its treatments beside the DDL.
    let member = serde_json::json!({"type": "object", "properties": {
        "email": {"type": "string", "x-sluice-privacy": "hash"},
        "phones": {"type": "array", "items": {"type": "object", "properties": {
            "number": {"type": "string", "x-sluice-privacy": "mask"}
        }}}
    }});
    std::fs::write(schemas.path().join("member.json"), member.to_string()).unwrap();
    // A folder of log lines in CSV, pulled from the panel.
    let folder = tempfile::tempdir().unwrap();
    std::fs::write(
        folder.path().join("logs.csv"),
        "message,timestamp,level\nstarted,2026-12-01T10:00:00Z,info\n\"disk, full\",2026-12-01T10:00:01Z,error\n",
    )
    .unwrap();
    // Two transforms in a chain, run as a flow from the panel: readings per sensor
    // (incremental), and a summary of that (a full refresh).
    let by_sensor = folder.path().join("reading_by_sensor.sql");
    std::fs::write(
        &by_sensor,
        "CREATE TABLE IF NOT EXISTS reading_by_sensor (sensor TEXT PRIMARY KEY, readings INTEGER NOT NULL);\n\
         INSERT INTO reading_by_sensor (sensor, readings)\n\
         SELECT sensor, COUNT(*) FROM reading WHERE _load_id BETWEEN :from_load AND :to_load GROUP BY sensor\n\
         ON CONFLICT (sensor) DO UPDATE SET readings = reading_by_sensor.readings + excluded.readings;\n",
    )
    .unwrap();
    let summary = folder.path().join("sensor_summary.sql");
    std::fs::write(
        &summary,
        "CREATE TABLE IF NOT EXISTS sensor_summary (sensors INTEGER, readings INTEGER);\n\
         DELETE FROM sensor_summary;\n\
         INSERT INTO sensor_summary SELECT COUNT(*), SUM(readings) FROM reading_by_sensor;\n",
    )
    .unwrap();
    let config = schemas.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.logs_csv]\npath = \"{}/*.csv\"\nstream = \"app_log\"\n\
             [transforms.reading_by_sensor]\nsql_file = {by_sensor:?}\nafter = [\"reading\"]\n\
             [transforms.sensor_summary]\nsql_file = {summary:?}\nafter = [\"reading_by_sensor\"]\nevery = \"1h\"\n",
            folder.path().display()
        ),
    )
    .unwrap();
    let env = [
        ("SLUICE_SCHEMAS_DIR", schemas.path().display().to_string()),
        ("SLUICE_CONFIG", config.display().to_string()),
    ];
    let sluice = spawn_binary(None, &db, &env);
    // One reading stored (a load), three out of range, and one line that is HTML,
    // not JSON.
    let body = "{\"seq\": 0, \"sensor\": \"a\", \"value\": 5}\n\
                {\"seq\": 1, \"sensor\": \"a\", \"value\": 5000}\n\
                {\"seq\": 2, \"sensor\": \"a\", \"value\": 6000}\n\
                {\"seq\": 3, \"sensor\": \"a\", \"value\": 7000}\n\
                <img src=x onerror=alert(1)>\n";
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/streams/reading/events", sluice.http))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    db.wait_for_dead_letters(4).await;
    // The fix (the range was too narrow), on disk: the replay reads it, no restart.
    let path = schemas.path().join("reading.json");
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"maximum\": 1000", "\"maximum\": 10000");
    std::fs::write(&path, fixed).unwrap();
    let screenshot = root.join("target/ui-panel.png");
    let base = format!("http://{}", sluice.http);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/.venv/bin/python"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ui/panel.py"))
            .arg(&base)
            .arg(&screenshot)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the browser test failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    db.wait_for_count("reading", 4).await;
    db.wait_for_count("app_log", 2).await;
    // The flow started from the panel counted every reading once.
    let summary = db
        .query("SELECT CAST(sensors AS TEXT), CAST(readings AS TEXT) FROM sensor_summary")
        .await;
    assert_eq!(
        summary,
        vec![vec![Some("1".to_owned()), Some("4".to_owned())]]
    );
    sluice.terminate().await;
}
