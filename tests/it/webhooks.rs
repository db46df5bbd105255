//! Webhooks (`POST /v1/hooks/{name}`): each verification scheme accepts a request signed
//! by the vendor's own SDK (Python: standardwebhooks, svix, slack-sdk, twilio; Node:
//! stripe, @octokit/webhooks-methods, installed by `.ci/run`), or by `openssl` where the
//! vendor documents only the HMAC, and refuses tampered, wrongly signed, unsigned and
//! stale requests without storing anything. Then bodies, routing, redelivery, floods.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use sluice::config::WebhookConfig;

use crate::helpers::{spawn_app, spawn_binary, Db, TestApp, TestDb};

const SECRET: &str = "s3cret-for-tests";
const OTHER_SECRET: &str = "not-the-secret";
/// A Standard Webhooks secret (whsec_ + base64), and another.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_WHSEC: &str = "whsec_c2VjcmV0LW9mLWFub3RoZXItc2VuZGVy";
const TWILIO_URL: &str = "https://hooks.bookshop.example/v1/hooks/sms";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn schemas() -> PathBuf {
    root().join("tests/fixtures/webhook_schemas")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// `None` (after printing SKIPPED) when the vendors' SDKs are not installed; with
/// `SLUICE_TEST_REQUIRE_ALL=1` (as in CI) that is a failure.
pub(crate) fn sdks_installed() -> bool {
    let python = root().join(".ci/.venv/bin/python");
    let node = root().join("tests/webhooks/node_modules/stripe");
    let ok = python.exists()
        && node.exists()
        && Command::new(&python)
            .args(["-c", "import standardwebhooks, svix, slack_sdk, twilio"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    if !ok {
        crate::helpers::skip("a webhook test: the vendors' SDKs it signs with are not installed; bash .ci/run installs them into .ci/.venv and tests/webhooks/node_modules");
    }
    ok
}

/// Runs a signer with `body` on stdin and returns what it prints, as JSON.
fn run_signer(program: &Path, args: &[&str], body: &[u8]) -> Value {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(root().join("tests/webhooks"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the signer starts");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(body)
        .expect("the body reaches the signer");
    let out = child.wait_with_output().expect("the signer ends");
    assert!(out.status.success(), "signer {args:?} failed");
    serde_json::from_slice(&out.stdout).expect("the signer prints JSON")
}

/// Headers made by the vendor's Python SDK (`tests/webhooks/sign.py`).
pub(crate) fn python_sign(scheme: &str, secret: &str, ts: i64, extra: &str, body: &[u8]) -> Value {
    let python = root().join(".ci/.venv/bin/python");
    run_signer(
        &python,
        &["sign.py", scheme, secret, &ts.to_string(), extra],
        body,
    )
}

/// Headers made by the vendor's Node SDK (`tests/webhooks/sign.mjs`).
fn node_sign(scheme: &str, secret: &str, ts: i64, body: &[u8]) -> Value {
    run_signer(
        Path::new("node"),
        &["sign.mjs", scheme, secret, &ts.to_string()],
        body,
    )
}

/// `openssl dgst -<algo> -hmac KEY -binary` over `data`.
pub(crate) fn openssl_hmac(algo: &str, key: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", &format!("-{algo}"), "-hmac", key, "-binary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl runs");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn hook(text: &str) -> WebhookConfig {
    toml::from_str(text).unwrap_or_else(|e| panic!("webhook config {text}: {e}"))
}

/// A file holding `secrets`, one per line, kept alive with the test.
fn secret_file(secrets: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, secrets.join("\n")).unwrap();
    (dir, path)
}

/// Starts Sluice on `db` with webhooks `hooks` (name, TOML) and `id_field` on
/// `hook_event`; every `{secret_file}` in the TOML is replaced by `secret_path`.
async fn app_with(db: Db, secret_path: &Path, hooks: &[(&str, String)]) -> Option<TestApp> {
    let hooks: Vec<(String, WebhookConfig)> = hooks
        .iter()
        .map(|(name, text)| {
            let text = text.replace("{secret_file}", &secret_path.display().to_string());
            (name.to_string(), hook(&text))
        })
        .collect();
    spawn_app(db, schemas(), move |c| {
        c.streams.entry("hook_event".into()).or_default().id_field = Some("delivery_id".into());
        c.webhooks.extend(hooks);
    })
    .await
}

/// What a request carries besides its body.
#[derive(Clone, Default)]
struct Signed {
    headers: Vec<(String, String)>,
    /// Query string (with `?`), for Twilio's JSON bodies.
    query: String,
    content_type: Option<&'static str>,
}

impl Signed {
    fn from_json(headers: &Value) -> Signed {
        Signed {
            headers: headers
                .as_object()
                .expect("headers object")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("text").to_owned()))
                .collect(),
            ..Signed::default()
        }
    }

    fn without(&self, name: &str) -> Signed {
        let mut s = self.clone();
        s.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        s
    }
}

async fn send(app: &TestApp, name: &str, body: &[u8], signed: &Signed) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url(&format!("/v1/hooks/{name}{}", signed.query)))
        .header(
            "content-type",
            signed.content_type.unwrap_or("application/json"),
        )
        .body(body.to_vec());
    for (k, v) in &signed.headers {
        req = req.header(k, v);
    }
    let r = req.send().await.expect("the request reaches Sluice");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// One scheme under test: its configuration and how its vendor signs a body with a
/// secret at a time.
struct Case {
    name: &'static str,
    config: String,
    secret: &'static str,
    wrong_secret: &'static str,
    sign: fn(&[u8], &str, i64) -> Signed,
    /// The headers whose absence must be refused.
    required: &'static [&'static str],
    timestamped: bool,
    /// A body different from the one signed, still carrying its signature.
    tamper: fn(&[u8]) -> Vec<u8>,
    /// The body sent for the event (`n` is its number).
    body: fn(i64) -> Vec<u8>,
    content_type: Option<&'static str>,
}

