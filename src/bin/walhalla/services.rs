//! The long-running commands: `receive` and `serve`, which stop cleanly on SIGTERM or SIGINT,
//! and `status`, which asks a running one how it is.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use walhalla::cli::{ClientArgs, ConnArgs, ListenArgs, ReceiveArgs};
use walhalla::client::ServerClient;
use walhalla::config::{Config, UsageError};
use walhalla::daemon::{ServedCluster, Shared};
use walhalla::hooks;
use walhalla::protocol::conninfo::ConnParams;
use walhalla::receiver::{Mode, ReceiveOptions};
use walhalla::server::Server;

use crate::output::{emit, pretty_json};

/// A watch that turns true at the first SIGTERM or SIGINT; a second one exits at once.
fn stop_on_signal(
    tokens: Option<Arc<walhalla::server::auth::ServedToken>>,
) -> anyhow::Result<watch::Receiver<bool>> {
    let (stop, stopped) = watch::channel(false);
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    // A hangup (a closed terminal, a reload) does not stop a daemon: it reads the fetch
    // server's token file again, when there is one.
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match &tokens {
                Some(tokens) => tokens.reload().await,
                None => tracing::info!("SIGHUP: nothing to read again (SIGTERM stops)"),
            }
        }
    });
    tokio::spawn(async move {
        for second in [false, true] {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if second {
                // What is not archived yet stays in the spool for the next start.
                tracing::warn!("second stop request: exiting without waiting for the archive");
                std::process::exit(1);
            }
            tracing::info!(
                "stop requested: archiving what is complete (a second signal exits at once)"
            );
            let _ = stop.send(true);
        }
    });
    Ok(stopped)
}

/// `walhalla serve`: the fetch server alone, for the cluster `--system-id` names, else the one
/// of a data directory it runs in, else the only one in the archive.
pub async fn serve(config: &Config, listen: &ListenArgs) -> anyhow::Result<()> {
    let options = listen.options();
    options.check()?;
    let archive = hooks::open_archive(config, false, None).await?;
    let system_id =
        hooks::resolve_system_id(config.system_id, std::path::Path::new("."), None, &archive)
            .await?;
    // A cluster named that the archive does not hold (yet): served all the same, since its
    // archiving may start later, but said, as every request would fail until then.
    if let Ok(held) = archive.clusters().await
        && !held.contains(&system_id)
    {
        let named = walhalla::archive::ChoiceError::NotHeld {
            named: system_id,
            held,
        };
        tracing::warn!("{named}: every request fails until it is archived there");
    }
    let cluster = ServedCluster {
        archive: archive.cluster(system_id),
        spool: None,
    };
    let shared = Arc::new(Shared::serving(archive, cluster));
    let server = Server::bind(&options, shared.clone()).await?;
    let stopped = stop_on_signal(server.token())?;
    if let Some(interval) = listen.survey_interval() {
        tokio::spawn(walhalla::survey::run(shared, interval, stopped.clone()));
    }
    server.run(stopped).await
}

/// `walhalla status`: a server's /status, for a person.
pub async fn status(
    config: &Config,
    client: &ClientArgs,
    json: bool,
    healthz: bool,
) -> anyhow::Result<()> {
    let mut settings = client.settings();
    let default_url = format!("http://{}", walhalla::server::DEFAULT_LISTEN);
    settings.server.get_or_insert(default_url);
    let client = ServerClient::new(&settings, config.timeout)?.expect("a server is set");
    if healthz {
        client.healthz().await?;
        emit("ok\n")?;
        return Ok(());
    }
    let status = client.status().await?;
    if json {
        emit(&pretty_json(&status)?)?;
    } else {
        emit(&walhalla::server::describe_status(&status))?;
    }
    Ok(())
}

