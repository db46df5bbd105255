//! The HTTP API's shape: the OpenAPI document kept in the repo is the one the code
//! serves, and `admin.listen` moves the admin surface off the ingest port.

use crate::db_tests;
use crate::helpers::{fixture_schemas, spawn_app, Db};

#[tokio::test]
async fn the_openapi_document_in_the_repo_is_the_one_served() {
    let app = spawn_app(Db::Sqlite, fixture_schemas(), |_| {})
        .await
        .unwrap();
    let (status, served) = app.get_json("/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(served["openapi"], "3.1.0");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let kept: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        served == kept,
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json`"
    );
    for path in [
        "/v1/streams/{stream}/events",
        "/v1/streams",
        "/v1/streams/{stream}",
        "/v1/dead-letters",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(served["paths"][path].is_object(), "{path} is documented");
    }
    let ingest = &served["paths"]["/v1/streams/{stream}/events"]["post"]["responses"];
    for status in ["200", "202", "400", "404", "413", "415", "503"] {
        assert!(ingest[status].is_object(), "ingest documents {status}");
    }
}

#[tokio::test]
async fn admin_listen_serves_the_admin_surface_apart_from_ingest() {
    let app = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.admin.listen = "127.0.0.1:0".into();
    })
    .await
    .unwrap();
    let admin = app.admin_addr.expect("admin listener bound");
    assert_ne!(admin, app.addr);
    let client = reqwest::Client::new();
    let get = |addr: std::net::SocketAddr, path: &'static str| {
        let client = client.clone();
        async move {
            client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for path in [
        "/metrics",
        "/v1/streams",
        "/v1/streams/reading",
        "/v1/dead-letters",
    ] {
        assert_eq!(get(admin, path).await, 200, "{path} on the admin port");
        assert_eq!(
            get(app.addr, path).await,
            404,
            "{path} not on the ingest port"
        );
    }
    for path in ["/healthz", "/readyz", "/v1/openapi.json"] {
        assert_eq!(get(admin, path).await, 200, "{path} on the admin port");
        assert_eq!(get(app.addr, path).await, 200, "{path} on the ingest port");
    }
    let r = app
        .post(
            "reading",
            "",
            "application/json",
            r#"{"seq":1,"sensor":"a","value":1}"#,
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("http://{admin}/v1/streams/reading/events"))
        .body(r#"{"seq":2,"sensor":"a","value":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "events are not taken on the admin port");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("ingest port"));
    assert_eq!(app.db.count("reading").await, 1);
}

async fn a_stream_shows_its_schema_and_the_ddl_of_its_table(db: Db) {
    let Some(app) = spawn_app(db, fixture_schemas(), |_| {}).await else {
        return;
    };
    let (status, shown) = app.get_json("/v1/streams/reading/schema").await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["table"], "reading");
    assert_eq!(shown["schema"]["properties"]["sensor"]["type"], "string");
    let ddl = shown["ddl"].as_str().unwrap();
    let quoted = if db == Db::Mysql {
        "`reading`"
    } else {
        "\"reading\""
    };
    assert!(
        ddl.starts_with(&format!("CREATE TABLE IF NOT EXISTS {quoted}")),
        "{ddl}"
    );
    assert!(ddl.contains("_received_at"), "{ddl}");
    let (status, missing) = app.get_json("/v1/streams/nope/schema").await;
    assert_eq!(status, 404, "{missing}");
}

db_tests!(a_stream_shows_its_schema_and_the_ddl_of_its_table);

/// Every `curl` example of the README that talks to a plain local Sluice (the webhook,
/// HTTPS, token, pulled-source and flow examples have tests of their own: they need a config
/// beyond the default), run as written, in order, against
/// the shipped schemas: each is answered 2xx (cancelling a job that already finished
/// may answer 409).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_curl_examples_work_as_written() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut commands = Vec::new();
    for block in readme.split("```sh\n").skip(1) {
        let block = block.split("```").next().unwrap_or_default();
        let joined = block.replace("\\\n", " ");
        for line in joined.lines() {
            // Without a trailing comment (`curl … /v1/jobs   # the newest 100`).
            let line = line.split("  #").next().unwrap_or_default().trim();
            let plain = line.contains("http://127.0.0.1:8080")
                && line.contains("curl ")
                && !line.starts_with('#')
                && !line.contains("/v1/hooks/")
                && !line.contains("/v1/jobs/pull")
                && !line.contains("/v1/jobs/flow")
                && !line.contains("job-20261206093000-5e6f7a8b")
                && !line.contains("job-…")
                && !line.contains("Authorization");
            if plain {
                commands.push(line.to_owned());
            }
        }
    }
    assert!(commands.len() >= 6, "{commands:#?}");
    let app = crate::helpers::spawn_app(
        crate::helpers::Db::Sqlite,
        crate::helpers::shipped_schemas(),
        |_| {},
    )
    .await
    .unwrap();
    let mut job = String::new();
    for command in commands {
        let command = command
            .replace("127.0.0.1:8080", &app.addr.to_string())
            .replace("job-20261124225900-1a2b3c4d", &job);
        let script = format!("{command} -w '\\n%{{http_code}}'");
        let dir = root.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("bash")
                .args(["-c", &script])
                .current_dir(dir)
                .output()
        })
        .await
        .unwrap()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let code: u16 = code.trim().parse().unwrap_or(0);
        let cancelled_late = command.ends_with("/cancel") && code == 409;
        assert!(
            out.status.success() && ((200..300).contains(&code) || cancelled_late),
            "{command}\n=> {code} {body}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if command.contains("/v1/jobs/replay") {
            let started: serde_json::Value = serde_json::from_str(body).unwrap();
            job = started["id"].as_str().unwrap().to_owned();
        }
    }
}
