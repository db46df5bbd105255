//! Databases over TLS, for real: a throwaway PostgreSQL cluster of the test's own
//! (`initdb` into a temporary directory, a free port, a certificate made by `rcgen`),
//! first without TLS, then TLS-only; and a throwaway MariaDB server that requires
//! secure transport. Sluice connects with the URL parameters the databases' own clients
//! use (`sslmode`, `sslrootcert`; `ssl-mode`, `ssl-ca`).

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use crate::helpers::{fixture_schemas, sluice_command, spawn_binary, Db, TestDb};

/// The PostgreSQL server binaries, if installed.
fn pg_bin() -> Option<PathBuf> {
    let dir = std::fs::read_dir("/usr/lib/postgresql").ok()?;
    let mut versions: Vec<PathBuf> = dir.flatten().map(|e| e.path().join("bin")).collect();
    versions.sort();
    versions.pop().filter(|b| b.join("initdb").exists())
}

/// Runs `program` as the `postgres` user (PostgreSQL refuses to run as root).
fn as_postgres(program: &Path, args: &[&str]) -> std::process::Output {
    let mut c = if nix_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    c.args(args).output().expect("the PostgreSQL tool runs")
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// A PostgreSQL cluster in a temporary directory, stopped when dropped.
struct Throwaway {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Throwaway {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start(&self) {
        let data = self.data();
        let log = self.dir.path().join("log");
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop(&self) {
        as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ],
        );
    }

    /// Writes the settings and the access rules: TLS-only (`hostssl`) or plain.
    fn configure(&self, tls: bool) {
        let data = self.data();
        let ssl = if tls {
            "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
        } else {
            "ssl = off\n"
        };
        std::fs::write(
            data.join("postgresql.auto.conf"),
            format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n{ssl}",
                self.port,
                self.dir.path().display()
            ),
        )
        .unwrap();
        let rule = if tls { "hostssl" } else { "host" };
        std::fs::write(
            data.join("pg_hba.conf"),
            format!("{rule} all all 127.0.0.1/32 trust\n"),
        )
        .unwrap();
    }

    fn url(&self, params: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{params}",
            self.port
        )
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `None` (SKIPPED) without PostgreSQL's server binaries, unless CI requires them.
fn throwaway_cluster() -> Option<Throwaway> {
    let Some(bin) = pg_bin() else {
        crate::helpers::skip("a PostgreSQL TLS test: its server binaries (/usr/lib/postgresql/*/bin) are missing; install postgresql");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    if nix_is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let out = as_postgres(
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
    );
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(Throwaway {
        bin,
        dir,
        port: free_port(),
    })
}

/// A CA's PEM, and a server certificate for 127.0.0.1 signed by it (PEM cert, key).
fn issue() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sluice test database CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// Writes a CA and a server certificate for 127.0.0.1 into the cluster; returns the
/// CA's file.
fn install_certificate(cluster: &Throwaway) -> PathBuf {
    let (ca_pem, cert_pem, key_pem) = issue();
    let data = cluster.data();
    std::fs::write(data.join("server.crt"), cert_pem).unwrap();
    std::fs::write(data.join("server.key"), key_pem).unwrap();
    if nix_is_root() {
        Command::new("chown")
            .args(["postgres:"])
            .arg(data.join("server.crt"))
            .arg(data.join("server.key"))
            .status()
            .unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        data.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let ca_file = cluster.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    ca_file
}

/// `sluice check` does not connect; a quick start with `--config` does.
fn start_fails_with(url: &str) -> String {
    let out = sluice_command()
        .env("SLUICE_DATABASE_URL", url)
        .env("SLUICE_SCHEMAS_DIR", fixture_schemas())
        .env("SLUICE_HTTP_LISTEN", "127.0.0.1:0")
        .env("SLUICE_TCP_LISTEN", "")
        .env("SLUICE_DATABASE_ACQUIRE_TIMEOUT", "3s")
        .output()
        .unwrap();
    assert!(!out.status.success(), "Sluice must not start with {url}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_server_and_require_fails_clearly_without_tls() {
    let Some(cluster) = throwaway_cluster() else {
        return;
    };
    // 1. A server without TLS: sslmode=require refuses it, saying why.
    cluster.configure(false);
    cluster.start();
    let err = start_fails_with(&cluster.url("sslmode=require"));
    assert!(
        err.to_lowercase().contains("tls") || err.to_lowercase().contains("ssl"),
        "the error says TLS is the problem: {err}"
    );
    cluster.stop();

    // 2. TLS only: verify-full against our CA works; without TLS the server refuses.
    let ca = install_certificate(&cluster);
    cluster.configure(true);
    cluster.start();
    let url = cluster.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let tls_db = TestDb::external(Db::Postgres, url.clone());
    let sluice = spawn_binary(None, &tls_db, &[]);
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/streams/reading/events", sluice.http))
        .body(r#"{"seq": 1, "sensor": "tls", "value": 2.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (status, _) = sluice.terminate().await;
    assert!(status.success());
    // Read back over TLS with our own client.
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&url)
        .await
        .expect("TLS connection");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM reading WHERE sensor = 'tls'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(ssl, "the connection is encrypted");
    let err = start_fails_with(&cluster.url("sslmode=disable"));
    assert!(
        err.contains("pg_hba.conf") || err.to_lowercase().contains("ssl"),
        "{err}"
    );
    // verify-full with a CA that did not sign the server's certificate is refused.
    let other_ca = cluster.dir.path().join("other-ca.pem");
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    std::fs::write(
        &other_ca,
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem(),
    )
    .unwrap();
    let err = start_fails_with(&cluster.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    )));
    assert!(err.to_lowercase().contains("certificate"), "{err}");
}

/// A MariaDB server in a temporary directory that requires TLS; killed when dropped.
struct ThrowawayMariadb {
    child: std::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for ThrowawayMariadb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ThrowawayMariadb {
    fn url(&self, db: &str, params: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}?{params}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// `None` (SKIPPED) without MariaDB's server, unless CI requires it.
fn throwaway_mariadb() -> Option<ThrowawayMariadb> {
    let server = Path::new("/usr/sbin/mariadbd");
    if !server.exists() {
        crate::helpers::skip("a MariaDB TLS test: its server (/usr/sbin/mariadbd) is missing; install mariadb-server");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let user = if nix_is_root() { "root" } else { "" };
    let mut install = Command::new("mariadb-install-db");
    install
        .arg("--no-defaults")
        .arg(format!("--datadir={}", d.join("data").display()))
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
    if !user.is_empty() {
        install.arg(format!("--user={user}"));
    }
    let out = install.output().expect("mariadb-install-db runs");
    assert!(
        out.status.success(),
        "mariadb-install-db: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ca, cert, key) = issue();
    std::fs::write(d.join("ca.pem"), ca).unwrap();
    std::fs::write(d.join("server.crt"), cert).unwrap();
    std::fs::write(d.join("server.key"), key).unwrap();
    let port = free_port();
    let mut server_cmd = Command::new(server);
    server_cmd
        .arg("--no-defaults")
        .arg(format!("--datadir={}", d.join("data").display()))
        .arg(format!("--socket={}", d.join("sock").display()))
        .arg(format!("--pid-file={}", d.join("pid").display()))
        .arg(format!("--port={port}"))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-log-bin",
            "--require-secure-transport=ON",
        ])
        .arg(format!("--ssl-ca={}", d.join("ca.pem").display()))
        .arg(format!("--ssl-cert={}", d.join("server.crt").display()))
        .arg(format!("--ssl-key={}", d.join("server.key").display()))
        .arg(format!("--log-error={}", d.join("error.log").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if !user.is_empty() {
        server_cmd.arg(format!("--user={user}"));
    }
    let child = server_cmd.spawn().expect("mariadbd starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mariadbd did not listen: {}",
            std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Some(ThrowawayMariadb { child, dir, port })
}

#[tokio::test]
async fn mariadb_over_tls_verifies_the_server_and_plain_connections_are_refused() {
    let Some(server) = throwaway_mariadb() else {
        return;
    };
    let verify = format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={}", server.ca().display());
    use sqlx::Connection;
    let mut c = sqlx::MySqlConnection::connect(&server.url("mysql", &verify))
        .await
        .expect("a verified TLS connection");
    sqlx::query("CREATE DATABASE sluice_tls CHARACTER SET utf8mb4")
        .execute(&mut c)
        .await
        .unwrap();
    let url = server.url("sluice_tls", &verify);
    let db = TestDb::external(Db::Mysql, url.clone());
    let sluice = spawn_binary(None, &db, &[]);
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/streams/reading/events", sluice.http))
        .body(r#"{"seq": 1, "sensor": "tls", "value": 2.5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let (status, _) = sluice.terminate().await;
    assert!(status.success());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sluice_tls.reading WHERE sensor = 'tls'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let cipher: (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(!cipher.1.is_empty(), "the connection is encrypted");
    // The same user and database without TLS: the server refuses (MariaDB answers a
    // plain connection under require_secure_transport with "access denied").
    let err = start_fails_with(&server.url("sluice_tls", "ssl-mode=DISABLED"));
    assert!(
        err.to_lowercase().contains("secure transport") || err.contains("Access denied"),
        "{err}"
    );
}