/// `walhalla receive`: runs the receiver; SIGTERM or SIGINT ask it to finish cleanly.
pub async fn receive(config: &Config, args: ReceiveArgs) -> anyhow::Result<()> {
    // A listener that may not start is a configuration error: before anything else.
    args.listen.options().check()?;
    let conn = connection(&args.conn)?;
    let options = ReceiveOptions {
        conn,
        slot: args.slot,
        create_slot: args.create_slot,
        start_lsn: args.start_lsn,
        endpos: args.endpos,
        spool: args.spool,
        spool_max_bytes: args.spool_max_bytes,
        partial_interval: (args.partial_interval > 0)
            .then(|| Duration::from_secs(args.partial_interval)),
        status_interval: Duration::from_secs(args.status_interval),
        receive_timeout: (args.receive_timeout > 0)
            .then(|| Duration::from_secs(args.receive_timeout)),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        mode: if args.synchronous {
            Mode::Synchronous
        } else {
            Mode::Archived
        },
        upload_parallelism: args.upload_parallelism as usize,
        compression_level: config.compression_level,
        system_id: config.system_id,
        for_backup: None,
    };
    if options.slot.is_none() {
        tracing::warn!(
            "streaming without a replication slot (-S): the server may recycle WAL before it is archived, leaving a hole in the archive; use -S SLOT (with --create-slot the first time)"
        );
    }
    let archive = hooks::open_archive(config, true, None).await?;
    let shared = Arc::new(Shared::new(archive.clone()));
    if args.listen.listen.is_none() {
        let stopped = stop_on_signal(None)?;
        return walhalla::receiver::run(options, archive, stopped, shared).await;
    }
    // Bound before streaming starts: a listener that cannot start is a configuration error.
    let server = Server::bind(&args.listen.options(), shared.clone()).await?;
    let stopped = stop_on_signal(server.token())?;
    let serving = tokio::spawn(server.run(stopped.clone()));
    if let Some(interval) = args.listen.survey_interval() {
        tokio::spawn(walhalla::survey::run(
            shared.clone(),
            interval,
            stopped.clone(),
        ));
    }
    let received = walhalla::receiver::run(options, archive, stopped, shared).await;
    serving.abort();
    received
}

/// Warns when the connection string holds a password and came from the command line, where
/// every user sees it (`ps`, /proc/PID/cmdline).
fn warn_of_a_password_on_the_command_line(conninfo: &str) {
    let in_text = ConnParams::parse(conninfo, &|_| None).is_ok_and(|c| c.password.is_some());
    // As bytes: an argument need not be UTF-8 (a spool path), and must not make this panic.
    // `-d X`, `-dX`, `--dbname=X` all end with the string.
    let on_command_line =
        std::env::args_os().any(|arg| arg.as_encoded_bytes().ends_with(conninfo.as_bytes()));
    if in_text && on_command_line {
        tracing::warn!(
            "the connection string on the command line holds a password, which every user of \
             this host can read (ps): use ~/.pgpass, PGPASSFILE, --password-file or \
             PGPASSWORD instead"
        );
    }
}

/// The replication connection's settings: the connection string with libpq's environment
/// beneath, and the password from `--password-file` when the string has none.
pub fn connection(args: &ConnArgs) -> anyhow::Result<ConnParams> {
    let mut conn = ConnParams::parse(&args.conninfo, &|name| std::env::var(name).ok())
        .map_err(|e| UsageError(format!("connection string: {e}")))?;
    warn_of_a_password_on_the_command_line(&args.conninfo);
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the password file {}", path.display()))?;
        if let Ok(meta) = std::fs::metadata(path)
            && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o004 != 0
        {
            tracing::warn!(
                "the password file {} is readable by every user: chmod 600 it",
                path.display()
            );
        }
        let password = text.lines().next().unwrap_or_default();
        if password.is_empty() {
            anyhow::bail!("the password file {} is empty", path.display());
        }
        conn.password.get_or_insert_with(|| password.to_owned());
    }
    Ok(conn)
}
