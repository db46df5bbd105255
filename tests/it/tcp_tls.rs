//! The TCP listener over TLS (`[tcp.tls]`), with client certificates (`client_ca`):
//! rsyslog's own TLS driver (`omfwd` with `gtls`, mutual x509 authentication) ships
//! 20,000 lines that are stored verbatim; a client without a certificate, and a
//! plain-text client, are closed before a line is read. `[http.tls] client_ca` does the
//! same for HTTPS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{skip, spawn_binary, Binary, Db, TestDb};

/// A CA, a server certificate (`CN=sluice.test`, for 127.0.0.1) and client
/// certificates it signed, as PEM files in a directory.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(clients: &[&str]) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Sluice test shippers CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let issue = |name: &str, sans: Vec<String>| {
            let mut params = CertificateParams::new(sans).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        issue(
            "sluice.test",
            vec!["sluice.test".into(), "127.0.0.1".into(), "localhost".into()],
        );
        for client in clients {
            issue(client, Vec::new());
        }
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(file)).unwrap()
    }

    /// A config file with `[tcp.tls]` (and `client_ca` when `mutual`).
    fn config(&self, mutual: bool) -> String {
        let path = self.dir.path().join("sluice.toml");
        let mut text = format!(
            "[tcp.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.path("sluice.test.pem"),
            self.path("sluice.test.key")
        );
        if mutual {
            text.push_str(&format!("client_ca = \"{}\"\n", self.path("ca.pem")));
        }
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}

fn start(db: &TestDb, config: String) -> Binary {
    spawn_binary(
        None,
        db,
        &[
            ("SLUICE_CONFIG", config),
            ("SLUICE_TCP_LISTEN", "127.0.0.1:0".into()),
        ],
    )
}

/// A rustls client trusting the test CA, presenting `identity` (a client name) if any.
fn tls_client(pki: &Pki, identity: Option<&str>) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pki.read("ca.pem")) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(name) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&pki.read(&format!("{name}.pem")))
                    .map(Result::unwrap)
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(&pki.read(&format!("{name}.key"))).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends `lines` over TLS and reads until the server closes; `Err` when the
/// connection is refused at any point.
async fn send_tls(
    addr: &str,
    connector: tokio_rustls::TlsConnector,
    lines: &str,
) -> std::io::Result<()> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls_pki_types::ServerName::try_from("sluice.test").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(lines.as_bytes()).await?;
    tls.flush().await?;
    // TLS 1.3 finishes the client's side of the handshake before the server has
    // checked the client certificate: a refusal shows on the next read.
    let mut buf = [0u8; 1];
    if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(500), tls.read(&mut buf)).await {
        return Err(e);
    }
    tls.shutdown().await?;
    Ok(())
}

fn log_line(n: usize) -> String {
    format!(
        "{{\"stream\": \"app_log\", \"message\": \"line {n}: GET /checkout?id={n} 200 \\\"ok\\\"\", \"timestamp\": \"2026-01-01T00:00:00Z\", \"host\": \"web-1\"}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_certificate_and_plain_text_are_closed_before_a_line_is_read() {
    let pki = Pki::new(&["good-client"]);
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = start(&db, pki.config(true));
    let addr = sluice.tcp.clone().expect("the TCP listener");

    // Plain text on the TLS port: nothing is read as a line.
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    plain.write_all(log_line(1).as_bytes()).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut rest)).await;
    // A TLS client without a certificate: refused.
    let refused = send_tls(&addr, tls_client(&pki, None), &log_line(2)).await;
    assert!(
        refused.is_err(),
        "a client without a certificate is refused"
    );
    // The client with a certificate: its lines are stored, and its dead letters name it.
    let good = format!(
        "{}{{\"stream\": \"app_log\", \"level\": \"loud\"}}\n",
        log_line(3)
    );
    send_tls(&addr, tls_client(&pki, Some("good-client")), &good)
        .await
        .unwrap();
    db.wait_for_count("app_log", 1).await;
    db.wait_for_dead_letters(1).await;
    let letters = db.dead_letters().await;
    let source = letters[0][4].clone().unwrap_or_default();
    assert!(source.contains("CN=good-client"), "{source}");
    assert_eq!(
        db.values("app_log", "message").await,
        vec![Some("line 3: GET /checkout?id=3 200 \"ok\"".to_owned())],
        "only the certified client's line"
    );
    let refused = crate::helpers::metric(&sluice.http, "sluice_tcp_tls_refused_total", "").await;
    assert!(refused.is_some_and(|n| n >= 2.0), "{refused:?}");
    // SIGHUP reloads the TCP listener's certificate and client CA too.
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &sluice.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    sluice.log_until(10, |l| {
        l.contains("TLS certificate reloaded") && l.contains("[tcp.tls]")
    });
    send_tls(&addr, tls_client(&pki, Some("good-client")), &log_line(4))
        .await
        .unwrap();
    db.wait_for_count("app_log", 2).await;
    sluice.terminate().await;
}

