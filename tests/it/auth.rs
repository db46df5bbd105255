//! Access control: ingest tokens (`[auth]`) on the events endpoint, the admin token on
//! the operator's endpoints, and token rotation by SIGHUP without a restart.

use std::time::Duration;

use crate::helpers::{fixture_schemas, reading, spawn_app, spawn_binary, Db, TestDb};

const APP_TOKEN: &str = "app-token-0123456789abcdef";
const OPS_TOKEN: &str = "ops-token-fedcba9876543210";

#[tokio::test]
async fn ingest_needs_a_token_that_grants_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "# name:token:streams\nauthtest_app:{APP_TOKEN}:reading\nauthtest_ops:{OPS_TOKEN}:*\n"
        ),
    )
    .unwrap();
    let app = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.auth = Some(sluice::config::AuthConfig {
            tokens_file: Some(tokens.clone()),
            tokens_env: None,
        });
    })
    .await
    .unwrap();
    let post = |stream: &str, token: Option<&str>| {
        let mut req = app
            .client
            .post(app.url(&format!("/v1/streams/{stream}/events")))
            .header("content-type", "application/json")
            .body(reading(1).to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let none = post("reading", None).await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        post("reading", Some("wrong-token-0123456789"))
            .await
            .unwrap()
            .status(),
        401
    );
    let other = post("app_log", Some(APP_TOKEN)).await.unwrap();
    assert_eq!(other.status(), 403);
    let body: serde_json::Value = other.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("authtest_app") && !error.contains(APP_TOKEN),
        "{error}"
    );
    assert_eq!(post("nope", Some(APP_TOKEN)).await.unwrap().status(), 403);
    assert_eq!(
        post("reading", Some(APP_TOKEN)).await.unwrap().status(),
        200
    );
    assert_eq!(
        post("reading", Some(OPS_TOKEN)).await.unwrap().status(),
        200
    );
    // A token granting every stream reaches the usual 404 (and its dead letter).
    assert_eq!(post("nope", Some(OPS_TOKEN)).await.unwrap().status(), 404);
    assert_eq!(app.db.count("reading").await, 2);
    app.db.wait_for_dead_letters(1).await;
    let letters = app.db.query("SELECT source FROM sluice_dead_letters").await;
    assert_eq!(letters.len(), 1, "refused requests leave no dead letter");
    assert!(
        letters[0][0]
            .as_deref()
            .unwrap()
            .ends_with("token=authtest_ops"),
        "the dead letter names the token: {letters:?}"
    );
    // The token's name labels the received events (the recorder is process-wide, so
    // these names are this test's own).
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for token in ["authtest_app", "authtest_ops"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("sluice_events_received_total")
                    && l.contains("stream=\"reading\"")
                    && l.contains(&format!("token=\"{token}\""))),
            "{token} in {metrics}"
        );
    }
    assert!(!metrics.contains(APP_TOKEN) && !metrics.contains(OPS_TOKEN));
}

#[tokio::test]
async fn admin_endpoints_need_the_admin_token_and_probes_stay_open() {
    let var = "SLUICE_TEST_ADMIN_TOKEN_FOR_AUTH_RS";
    let admin_token = "admin-token-0123456789abcdef";
    // A variable of this test's own; nothing else reads it.
    std::env::set_var(var, admin_token);
    let app = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.admin.token_env = Some(var.into());
    })
    .await
    .unwrap();
    for path in [
        "/metrics",
        "/v1/streams",
        "/v1/streams/reading",
        "/v1/streams/reading/schema",
        "/v1/dead-letters",
        "/v1/jobs",
    ] {
        let get = |token: Option<&str>| {
            let mut req = app.client.get(app.url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        assert_eq!(get(None).await.unwrap().status(), 401, "{path}");
        assert_eq!(
            get(Some("not-the-admin-token")).await.unwrap().status(),
            401,
            "{path}"
        );
        assert_eq!(
            get(Some(admin_token)).await.unwrap().status(),
            200,
            "{path}"
        );
    }
    for path in ["/healthz", "/readyz", "/v1/openapi.json"] {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path} stays open");
    }
    // Without [auth], ingest stays open.
    let (status, _) = app.post_json("reading", &reading(1)).await;
    assert_eq!(status, 200);
}

/// Rotating the token file and sending SIGHUP: the old token is refused, the new one
/// accepted, by the same process.
#[tokio::test]
async fn sighup_rotates_the_ingest_tokens_without_a_restart() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, format!("old:{APP_TOKEN}:*\n")).unwrap();
    let toml = format!("[auth]\ntokens_file = \"{}\"\n", tokens.display());
    let sluice = crate::helpers::spawn_configured(None, &db, dir.path(), &toml, &[]);
    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/streams/reading/events", sluice.http);
    let post = |token: &str, seq: i64| {
        client
            .post(&url)
            .bearer_auth(token)
            .body(reading(seq).to_string())
            .send()
    };
    assert_eq!(post(APP_TOKEN, 1).await.unwrap().status(), 200);
    std::fs::write(&tokens, format!("new:{OPS_TOKEN}:reading\n")).unwrap();
    let pid = sluice.child.id();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // The new token is known once it is refused a stream it does not grant (403, not
    // 401): a probe that stores nothing either way.
    let probe = |token: &'static str| {
        client
            .post(format!("http://{}/v1/streams/app_log/events", sluice.http))
            .bearer_auth(token)
            .body("{}")
            .send()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while probe(OPS_TOKEN).await.unwrap().status() != 403 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new token never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        post(APP_TOKEN, 2).await.unwrap().status(),
        401,
        "the old token is refused"
    );
    assert_eq!(post(OPS_TOKEN, 3).await.unwrap().status(), 200);
    // A broken file on the next SIGHUP keeps the tokens in force.
    std::fs::write(&tokens, "not a token line\n").unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    // The reload has run (and failed) once it says so; only then does a 200 show that
    // the tokens in force stayed.
    let seen = sluice.log_until(10, |l| l.contains("could not be reloaded"));
    assert_eq!(post(OPS_TOKEN, 4).await.unwrap().status(), 200);
    db.wait_for_count("reading", 3).await;
    let (status, rest) = sluice.terminate().await;
    let logs: Vec<String> = seen.into_iter().chain(rest).collect();
    assert!(
        status.success(),
        "the same process served throughout: {logs:#?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("could not be reloaded")),
        "{logs:#?}"
    );
    assert!(
        !logs
            .iter()
            .any(|l| l.contains(APP_TOKEN) || l.contains(OPS_TOKEN)),
        "tokens never reach the logs"
    );
}

