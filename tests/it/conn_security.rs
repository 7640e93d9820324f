//! The replication connection's security settings, as libpq has them, against a real
//! PostgreSQL with TLS: client certificates (pg_hba `cert`), SCRAM channel binding
//! (`channel_binding=require`), `require_auth`, and the operating-system user as the default
//! user. Each runs `walhalla receive --endpos`, so the replication connection itself is proven.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;

use crate::harness::{
    Backend, PgCluster, Receiver, TestArchive, TestCa, TestDir, Walhalla, describe,
};
use crate::receive::fails_at_once;

/// Writes `text` to `path`, owned by PostgreSQL's user (who runs the server and the
/// receivers), mode 0600.
fn private_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    if crate::harness::running_as_root() {
        let chown = Command::new("chown").arg("postgres:").arg(path).output();
        assert!(chown.unwrap().status.success());
    }
}

/// A CA; a server certificate for 127.0.0.1 and a client certificate for user `u_cert`,
/// both signed by it. Returns the CA file and the client's certificate and key.
fn pki(pg: &PgCluster, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca = TestCa::new();
    let leaf = |san: &str, cn: &str, purpose| ca.leaf(san, cn, purpose);
    let (cert, key) = leaf(
        "127.0.0.1",
        "127.0.0.1",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    private_file(&pg.data.join("server.crt"), &cert);
    private_file(&pg.data.join("server.key"), &key);
    private_file(&pg.data.join("client-ca.crt"), &ca.pem());
    let ca_file = dir.join("ca.crt");
    private_file(&ca_file, &ca.pem());
    let (cert, key) = leaf("u_cert", "u_cert", ExtendedKeyUsagePurpose::ClientAuth);
    let (client_cert, client_key) = (dir.join("client.crt"), dir.join("client.key"));
    private_file(&client_cert, &cert);
    private_file(&client_key, &key);
    (ca_file, client_cert, client_key)
}

/// Starts `walhalla receive -d CONNINFO` on slot `s` up to the server's current position,
/// with `env` added to its environment.
fn receive_to_now(
    wh: &Walhalla,
    archive: &TestArchive,
    pg: &PgCluster,
    conninfo: &str,
    env: &[(&str, &str)],
) -> Receiver {
    let end = pg.sql("SELECT pg_current_wal_lsn()");
    let mut vars = archive.env();
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let args = ["-d", conninfo, "-S", "s", "--create-slot", "--endpos", &end];
    Receiver::start_via(wh, archive, vars, &args)
}

/// Waits for a receiver started by [`receive_to_now`] to reach its end position.
fn reaches_the_end(mut receiver: Receiver) {
    let status = receiver
        .wait(Duration::from_secs(60))
        .expect("--endpos must end the receiver");
    assert!(status.success(), "{status:?}\n{}", receiver.log());
}

#[test]
fn client_certificates_channel_binding_and_require_auth() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    let dir = TestDir::new("pki");
    let (ca, cert, key) = pki(&pg, dir.path());
    let hba = pg.data.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "hostssl replication u_cert 127.0.0.1/32 cert\n\
             hostssl replication u_scram 127.0.0.1/32 scram-sha-256\n\
             host replication u_scram 127.0.0.1/32 trust\n\
             host replication u_password 127.0.0.1/32 password\n{original}"
        ),
    )
    .unwrap();
    pg.append_conf(
        "ssl = on\nssl_ca_file = 'client-ca.crt'\npassword_encryption = 'scram-sha-256'",
    );
    pg.start();
    pg.sql("CREATE ROLE u_cert LOGIN REPLICATION");
    pg.sql("CREATE ROLE u_scram LOGIN REPLICATION PASSWORD 'secret-s'");
    pg.sql("CREATE ROLE u_password LOGIN REPLICATION PASSWORD 'secret-p'");
    // One slot, dropped between runs that create it again.
    let drop_slot = || {
        pg.sql("SELECT count(pg_drop_replication_slot('s')) FROM pg_replication_slots WHERE slot_name = 's'")
    };
    let tls = format!(
        "host=127.0.0.1 port={} sslmode=verify-full sslrootcert={}",
        pg.port,
        ca.display()
    );

    // pg_hba `cert`: the client certificate from sslcert/sslkey...
    let explicit = format!(
        "{tls} user=u_cert sslcert={} sslkey={}",
        cert.display(),
        key.display()
    );
    reaches_the_end(receive_to_now(&wh, &archive, &pg, &explicit, &[]));
    drop_slot();
    // ...or from ~/.postgresql/postgresql.crt and .key.
    let home = TestDir::new("home");
    let dot = home.subdir(".postgresql");
    private_file(
        &dot.join("postgresql.crt"),
        &std::fs::read_to_string(&cert).unwrap(),
    );
    private_file(
        &dot.join("postgresql.key"),
        &std::fs::read_to_string(&key).unwrap(),
    );
    let home_path = home.path().to_str().unwrap();
    let default = format!("{tls} user=u_cert");
    reaches_the_end(receive_to_now(
        &wh,
        &archive,
        &pg,
        &default,
        &[("HOME", home_path)],
    ));
    drop_slot();
    // Without a certificate the server refuses; a key others can read is refused here first.
    let log = fails_at_once(receive_to_now(&wh, &archive, &pg, &default, &[]));
    assert!(log.contains("certificate"), "{log}");
    std::fs::set_permissions(
        dot.join("postgresql.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let log = fails_at_once(receive_to_now(
        &wh,
        &archive,
        &pg,
        &default,
        &[("HOME", home_path)],
    ));
    assert!(log.contains("has group or world access"), "{log}");

    // SCRAM over TLS bound to the channel (SCRAM-SHA-256-PLUS), with require_auth.
    let bound = format!(
        "{tls} user=u_scram password=secret-s channel_binding=require require_auth=scram-sha-256"
    );
    reaches_the_end(receive_to_now(&wh, &archive, &pg, &bound, &[]));
    drop_slot();
    // The same user without TLS meets `trust`: channel binding cannot have happened.
    let plain = format!(
        "host=127.0.0.1 port={} sslmode=disable user=u_scram channel_binding=require",
        pg.port
    );
    let log = fails_at_once(receive_to_now(&wh, &archive, &pg, &plain, &[]));
    assert!(
        log.contains(
            "channel binding required, but server authenticated client without channel binding"
        ),
        "{log}"
    );
    let trusting = format!(
        "host=127.0.0.1 port={} sslmode=disable user=u_scram require_auth=scram-sha-256",
        pg.port
    );
    let log = fails_at_once(receive_to_now(&wh, &archive, &pg, &trusting, &[]));
    assert!(
        log.contains("server did not complete authentication"),
        "{log}"
    );

    // require_auth=scram-sha-256 does not send a password to a server asking for it in clear.
    let cleartext = format!(
        "host=127.0.0.1 port={} sslmode=prefer user=u_password password=secret-p require_auth=scram-sha-256",
        pg.port
    );
    let log = fails_at_once(receive_to_now(&wh, &archive, &pg, &cleartext, &[]));
    assert!(
        log.contains(
            "authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password"
        ),
        "{log}"
    );
    assert!(
        !pg.log().contains("password authentication failed"),
        "a password was sent"
    );
}