/// rsyslog's `omfwd` with its GnuTLS driver, mutual x509 (`x509/name`: it checks that
/// the server is `sluice.test`, Sluice checks its client certificate), forwards 20,000
/// lines it received; each is stored verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_ships_20000_lines_over_mutual_tls() {
    let gtls = Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so");
    if !gtls.exists()
        || std::process::Command::new("rsyslogd")
            .arg("-v")
            .output()
            .is_err()
    {
        skip("the rsyslog TLS test (Debian packages rsyslog and rsyslog-gnutls; .ci/run installs them)");
        return;
    }
    let pki = Pki::new(&["rsyslog-client"]);
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let sluice = start(&db, pki.config(true));
    let sluice_tcp: std::net::SocketAddr = sluice.tcp.clone().unwrap().parse().unwrap();
    let input_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let work = pki.dir.path().join("rsyslog");
    std::fs::create_dir_all(&work).unwrap();
    let conf = pki.dir.path().join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            r#"global(workDirectory="{work}"
       DefaultNetstreamDriverCAFile="{ca}"
       DefaultNetstreamDriverCertFile="{cert}"
       DefaultNetstreamDriverKeyFile="{key}"
       maxMessageSize="64k")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{input_port}")
template(name="line" type="string" string="%rawmsg%\n")
action(type="omfwd" target="127.0.0.1" port="{port}" protocol="tcp" template="line"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
       StreamDriverPermittedPeers="sluice.test"
       queue.type="LinkedList" queue.size="100000" action.resumeRetryCount="-1")
"#,
            work = work.display(),
            ca = pki.path("ca.pem"),
            cert = pki.path("rsyslog-client.pem"),
            key = pki.path("rsyslog-client.key"),
            port = sluice_tcp.port(),
        ),
    )
    .unwrap();
    let mut rsyslog = std::process::Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(pki.dir.path().join("rsyslog.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _guard = Kill(&mut rsyslog);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut input = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", input_port)).await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "rsyslog never listened: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let lines: String = (0..20_000).map(log_line).collect();
    input.write_all(lines.as_bytes()).await.unwrap();
    input.shutdown().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let n = db.count("app_log").await;
        if n == 20_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{n} of 20,000 lines arrived; dead letters: {:?}",
            db.dead_letters()
                .await
                .into_iter()
                .take(3)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(db.distinct("app_log", "message").await, 20_000);
    let sample = db
        .query("SELECT message, host FROM app_log WHERE message LIKE 'line 12345:%'")
        .await;
    assert_eq!(
        sample,
        vec![vec![
            Some("line 12345: GET /checkout?id=12345 200 \"ok\"".to_owned()),
            Some("web-1".to_owned())
        ]]
    );
    assert_eq!(db.count("sluice_dead_letters").await, 0);
    sluice.terminate().await;
}

/// `[http.tls] client_ca`: HTTPS without a client certificate is refused, with one the
/// event is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_client_ca_requires_a_client_certificate() {
    let pki = Pki::new(&["app-client"]);
    let db = TestDb::create(Db::Sqlite).await.unwrap();
    let config = pki.dir.path().join("https.toml");
    std::fs::write(
        &config,
        format!(
            "[http]\nallowed_hosts = [\"sluice.test\"]\n[http.tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n",
            pki.path("sluice.test.pem"),
            pki.path("sluice.test.key"),
            pki.path("ca.pem")
        ),
    )
    .unwrap();
    let sluice = spawn_binary(
        None,
        &db,
        &[("SLUICE_CONFIG", config.display().to_string())],
    );
    let client = |identity: Option<reqwest::Identity>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pki.read("ca.pem")).unwrap())
            .resolve("sluice.test", sluice.http.parse().unwrap());
        if let Some(identity) = identity {
            b = b.identity(identity);
        }
        b.build().unwrap()
    };
    let port = sluice.http.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://sluice.test:{port}/v1/streams/app_log/events");
    let event = r#"{"message": "hello", "timestamp": "2026-01-01T00:00:00Z"}"#;
    let without = client(None)
        .post(&url)
        .header("content-type", "application/json")
        .body(event)
        .send()
        .await;
    assert!(
        without.is_err(),
        "refused without a client certificate: {without:?}"
    );
    let mut pem = pki.read("app-client.pem");
    pem.extend(pki.read("app-client.key"));
    let with = client(Some(reqwest::Identity::from_pem(&pem).unwrap()))
        .post(&url)
        .header("content-type", "application/json")
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(with.status(), 200);
    assert_eq!(db.count("app_log").await, 1);
    sluice.terminate().await;
}
