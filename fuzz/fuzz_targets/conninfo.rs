//! Connection strings (`key=value` and `postgresql://` URIs), their masking for logs, and
//! password-file lines: never panics; whatever password a string gives the connection, its
//! masked form gives `********` (no password survives masking), and leaves the rest as it
//! was; a password-file line written for a host, port, database and user gives back its
//! password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walhalla::protocol::conninfo::{ConnParams, match_passfile_line};
use walhalla::settings::mask_conninfo;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |_: &str| None;
    let masked = mask_conninfo(text);
    if let Ok(params) = ConnParams::parse(text, &env) {
        let again = ConnParams::parse(&masked, &env)
            .unwrap_or_else(|e| panic!("{text:?} parses, its mask {masked:?} does not: {e}"));
        if params.password.is_some() {
            assert_eq!(
                again.password.as_deref(),
                Some("********"),
                "{text:?} -> {masked:?}"
            );
        } else {
            assert!(
                again.password.is_none() || again.password.as_deref() == Some("********"),
                "{text:?} -> {masked:?}"
            );
        }
        assert_eq!(format!("{:?}", params.hosts), format!("{:?}", again.hosts));
        assert_eq!(params.user, again.user);
        assert_eq!(params.dbname, again.dbname);
    }
    // A password-file line: the first four `:`-separated fields are what is wanted.
    let fields: Vec<&str> = text.splitn(5, ':').collect();
    if let [host, port, database, user, password] = fields[..] {
        let _ = match_passfile_line(text, &[host, port, database, user]);
        let escape = |f: &str| f.replace('\\', "\\\\").replace(':', "\\:");
        let line = [host, port, database, user, password].map(escape).join(":");
        assert_eq!(
            match_passfile_line(&line, &[host, port, database, user]).as_deref(),
            Some(password)
        );
    }
});