fn json_body(n: i64) -> Vec<u8> {
    json!({"kind": "test", "n": n}).to_string().into_bytes()
}

fn tamper_json(body: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    v["n"] = json!(999);
    v.to_string().into_bytes()
}

fn mailgun_body(secret: &str, ts: i64, token: &str) -> Vec<u8> {
    let sig = hex::encode(openssl_hmac(
        "sha256",
        secret,
        format!("{ts}{token}").as_bytes(),
    ));
    json!({
        "signature": {"timestamp": ts.to_string(), "token": token, "signature": sig},
        "event-data": {"event": "delivered", "id": "mg-1"},
        "kind": "mailgun",
        "n": 1
    })
    .to_string()
    .into_bytes()
}

impl Case {
    /// A scheme on `hook_event` with `verify`, `extra` config lines, the test secrets, a
    /// JSON body tampered with by changing `n`, no timestamp and no required header.
    fn new(
        name: &'static str,
        verify: &str,
        extra: &str,
        sign: fn(&[u8], &str, i64) -> Signed,
    ) -> Case {
        Case {
            name,
            config: format!(
                "stream = \"hook_event\"\nverify = \"{verify}\"\nsecret_file = \"{{secret_file}}\"\n{extra}"
            ),
            secret: SECRET,
            wrong_secret: OTHER_SECRET,
            sign,
            required: &[],
            timestamped: false,
            tamper: tamper_json,
            body: json_body,
            content_type: None,
        }
    }
}

