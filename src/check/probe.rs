//! Whether the archive can be reached, written, and refuses to overwrite: the create-only
//! rule every WAL object relies on; and whether the fetch server restore_command asks answers.

use std::time::Duration;

use super::Check;
use super::commands::HookCommand;
use crate::archive::probe::{ConditionalWrites, conditional_writes};
use crate::archive::{Archive, Location};
use crate::client::{ServerClient, ServerError};
use crate::wal::SystemId;

/// The check `archive_reachable` for `archive`, saying whether it holds WAL of `system_id`
/// yet (a new cluster's first segment may still be on its way: the round trip decides); and
/// whether it could be listed at all.
pub async fn reachable(archive: &Archive, system_id: Option<SystemId>) -> (Check, bool) {
    let location = archive.location();
    let clusters = match archive.clusters().await {
        Ok(clusters) => clusters,
        Err(e) => {
            let check = Check::fail(
                "archive_reachable",
                format!("cannot list {location}: {e}"),
                "check the archive URL, the credentials (AWS_*) and that this host reaches it",
            );
            return (check, false);
        }
    };
    let this_one = match system_id {
        Some(id) if clusters.contains(&id) => format!(", this cluster ({id}) among them"),
        Some(id) => format!(", nothing yet of this cluster ({id})"),
        None => String::new(),
    };
    let detail = format!("{location} lists {} cluster(s){this_one}", clusters.len());
    (Check::pass("archive_reachable", detail), true)
}

/// The checks `archive_writable` and `archive_create_only`, by the probe walhalla runs on a
/// store's first use ([`conditional_writes`]): a scratch object stored, then different bytes
/// under the same key, which the archive must refuse; the object is removed.
pub async fn create_only(archive: &Archive) -> Vec<Check> {
    match conditional_writes(archive).await {
        Ok(ConditionalWrites::Honoured) => vec![
            Check::pass("archive_writable", "stored a scratch object"),
            Check::pass(
                "archive_create_only",
                "different bytes under an existing key were refused",
            ),
        ],
        Ok(ConditionalWrites::Ignored(seen)) => vec![
            Check::pass("archive_writable", "stored a scratch object"),
            Check::fail(
                "archive_create_only",
                seen,
                "the store ignores create-only writes (S3 If-None-Match: *): an archived segment could be replaced; use a store that honours conditional writes",
            ),
        ],
        Err(e) => vec![
            Check::fail(
                "archive_writable",
                format!("cannot store a scratch object: {e}"),
                match archive.location() {
                    Location::Local(_) => {
                        "let the user PostgreSQL runs as write into the directory (its owner, or its group with write permission)"
                    }
                    Location::S3 { .. } => {
                        "give this host write access: s3:PutObject and s3:DeleteObject on the bucket"
                    }
                    _ => "give this host write access to the bucket (create and delete objects)",
                },
            ),
            Check::skip("archive_create_only", "the archive cannot be written"),
        ],
    }
}

/// The check `fetch_server`, where restore_command runs walhalla with a fetch server: whether
/// that server, reached as restore_command reaches it, answers `/healthz` (which needs no
/// token) within `timeout`, and accepts the token of the file restore_command names
/// ([`token_tried`]).
pub async fn fetch_server(restore_hook: &HookCommand, timeout: Duration) -> Option<Check> {
    const NAME: &str = "fetch_server";
    if !restore_hook.runs_walhalla {
        return None;
    }
    let mut settings = restore_hook.fetch_server.clone();
    // Without a token file named, fetch sends its user's default token, which need not be
    // the one of the user running check: only a named file's token is tried, when it can be.
    let token = settings.token_file.take().map(|file| {
        let readable = if file.is_relative() {
            Err("a relative path, which restore_command reads in the data directory".to_string())
        } else {
            crate::server::token::read(&file).map_err(|e| format!("{e:#}"))
        };
        if readable.is_ok() {
            settings.token_file = Some(file.clone());
        }
        (file, readable.map(drop))
    });
    let client = match ServerClient::new(&settings, timeout) {
        Ok(client) => client?,
        Err(e) => {
            return Some(Check::fail(
                NAME,
                format!("{e:#}"),
                "fix --server and its TLS files in restore_command (the files are read on this host)",
            ));
        }
    };
    if let Err(e) = client.healthz().await {
        return Some(Check::fail(
            NAME,
            format!("{e:#}"),
            "start walhalla serve (or receive --listen) there, or fix --server in restore_command: until it answers, fetch reads the archive directly, if it has one",
        ));
    }
    let answers = format!("{} answers /healthz", client.url());
    Some(match token {
        None => Check::pass(NAME, answers),
        Some((file, Err(why))) => Check::pass(
            NAME,
            format!(
                "{answers}; the token in {} was not tried: {why}",
                file.display()
            ),
        ),
        Some((file, Ok(()))) => token_tried(NAME, &client, &file, answers).await,
    })
}

/// Whether the server accepts requests with the token in `file` (read already): it guards
/// `/metrics` as it guards `/wal`. Only a 401 or 403 fails: another answer (a proxy that keeps
/// `/metrics` to itself, a server gone since `/healthz`) says nothing of the token.
async fn token_tried(
    name: &'static str,
    client: &ServerClient,
    file: &std::path::Path,
    answers: String,
) -> Check {
    let file = file.display();
    match client.authorized().await {
        Ok(()) => Check::pass(
            name,
            format!("{answers} and accepts requests with the token in {file}"),
        ),
        Err(ServerError::Status {
            url, status, body, ..
        }) if matches!(status.as_u16(), 401 | 403) => {
            // The fix line says what to do: the error's own hint would say it twice.
            Check::fail(
                name,
                format!("server {url} answered {status}: {body}"),
                format!(
                    "{file}, the token file restore_command names, must hold the server's token (its --token-file, by default `token` in its user's state directory)"
                ),
            )
        }
        Err(e) => Check::pass(
            name,
            format!("{answers}; the token was not verified: {e:#}"),
        ),
    }
}