#[test]
fn without_user_the_receiver_connects_as_its_operating_system_user() {
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    pg.start();
    // The receiver runs as PostgreSQL's user when the tests run as root, else as this user.
    let id = crate::harness::as_pg_user("id")
        .arg("-un")
        .output()
        .unwrap();
    assert!(id.status.success(), "{}", describe(&id));
    let os_user = String::from_utf8(id.stdout).unwrap().trim().to_string();
    if os_user != "postgres" {
        pg.sql(&format!("CREATE ROLE \"{os_user}\" LOGIN REPLICATION"));
    }
    let conninfo = format!("host=127.0.0.1 port={}", pg.port);
    // USER names another user, PGUSER is unset: libpq ignores the first.
    let env = [
        ("USER", "no-such-user"),
        ("LOGNAME", "no-such-user"),
        ("PGUSER", ""),
    ];
    reaches_the_end(receive_to_now(&wh, &archive, &pg, &conninfo, &env));
    // Connecting as USER (a role that does not exist) would have failed at once.
    let slot = pg.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 's'");
    assert_eq!(slot, "1");
}

/// `sslmode` tries with and without TLS in libpq's order, on the replication connection and
/// on the SQL connection (`check`; `receive` asks its slot over one): `prefer` goes on without
/// TLS when the server refuses the TLS session (`hostnossl` lines only), `allow` with TLS when
/// it refuses the plain one. And the SQL connection keeps `require_auth` (helper-73: `check`
/// sent a password in clear to a server asking for `password`).
#[test]
fn both_connections_try_tls_as_libpq_does_and_the_sql_one_keeps_require_auth() {
    use crate::check::{check_as, said, verdict};
    let wh = Walhalla::install();
    let archive = TestArchive::new(Backend::Local);
    let mut pg = PgCluster::init("primary");
    let (_pki, _ca) = pg.enable_tls();
    let hba = pg.data.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "hostnossl all u_plain 127.0.0.1/32 trust\n\
             hostnossl replication u_plain 127.0.0.1/32 trust\n\
             hostssl all u_plain 127.0.0.1/32 reject\n\
             hostssl replication u_plain 127.0.0.1/32 reject\n\
             hostssl all u_tls 127.0.0.1/32 trust\n\
             hostssl replication u_tls 127.0.0.1/32 trust\n\
             hostnossl all u_tls 127.0.0.1/32 reject\n\
             hostnossl replication u_tls 127.0.0.1/32 reject\n\
             hostssl all u_tls_pw 127.0.0.1/32 password\n\
             hostnossl all u_tls_pw 127.0.0.1/32 reject\n\
             host all u_password 127.0.0.1/32 password\n\
             hostssl postgres u_own 127.0.0.1/32 reject\n\
             hostssl all u_own 127.0.0.1/32 password\n\
             hostnossl all u_own 127.0.0.1/32 reject\n{original}"
        ),
    )
    .unwrap();
    pg.start();
    for role in ["u_plain", "u_tls"] {
        pg.sql(&format!("CREATE ROLE {role} LOGIN SUPERUSER"));
    }
    pg.sql("CREATE ROLE u_password LOGIN SUPERUSER PASSWORD 'secret-p'");
    pg.sql("CREATE ROLE u_tls_pw LOGIN SUPERUSER PASSWORD 'secret-t'");
    pg.sql("CREATE ROLE u_own LOGIN SUPERUSER PASSWORD 'secret-o'");
    pg.sql("CREATE DATABASE u_own OWNER u_own");
    let as_user =
        |user: &str, more: &str| format!("host=127.0.0.1 port={} user={user} {more}", pg.port);

    // The default sslmode, prefer: the TLS session is refused, the plain one accepted.
    let (_, report) = check_as(&wh, &archive, &as_user("u_plain", ""), &["--wait", "5"]);
    assert_eq!(verdict(&report, "connection"), "pass", "{report:#}");
    assert!(
        said(&report, "connection").contains("without TLS"),
        "{report:#}"
    );
    reaches_the_end(receive_to_now(
        &wh,
        &archive,
        &pg,
        &as_user("u_plain", ""),
        &[],
    ));
    pg.sql("SELECT pg_drop_replication_slot('s')");
    // allow: the plain session is refused, the TLS one accepted.
    let allow = as_user("u_tls", "sslmode=allow");
    let (_, report) = check_as(&wh, &archive, &allow, &["--wait", "5"]);
    assert_eq!(verdict(&report, "connection"), "pass", "{report:#}");
    assert!(
        said(&report, "connection").contains("over TLS"),
        "{report:#}"
    );
    reaches_the_end(receive_to_now(&wh, &archive, &pg, &allow, &[]));
    // disable never tries TLS: both ways are named only when both were tried.
    let (_, report) = check_as(
        &wh,
        &archive,
        &as_user("u_tls", "sslmode=disable"),
        &["--wait", "5"],
    );
    assert_eq!(verdict(&report, "connection"), "fail", "{report:#}");
    assert!(
        !said(&report, "connection").contains("with TLS"),
        "{report:#}"
    );

    // Without a dbname the SQL connection goes to `postgres` first: a role without a
    // database of its name leaves no FATAL line in the server's log.
    let tls_pw = as_user("u_tls_pw", "password=secret-t");
    let (_, report) = check_as(&wh, &archive, &tls_pw, &["--wait", "5"]);
    assert_eq!(verdict(&report, "connection"), "pass", "{report:#}");
    assert!(
        said(&report, "connection").contains("over TLS"),
        "{report:#}"
    );
    assert!(
        !pg.log().contains("database \"u_tls_pw\" does not exist"),
        "{}",
        pg.log()
    );
    // A role kept out of `postgres` reaches its own database, over TLS still.
    let own = as_user("u_own", "password=secret-o");
    let (_, report) = check_as(&wh, &archive, &own, &["--wait", "5"]);
    assert_eq!(verdict(&report, "connection"), "pass", "{report:#}");
    assert!(
        said(&report, "connection").contains("over TLS"),
        "{report:#}"
    );
    // Once the server has let the client in over TLS, an error (a database that does not
    // exist) is not tried again without TLS, which would send the password in the clear
    // (review).
    let missing_db = as_user("u_tls_pw", "password=secret-t dbname=no_such_db");
    let (_, report) = check_as(&wh, &archive, &missing_db, &["--wait", "5"]);
    assert_eq!(verdict(&report, "connection"), "fail", "{report:#}");
    assert!(
        pg.log().contains("database \"no_such_db\" does not exist"),
        "{}",
        pg.log()
    );
    assert!(
        !pg.log()
            .contains("user \"u_tls_pw\", database \"no_such_db\", no encryption"),
        "tried again without TLS after logging in: {}",
        pg.log()
    );

    // require_auth on the SQL connection: the password is never sent.
    let cleartext = as_user(
        "u_password",
        "password=wrong-p require_auth=scram-sha-256 sslmode=disable",
    );
    let (code, report) = check_as(&wh, &archive, &cleartext, &["--wait", "5"]);
    assert_eq!(code, 1, "{report:#}");
    assert!(
        said(&report, "connection").contains(
            "authentication method requirement \"scram-sha-256\" failed: server requested a cleartext password"
        ),
        "{report:#}"
    );
    assert!(
        !pg.log().contains("password authentication failed"),
        "a password was sent: {}",
        pg.log()
    );
    // Allowed, it is sent (and refused: the password is wrong).
    let allowed = as_user(
        "u_password",
        "password=wrong-p require_auth=password sslmode=disable",
    );
    let (_, report) = check_as(&wh, &archive, &allowed, &["--wait", "5"]);
    assert_eq!(verdict(&report, "connection"), "fail", "{report:#}");
    assert!(
        pg.log().contains("password authentication failed"),
        "{report:#}"
    );
}