fn cases() -> Vec<Case> {
    let form = Some("application/x-www-form-urlencoded");
    vec![
        Case {
            required: &["authorization"],
            ..Case::new("token", "token", "", |_, secret, _| Signed {
                headers: vec![("Authorization".into(), format!("Bearer {secret}"))],
                ..Signed::default()
            })
        },
        Case {
            secret: "pipedrive:hunter2",
            wrong_secret: "pipedrive:wrong",
            required: &["authorization"],
            ..Case::new("basic", "basic", "", |_, secret, _| {
                let (user, password) = secret.split_once(':').unwrap();
                // reqwest's own Basic encoding, through a throwaway request.
                let req = reqwest::Client::new()
                    .get("http://x/")
                    .basic_auth(user, Some(password))
                    .build()
                    .unwrap();
                let value = req.headers()["authorization"].to_str().unwrap().to_owned();
                Signed {
                    headers: vec![("Authorization".into(), value)],
                    ..Signed::default()
                }
            })
        },
        Case {
            required: &["x-signature"],
            ..Case::new(
                "hmac",
                "hmac",
                "signature_header = \"X-Signature\"\nalgorithm = \"sha512\"\nencoding = \"base64\"\nprefix = \"sha512=\"",
                |body, secret, _| Signed {
                    headers: vec![(
                        "X-Signature".into(),
                        format!("sha512={}", b64(&openssl_hmac("sha512", secret, body))),
                    )],
                    ..Signed::default()
                },
            )
        },
        Case {
            secret: WHSEC,
            wrong_secret: OTHER_WHSEC,
            required: &["webhook-signature", "webhook-timestamp", "webhook-id"],
            timestamped: true,
            ..Case::new("standard-webhooks", "standard-webhooks", "", |body, secret, ts| {
                Signed::from_json(&python_sign("standard-webhooks", secret, ts, "msg_2Lh", body))
            })
        },
        Case {
            secret: WHSEC,
            wrong_secret: OTHER_WHSEC,
            required: &["svix-signature", "svix-timestamp", "svix-id"],
            timestamped: true,
            ..Case::new("svix", "standard-webhooks", "", |body, secret, ts| {
                Signed::from_json(&python_sign("svix", secret, ts, "msg_svix1", body))
            })
        },
        Case {
            secret: "whsec_test_stripe_secret",
            wrong_secret: "whsec_other",
            required: &["stripe-signature"],
            timestamped: true,
            body: |n| {
                json!({"id": format!("evt_{n}"), "object": "event", "kind": "invoice.paid", "n": n})
                    .to_string()
                    .into_bytes()
            },
            ..Case::new("stripe", "stripe", "", |body, secret, ts| {
                Signed::from_json(&node_sign("stripe", secret, ts, body))
            })
        },
        Case {
            required: &["x-hub-signature-256"],
            ..Case::new(
                "github",
                "github",
                "[headers]\n\"X-GitHub-Event\" = \"gh_event\"",
                |body, secret, _| {
                    let mut s = Signed::from_json(&node_sign("github", secret, 0, body));
                    s.headers.push(("X-GitHub-Event".into(), "push".into()));
                    s.headers.push((
                        "X-GitHub-Delivery".into(),
                        "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
                    ));
                    s
                },
            )
        },
        Case {
            required: &["x-shopify-hmac-sha256"],
            ..Case::new("shopify", "shopify", "", |body, secret, _| Signed {
                headers: vec![
                    ("X-Shopify-Hmac-Sha256".into(), b64(&openssl_hmac("sha256", secret, body))),
                    ("X-Shopify-Webhook-Id".into(), "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".into()),
                ],
                ..Signed::default()
            })
        },
        Case {
            required: &["x-slack-signature", "x-slack-request-timestamp"],
            timestamped: true,
            tamper: |b| [b, b"&kind=x".as_slice()].concat(),
            body: |n| format!("command=%2Fbook&text=isbn+978&kind=slash&delivery_id=s{n}").into_bytes(),
            content_type: form,
            ..Case::new("slack", "slack", "", |body, secret, ts| {
                Signed::from_json(&python_sign("slack", secret, ts, "", body))
            })
        },
        Case {
            required: &["x-twilio-signature"],
            tamper: |b| String::from_utf8_lossy(b).replace("hello", "HELLO").into_bytes(),
            body: |_| b"From=%2B15551234567&Body=hello+books&Media=b.jpg&Media=a.jpg&MessageSid=SM1".to_vec(),
            content_type: form,
            ..Case::new(
                "twilio-form",
                "twilio",
                &format!("public_url = \"{TWILIO_URL}\""),
                |body, secret, _| {
                    Signed::from_json(&python_sign("twilio-form", secret, 0, TWILIO_URL, body))
                },
            )
        },
        Case {
            required: &["x-twilio-signature"],
            tamper: |b| String::from_utf8_lossy(b).replace("hello", "HELLO").into_bytes(),
            body: |_| b"From=%2B15551234567&Body=hello+books&MessageSid=SM2".to_vec(),
            content_type: form,
            ..Case::new(
                "twilio-sha256",
                "twilio",
                &format!("public_url = \"{TWILIO_URL}\""),
                |body, secret, _| {
                    Signed::from_json(&python_sign("twilio-sha256", secret, 0, TWILIO_URL, body))
                },
            )
        },
        Case {
            required: &["x-twilio-signature"],
            ..Case::new(
                "twilio-json",
                "twilio",
                &format!("public_url = \"{TWILIO_URL}\""),
                |body, secret, _| {
                    let out = python_sign("twilio-json", secret, 0, TWILIO_URL, body);
                    let url = out["url"].as_str().unwrap();
                    Signed {
                        query: url[TWILIO_URL.len()..].to_owned(),
                        ..Signed::from_json(&out["headers"])
                    }
                },
            )
        },
        Case {
            timestamped: true,
            // Mailgun's signature covers the token, not the event: tamper with the token.
            tamper: |b| String::from_utf8_lossy(b).replace("tok-", "tak-").into_bytes(),
            // Mailgun signs timestamp + token inside the body: `check_case` makes it.
            ..Case::new("mailgun", "mailgun", "", |_, _, _| Signed::default())
        },
    ]
}

