//! HTTPS (`[http.tls]`): a throwaway CA and server certificate made by `rcgen`, a client
//! that verifies against that CA, plain HTTP refused on the TLS port, and the
//! certificate swapped by SIGHUP without a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use crate::helpers::{fixture_schemas, spawn_app, Db, TestDb};

/// A CA (its PEM) and a server certificate for 127.0.0.1 signed by it (PEM cert, key).
struct Issued {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn issue(ca_name: &str) -> Issued {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Issued {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn write(dir: &Path, issued: &Issued) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    // Written next to the target and renamed, as cert-manager swaps files.
    std::fs::write(dir.join("cert.tmp"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("key.tmp"), &issued.key_pem).unwrap();
    std::fs::rename(dir.join("cert.tmp"), &cert).unwrap();
    std::fs::rename(dir.join("key.tmp"), &key).unwrap();
    (cert, key)
}

/// A client that trusts only `ca_pem` and opens a new connection per request.
fn client_trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

#[tokio::test]
async fn https_serves_a_verifying_client_and_sighup_swaps_the_certificate() {
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = issue("Sluice test CA one");
    let (cert, key) = write(dir.path(), &first);
    let toml = format!(
        "[http.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let sluice = crate::helpers::spawn_configured(None, &db, dir.path(), &toml, &[]);
    let https = format!("https://{}", sluice.http);
    let trusts_first = client_trusting(&first.ca_pem);
    let r = trusts_first
        .post(format!("{https}/v1/streams/reading/events"))
        .body(r#"{"seq": 1, "sensor": "a", "value": 1.5}"#)
        .send()
        .await
        .expect("HTTPS with a certificate the client verifies");
    assert_eq!(r.status(), 200);
    db.wait_for_count("reading", 1).await;

    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", sluice.http))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP on the TLS port must fail: {plain:?}"
    );

    let second = issue("Sluice test CA two");
    let trusts_second = client_trusting(&second.ca_pem);
    assert!(
        trusts_second
            .get(format!("{https}/healthz"))
            .send()
            .await
            .is_err(),
        "a client that does not trust the server's CA refuses it"
    );
    write(dir.path(), &second);
    let kill = std::process::Command::new("kill")
        .args(["-HUP", &sluice.child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while trusts_second
        .get(format!("{https}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate is not served after SIGHUP"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        trusts_first
            .get(format!("{https}/healthz"))
            .send()
            .await
            .is_err(),
        "new connections get the new certificate"
    );
    let (status, logs) = sluice.terminate().await;
    assert!(status.success(), "one process throughout: {logs:#?}");
    assert!(logs.iter().any(|l| l.contains("TLS certificate reloaded")));
}

/// The admin listener speaks TLS with the same certificate.
#[tokio::test]
async fn the_admin_listener_is_https_too() {
    let dir = tempfile::tempdir().unwrap();
    let issued = issue("Sluice test CA admin");
    let (cert, key) = write(dir.path(), &issued);
    let app = spawn_app(Db::Sqlite, fixture_schemas(), |c| {
        c.http.tls = Some(sluice::config::TlsConfig {
            cert,
            key,
            client_ca: None,
        });
        c.admin.listen = "127.0.0.1:0".into();
    })
    .await
    .unwrap();
    let admin = app.admin_addr.expect("admin listener");
    let client = client_trusting(&issued.ca_pem);
    let r = client
        .get(format!("https://{admin}/v1/streams"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!("https://{}/healthz", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A key that does not match its certificate stops start-up with a message naming it.
#[test]
fn a_mismatched_key_is_refused_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let one = issue("one");
    let two = issue("two");
    std::fs::write(dir.path().join("cert.pem"), &one.cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &two.key_pem).unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[http.tls]\ncert = \"{0}/cert.pem\"\nkey = \"{0}/key.pem\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let out = crate::helpers::sluice_command()
        .args(["--config"])
        .arg(&config)
        .env(
            "SLUICE_DATABASE_URL",
            format!("sqlite://{}/x.db", dir.path().display()),
        )
        .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
        .env("SLUICE_HTTP_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TCP_LISTEN", "")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[http.tls]") && err.contains("does not match"),
        "{err}"
    );
}