/// Exposed beyond loopback without tokens: one warning per missing setting, naming it.
#[tokio::test]
async fn exposing_sluice_without_tokens_warns_naming_the_setting() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(None, &db, &[("SLUICE_HTTP_LISTEN", "0.0.0.0:0".into())]);
    let (_, logs) = sluice.terminate().await;
    let warnings: Vec<&String> = logs.iter().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings.iter().any(|l| l.contains("[auth] tokens_file")),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(|l| l.contains("[admin] token_env")),
        "{warnings:#?}"
    );
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let quiet = spawn_binary(None, &db, &[]);
    let (_, logs) = quiet.terminate().await;
    assert!(
        !logs
            .iter()
            .any(|l| l.contains("[auth]") || l.contains("token_env")),
        "no warning on loopback: {logs:#?}"
    );
}

/// Runs `sluice` (serve) with `env` on top of a clean environment and the fixture
/// schemas, expecting it to stop at start-up; returns its stderr.
async fn refused_start(env: &[(&str, String)]) -> String {
    let mut cmd = crate::helpers::sluice_command();
    cmd.env("SLUICE_SCHEMAS_DIR", crate::helpers::fixture_schemas())
        .env("SLUICE_TCP_LISTEN", "")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("Sluice started where it must refuse to");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    err
}

/// Ingest behind tokens with the dead letters open on the same public port is refused;
/// on loopback it is only warned about.
#[tokio::test]
async fn auth_without_an_admin_token_is_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("s.db").display());
    let err = refused_start(&[
        ("SLUICE_DATABASE_URL", db_url.clone()),
        ("SLUICE_HTTP_LISTEN", "0.0.0.0:0".into()),
        ("SLUICE_AUTH_TOKENS_ENV", "TEST_INGEST_TOKENS".into()),
        ("TEST_INGEST_TOKENS", format!("app:{APP_TOKEN}:*")),
    ])
    .await;
    assert!(err.contains("[admin] token_env"), "{err}");
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[
            ("SLUICE_AUTH_TOKENS_ENV", "TEST_INGEST_TOKENS".into()),
            ("TEST_INGEST_TOKENS", format!("app:{APP_TOKEN}:*")),
        ],
    );
    let (_, logs) = sluice.terminate().await;
    assert!(
        logs.iter()
            .any(|l| l.contains("WARN") && l.contains("[admin] token_env")),
        "{logs:#?}"
    );
}

/// A taken port is reported before anything is created, with the ways to choose
/// another.
#[tokio::test]
async fn a_taken_port_is_reported_first_with_how_to_choose_another() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.db");
    let err = refused_start(&[
        (
            "SLUICE_DATABASE_URL",
            format!("sqlite://{}", file.display()),
        ),
        (
            "SLUICE_HTTP_LISTEN",
            taken.local_addr().unwrap().to_string(),
        ),
    ])
    .await;
    assert!(
        err.contains("cannot listen for HTTP")
            && err.contains("--config")
            && err.contains("SLUICE_HTTP_LISTEN"),
        "{err}"
    );
    assert!(!file.exists(), "no database was created");
}

/// A page of another site cannot use a browser against Sluice on loopback: a `Host`
/// that is not one of its names (DNS rebinding) and a cross-site `Origin` (a JSON body
/// posted as a form, which needs no preflight) are refused with 403 and store nothing;
/// the page's own origin, and names in `allowed_hosts`, pass.
#[tokio::test]
async fn other_sites_hosts_and_origins_are_refused() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(None, &db, &[]);
    let client = reqwest::Client::new();
    let events = format!("http://{}/v1/streams/reading/events", sluice.http);
    let event = r#"{"seq": 1, "sensor": "planted", "value": 1}"#;
    let rebound = client
        .get(format!("http://{}/v1/dead-letters", sluice.http))
        .header(
            "host",
            format!("rebind.example:{}", sluice.http.rsplit(':').next().unwrap()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let text = rebound.text().await.unwrap();
    assert!(text.contains("allowed_hosts"), "{text}");
    let planted = client
        .post(&events)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(planted.status(), 403);
    assert!(planted.text().await.unwrap().contains("allowed_origins"));
    let own = client
        .post(&events)
        .header("content-type", "application/json")
        .header("origin", format!("http://{}", sluice.http))
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(db.count("reading").await, 1, "only the page's own request");
    sluice.terminate().await;

    let named = spawn_binary(
        None,
        &db,
        &[("SLUICE_HTTP_ALLOWED_HOSTS", r#"["sluice.internal"]"#.into())],
    );
    let r = client
        .get(format!("http://{}/v1/streams", named.http))
        .header("host", "sluice.internal")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    named.terminate().await;
}
