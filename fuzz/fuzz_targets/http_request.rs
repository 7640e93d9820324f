//! The fetch server's requests: a path, a query and headers as a client sends them, through
//! the server's own router and token check: never panics; without the token only `/healthz`
//! answers, and no request makes it fail (5xx) but the one with no cluster to serve (503).
#![no_main]

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use walhalla::daemon::Shared;
use walhalla::server::auth::ServedToken;
use walhalla::server::router;

const TOKEN: &str = "fuzz-token";

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
});

fuzz_target!(|data: &[u8]| {
    // The first line is the path and query, each further line a `name: value` header.
    let mut lines = data.split(|&b| b == b'\n');
    let target = lines.next().unwrap_or_default();
    let mut request = Request::builder().uri(target);
    let mut token_sent = false;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let value = if value == b"TOKEN" {
            token_sent = true;
            format!("Bearer {TOKEN}").into_bytes()
        } else {
            value.to_vec()
        };
        request = request.header(name, value);
    }
    let Ok(request) = request.body(Body::empty()) else {
        return;
    };
    let path = request.uri().path().to_owned();
    let tokens = ServedToken::new(vec![TOKEN.to_owned()], None);
    let app = router(Arc::new(Shared::default()), Some(Arc::new(tokens)));
    let status = RUNTIME.block_on(app.oneshot(request)).unwrap().status();
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{path}: {status}"
    );
    if status.is_success() && path != "/healthz" {
        assert!(token_sent, "{path} answered {status} without the token");
    }
});