/// Sends the case's good request, then every bad variant, and checks what is stored.
async fn check_case(case: &Case) {
    let (_dir, path) = secret_file(&[case.secret]);
    let app = app_with(Db::Sqlite, &path, &[(case.name, case.config.clone())])
        .await
        .expect("SQLite always runs");
    let mailgun = case.name == "mailgun";
    let make = |secret: &str, ts: i64| -> (Vec<u8>, Signed) {
        if mailgun {
            (mailgun_body(secret, ts, "tok-abc"), Signed::default())
        } else {
            let body = (case.body)(1);
            let mut signed = (case.sign)(&body, secret, ts);
            signed.content_type = signed.content_type.or(case.content_type);
            (body, signed)
        }
    };
    let (body, signed) = make(case.secret, now());
    let (status, answer) = send(&app, case.name, &body, &signed).await;
    assert_eq!(
        status, 200,
        "{}: a request signed by the vendor's SDK is accepted: {answer}",
        case.name
    );
    assert_eq!(answer["accepted"], 1, "{}: {answer}", case.name);

    let mut bad: Vec<(String, Vec<u8>, Signed, &str)> = Vec::new();
    // A token or a password does not cover the body: only signatures can catch tampering.
    let credentials = matches!(case.name, "token" | "basic");
    if !credentials {
        bad.push((
            "tampered body".into(),
            (case.tamper)(&body),
            signed.clone(),
            "bad signature",
        ));
    }
    let (other_body, other_signed) = make(case.wrong_secret, now());
    let wrong = if credentials {
        "bad credentials"
    } else {
        "bad signature"
    };
    bad.push(("wrong secret".into(), other_body, other_signed, wrong));
    for header in case.required {
        let missing = if credentials {
            "missing credentials"
        } else {
            "missing signature"
        };
        bad.push((
            format!("no {header}"),
            body.clone(),
            signed.without(header),
            missing,
        ));
    }
    if case.timestamped {
        for (what, shift) in [("stale", -600), ("future", 600)] {
            let (b, s) = make(case.secret, now() + shift);
            bad.push((
                format!("{what} timestamp"),
                b,
                s,
                "timestamp outside tolerance",
            ));
        }
    }
    // A timestamp 2^63 s before now: the difference must not wrap around into the window.
    let ancient = now() + i64::MIN;
    match case.name {
        // Slack's SDK takes the timestamp as text, so it signs this one exactly.
        "slack" => {
            let (b, s) = make(case.secret, ancient);
            bad.push((
                "ancient timestamp".into(),
                b,
                s,
                "timestamp outside tolerance",
            ));
        }
        // Stripe's Node SDK holds it as a double (inexact): sign as Stripe documents.
        "stripe" => {
            let mut signed_text = format!("{ancient}.").into_bytes();
            signed_text.extend_from_slice(&body);
            let sig = hex::encode(openssl_hmac("sha256", case.secret, &signed_text));
            let mut s = signed.without("stripe-signature");
            s.headers
                .push(("Stripe-Signature".into(), format!("t={ancient},v1={sig}")));
            bad.push((
                "ancient timestamp".into(),
                body.clone(),
                s,
                "timestamp outside tolerance",
            ));
        }
        "mailgun" => {
            let (b, s) = make(case.secret, ancient);
            bad.push((
                "ancient timestamp".into(),
                b,
                s,
                "timestamp outside tolerance",
            ));
            // The good request's signature object, captured and sent with another event.
            bad.push((
                "captured signature with another body".into(),
                tamper_json(&body),
                Signed::default(),
                "signature reused with another body",
            ));
        }
        _ => {}
    }
    if mailgun {
        let no_sig = json!({"event-data": {"event": "delivered"}})
            .to_string()
            .into_bytes();
        bad.push((
            "no signature object".into(),
            no_sig,
            Signed::default(),
            "missing signature",
        ));
    }
    for (what, b, s, reason) in bad {
        let (status, answer) = send(&app, case.name, &b, &s).await;
        assert_eq!(
            status, 401,
            "{}: {what} must be refused: {answer}",
            case.name
        );
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(reason),
            "{}: {what}: {error:?} should say {reason:?}",
            case.name
        );
        assert!(!error.contains(case.secret), "the secret is never echoed");
    }
    // Only the good request is stored; the refused ones left no row and no dead letter.
    app.db.wait_for_count("hook_event", 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.db.count("hook_event").await, 1, "{}", case.name);
    assert_eq!(
        app.db.count("sluice_dead_letters").await,
        0,
        "{}",
        case.name
    );
}

#[tokio::test]
async fn every_scheme_accepts_its_vendors_signature_and_refuses_the_bad_cases() {
    if !sdks_installed() {
        return;
    }
    for case in cases() {
        check_case(&case).await;
    }
}

#[tokio::test]
async fn verify_none_takes_every_request() {
    let (_dir, path) = secret_file(&[]);
    let app = app_with(
        Db::Sqlite,
        &path,
        &[("open", "stream = \"hook_event\"\nverify = \"none\"".into())],
    )
    .await
    .unwrap();
    let (status, _) = send(&app, "open", &json_body(1), &Signed::default()).await;
    assert_eq!(status, 200);
    app.db.wait_for_count("hook_event", 1).await;
    let (status, answer) = send(&app, "nope", &json_body(1), &Signed::default()).await;
    assert_eq!(status, 404, "{answer}");
}

#[tokio::test]
async fn during_a_rotation_either_secret_is_accepted() {
    if !sdks_installed() {
        return;
    }
    let (_dir, path) = secret_file(&["old-secret", "", "new-secret"]);
    let config = "stream = \"hook_event\"\nverify = \"github\"\nsecret_file = \"{secret_file}\"";
    let app = app_with(Db::Sqlite, &path, &[("gh", config.into())])
        .await
        .unwrap();
    for (n, secret) in [(1, "old-secret"), (2, "new-secret")] {
        let body = json_body(n);
        let signed = Signed::from_json(&node_sign("github", secret, 0, &body));
        let (status, answer) = send(&app, "gh", &body, &signed).await;
        assert_eq!(status, 200, "signed with {secret}: {answer}");
    }
    let body = json_body(3);
    let signed = Signed::from_json(&node_sign("github", "retired-secret", 0, &body));
    assert_eq!(send(&app, "gh", &body, &signed).await.0, 401);
    app.db.wait_for_count("hook_event", 2).await;
}

#[tokio::test]
async fn form_and_multipart_bodies_become_columns_and_repeated_keys_arrays() {
    let (_dir, path) = secret_file(&[]);
    let app = app_with(
        Db::Sqlite,
        &path,
        &[("forms", "stream = \"hook_event\"\nverify = \"none\"".into())],
    )
    .await
    .unwrap();
    let form = Signed {
        content_type: Some("application/x-www-form-urlencoded"),
        ..Signed::default()
    };
    let body = b"From=%2B15551234567&Body=hello+books&Media=b.jpg&Media=a.jpg&delivery_id=f1";
    assert_eq!(send(&app, "forms", body, &form).await.0, 200);
    let multipart = "--XyZ\r\nContent-Disposition: form-data; name=\"From\"\r\n\r\nmailgun@example.com\r\n--XyZ\r\nContent-Disposition: form-data; name=\"Body\"\r\n\r\nline one\r\nline two\r\n--XyZ\r\nContent-Disposition: form-data; name=\"delivery_id\"\r\n\r\nm1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"event\"\r\n\r\ndelivered\r\n--XyZ--\r\n";
    let mp = Signed {
        content_type: Some("multipart/form-data; boundary=XyZ"),
        ..Signed::default()
    };
    assert_eq!(send(&app, "forms", multipart.as_bytes(), &mp).await.0, 200);
    app.db.wait_for_count("hook_event", 2).await;
    let rows = app
        .db
        .query("SELECT delivery_id, \"From\", Body, Media, _extra FROM hook_event ORDER BY delivery_id")
        .await;
    assert_eq!(rows[0][1].as_deref(), Some("+15551234567"));
    assert_eq!(rows[0][2].as_deref(), Some("hello books"));
    let media: Value = serde_json::from_str(rows[0][3].as_deref().unwrap()).unwrap();
    assert_eq!(
        media,
        json!(["b.jpg", "a.jpg"]),
        "a repeated key is an array, in order"
    );
    assert_eq!(rows[1][1].as_deref(), Some("mailgun@example.com"));
    assert_eq!(rows[1][2].as_deref(), Some("line one\r\nline two"));
    let extra: Value = serde_json::from_str(rows[1][4].as_deref().unwrap()).unwrap();
    assert_eq!(
        extra["event"], "delivered",
        "undeclared fields go to _extra"
    );
}

#[tokio::test]
async fn events_are_routed_by_pointer_or_header_and_the_unroutable_dead_lettered() {
    let (_dir, path) = secret_file(&[]);
    let by_pointer = "verify = \"none\"\n[route]\npointer = \"/kind\"\nstreams = { \"a\" = \"hook_event\", \"b\" = \"hook_other\" }";
    let with_fallback = "verify = \"none\"\n[route]\nheader = \"X-Event-Type\"\nstreams = { \"b\" = \"hook_other\", \"*\" = \"hook_event\" }";
    let app = app_with(
        Db::Sqlite,
        &path,
        &[
            ("pointer", by_pointer.into()),
            ("header", with_fallback.into()),
        ],
    )
    .await
    .unwrap();
    let batch = json!([
        {"kind": "a", "n": 1, "delivery_id": "p1"},
        {"kind": "b", "n": 2},
        {"kind": "c", "n": 3},
        {"n": 4}
    ]);
    let (status, answer) = send(
        &app,
        "pointer",
        batch.to_string().as_bytes(),
        &Signed::default(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["dead_lettered"], 2, "{answer}");
    assert_eq!(answer["errors"][0]["index"], 2);
    assert_eq!(answer["errors"][0]["stage"], "route");
    assert!(
        answer["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("\"c\""),
        "{answer}"
    );
    app.db.wait_for_count("hook_event", 1).await;
    app.db.wait_for_count("hook_other", 1).await;
    app.db.wait_for_dead_letters(2).await;
    let stages = app
        .db
        .query("SELECT stage, stream FROM sluice_dead_letters")
        .await;
    assert!(stages
        .iter()
        .all(|r| r[0].as_deref() == Some("route") && r[1].is_none()));

    let header = |v: &str| Signed {
        headers: vec![("X-Event-Type".into(), v.into())],
        ..Signed::default()
    };
    let one = json!({"kind": "x", "n": 5, "delivery_id": "h1"}).to_string();
    assert_eq!(
        send(&app, "header", one.as_bytes(), &header("b")).await.0,
        200
    );
    assert_eq!(
        send(&app, "header", one.as_bytes(), &header("zzz")).await.0,
        200
    );
    let none = Signed::default();
    let other = json!({"kind": "x", "n": 6, "delivery_id": "h2"}).to_string();
    assert_eq!(send(&app, "header", other.as_bytes(), &none).await.0, 200);
    app.db.wait_for_count("hook_other", 2).await;
    app.db.wait_for_count("hook_event", 3).await;
}

/// A redelivery with the same delivery id is stored once, on every database.
#[tokio::test]
async fn a_redelivered_webhook_is_stored_once_on_every_database() {
    if !sdks_installed() {
        return;
    }
    for db in [Db::Sqlite, Db::Postgres, Db::Mysql] {
        let (_dir, path) = secret_file(&[SECRET]);
        let github =
            "stream = \"hook_event\"\nverify = \"github\"\nsecret_file = \"{secret_file}\"";
        let standard = "stream = \"hook_event\"\nverify = \"standard-webhooks\"\nsecret_file = \"{secret_file}\"";
        let (_dir2, whsec) = secret_file(&[WHSEC]);
        let Some(app) = app_with(db, &path, &[("gh", github.into())]).await else {
            continue;
        };
        let body = json_body(1);
        let mut signed = Signed::from_json(&node_sign("github", SECRET, 0, &body));
        signed
            .headers
            .push(("X-GitHub-Delivery".into(), "d-1".into()));
        for _ in 0..3 {
            let (status, answer) = send(&app, "gh", &body, &signed).await;
            assert_eq!(status, 200, "{db:?}: {answer}");
        }
        // A batch: each element gets DELIVERY/INDEX, so a redelivered batch is stored once too.
        let batch = json!([{"n": 1}, {"n": 2}]).to_string().into_bytes();
        let mut signed = Signed::from_json(&node_sign("github", SECRET, 0, &batch));
        signed
            .headers
            .push(("X-GitHub-Delivery".into(), "d-2".into()));
        for _ in 0..2 {
            assert_eq!(send(&app, "gh", &batch, &signed).await.0, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(app.db.count("hook_event").await, 3, "{db:?}");
        let mut ids = app.db.values("hook_event", "delivery_id").await;
        ids.sort();
        assert_eq!(
            ids,
            vec![
                Some("d-1".into()),
                Some("d-2/0".into()),
                Some("d-2/1".into())
            ],
            "{db:?}"
        );
        drop(app);

        // Standard Webhooks: the webhook-id header is the delivery id.
        let Some(app) = app_with(db, &whsec, &[("sw", standard.into())]).await else {
            continue;
        };
        let body = json_body(7);
        let signed = Signed::from_json(&python_sign(
            "standard-webhooks",
            WHSEC,
            now(),
            "msg_same",
            &body,
        ));
        for _ in 0..2 {
            assert_eq!(send(&app, "sw", &body, &signed).await.0, 200);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            app.db.values("hook_event", "delivery_id").await,
            vec![Some("msg_same".into())],
            "{db:?}"
        );
    }
}

/// 10,000 unsigned requests: all refused, nothing stored, a few log lines.
#[tokio::test]
async fn a_flood_of_unsigned_requests_leaves_the_database_and_the_logs_alone() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sluice = crate::helpers::spawn_configured(
        None,
        &db,
        dir.path(),
        "[webhooks.gh]\nstream = \"hook_event\"\nverify = \"github\"\nsecret_env = \"GH_HOOK_SECRET\"\n",
        &[
            ("SLUICE_SCHEMAS_DIR", schemas().display().to_string()),
            ("GH_HOOK_SECRET", SECRET.into()),
        ],
    );
    let url = format!("http://{}/v1/hooks/gh", sluice.http);
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, url, sent) = (client.clone(), url.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..625 {
                let mut req = client.post(&url).body(json_body(i).clone());
                if (w + i) % 2 == 0 {
                    req = req.header("X-Hub-Signature-256", "sha256=00");
                }
                let r = req.send().await.expect("Sluice answers");
                assert_eq!(r.status().as_u16(), 401);
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 10_000);
    crate::helpers::eventually(10, "every refusal is counted", || async {
        let total =
            crate::helpers::metric_sum(&sluice.http, "sluice_webhook_rejected_total", "").await;
        if total >= 10_000.0 {
            Ok(())
        } else {
            Err(format!("{total} refusals counted"))
        }
    })
    .await;
    let metrics = crate::helpers::metrics_text(&sluice.http).await;
    let (_, logs) = sluice.terminate().await;
    let refused: Vec<&String> = logs.iter().filter(|l| l.contains("refused")).collect();
    // Two kinds (missing, bad), each logged once, then one summary per kind per
    // log_summary_interval (10 s) and once more at shutdown.
    let elapsed_intervals = started.elapsed().as_secs() as usize / 10;
    assert!(
        refused.len() >= 2 && refused.len() <= 2 * (elapsed_intervals + 2),
        "{} lines for 10,000 refusals: {refused:#?}",
        refused.len()
    );
    assert!(
        !logs.iter().any(|l| l.contains(SECRET)),
        "the secret is never logged"
    );
    for reason in ["missing signature", "bad signature"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("sluice_webhook_rejected_total")
                    && l.contains("webhook=\"gh\"")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .unwrap_or_else(|| panic!("no {reason} series in {metrics}"));
        assert!(line.ends_with(" 5000"), "{line}");
    }
    assert_eq!(db.count("hook_event").await, 0);
    assert_eq!(db.count("sluice_dead_letters").await, 0);
}

/// The README's signed `curl` examples, run as written against the shipped schemas and
/// `examples/webhooks.toml` (only the address is this test's).
#[tokio::test]
async fn the_readme_webhook_examples_work_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("then sign requests with `openssl`")
        .expect("the README's webhook examples");
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let script = &block[..block.find("```").unwrap()];
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[
            (
                "SLUICE_CONFIG",
                root().join("examples/webhooks.toml").display().to_string(),
            ),
            (
                "SLUICE_SCHEMAS_DIR",
                crate::helpers::shipped_schemas().display().to_string(),
            ),
            ("HOOK_SECRET", "example".into()),
            ("GITHUB_WEBHOOK_SECRET", "example".into()),
            ("STRIPE_WEBHOOK_SECRET", "whsec_example".into()),
            ("PIPEDRIVE_WEBHOOK_AUTH", "pipedrive:example".into()),
        ],
    );
    let script = script.replace("127.0.0.1:8080", &sluice.http);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", &format!("{script}\necho")])
            .current_dir(root())
            .output()
            .expect("bash runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .map(|v| v.expect("curl prints JSON answers"))
        .collect();
    let accepted: Vec<&Value> = answers.iter().map(|a| &a["accepted"]).collect();
    assert_eq!(
        accepted,
        [&json!(6), &json!(1), &json!(1), &json!(1), &Value::Null],
        "{answers:#?}"
    );
    assert_eq!(answers[4]["error"], "bad signature; nothing was stored");
    for (table, n) in [
        ("email_event", 6),
        ("github_event", 1),
        ("stripe_event", 1),
        ("pipedrive_event", 1),
    ] {
        db.wait_for_count(table, n).await;
    }
    assert_eq!(
        db.values("github_event", "event").await,
        vec![Some("push".to_owned())]
    );
    sluice.terminate().await;
}

/// A gzip body is verified as the vendor signed it: decompressed.
#[tokio::test]
async fn a_gzip_body_is_verified_after_decompression() {
    let (_dir, path) = secret_file(&[SECRET]);
    let config = "stream = \"hook_event\"\nverify = \"hmac\"\nsignature_header = \"X-Signature\"\nsecret_file = \"{secret_file}\"";
    let app = app_with(Db::Sqlite, &path, &[("zipped", config.into())])
        .await
        .unwrap();
    let body = json_body(1);
    let signed = Signed {
        headers: vec![
            (
                "X-Signature".into(),
                hex::encode(openssl_hmac("sha256", SECRET, &body)),
            ),
            ("Content-Encoding".into(), "gzip".into()),
        ],
        ..Signed::default()
    };
    let (status, answer) = send(&app, "zipped", &crate::helpers::gzip(&body), &signed).await;
    assert_eq!(status, 200, "{answer}");
    app.db.wait_for_count("hook_event", 1).await;
}

/// JSON sent to a webhook with curl -d's form type: the dead letter keeps the body as
/// received (not the form-decoded object), its error says to send JSON as JSON, and a
/// replay reads it back. A real form's dead letter keeps the form and replays as one.
/// (On the shipped `email_event` without its `x-sluice-privacy` treatment: a treating
/// stream's dead letters never keep the bytes received.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_webhook_dead_letter_keeps_the_bytes_received_and_replays() {
    let schemas = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(crate::helpers::shipped_schemas().join("email_event.json"))
            .unwrap();
    let untreated = shipped.replace(", \"x-sluice-privacy\": \"hash\"", "");
    assert!(!untreated.contains("\"x-sluice-privacy\":"));
    std::fs::write(schemas.path().join("email_event.json"), untreated).unwrap();
    let app = crate::helpers::spawn_app(Db::Sqlite, schemas.path().to_path_buf(), |c| {
        c.webhooks.insert(
            "email".into(),
            hook("stream = \"email_event\"\nverify = \"none\""),
        );
    })
    .await
    .unwrap();
    let event = r#"{"email": "reader@example.com", "timestamp": 1714564800, "event": "processed", "sg_event_id": "rbtnWrG1DVDGGGFHFyun0A=="}"#;
    let r = app
        .client
        .post(app.url("/v1/hooks/email"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(event)
        .send()
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["dead_lettered"], 1, "{answer}");
    let error = answer["errors"][0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("looks like JSON") && error.contains("Content-Type: application/json"),
        "{error}"
    );
    let r = app
        .client
        .post(app.url("/v1/hooks/email"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=a%40example.com&event=open&sg_event_id=x1&timestamp=nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    app.db.wait_for_dead_letters(2).await;
    let letters = app.db.dead_letters().await;
    assert_eq!(letters[0][3].as_deref(), Some(event), "the bytes received");
    assert_eq!(
        letters[1][3].as_deref(),
        Some("email=a%40example.com&event=open&sg_event_id=x1&timestamp=nope")
    );
    // The first replays as the JSON it is; the second is read as a form again and still
    // fails for its timestamp.
    let done = crate::jobs::replay_to_the_end(&app, "email_event").await;
    assert_eq!(done["result"]["replayed"], 1, "{done}");
    assert_eq!(done["result"]["still_failing"], 1, "{done}");
    assert!(
        done["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("/timestamp")),
        "{done}"
    );
    assert_eq!(app.db.count("email_event").await, 1);
}
