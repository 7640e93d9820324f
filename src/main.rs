//! The `walhalla` binary: parse the command line, set up logging, run the command, and map its
//! outcome to the exit codes PostgreSQL expects of archive and restore commands.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};

use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use walhalla::cli::{
    ArchiveMode, BackupArgs, CheckArgs, Cli, ClientArgs, Command, ConfigArgs, ConnArgs, ListenArgs,
    PruneArgs, ReceiveArgs, RestoreArgs, VerifyArgs,
};
use walhalla::client::ServerClient;
use walhalla::config::{Config, UsageError};
use walhalla::daemon::{ServedCluster, Shared};
use walhalla::hooks::{
    self, EXIT_FETCH_FATAL, EXIT_FETCH_NOT_FOUND, EXIT_PUSH_FAILED, FetchOptions, FetchOutcome,
};
use walhalla::logging;
use walhalla::protocol::conninfo::ConnParams;
use walhalla::receiver::{Mode, ReceiveOptions};
use walhalla::server::Server;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let parsed = match walhalla::settings::parse(&args) {
        Ok(parsed) => parsed,
        Err(e) => {
            let _ = e.print();
            if !e.use_stderr() {
                return ExitCode::SUCCESS; // --help, --version
            }
            // Any usage mistake exits above 125: in a restore_command, a status from 1 to 125
            // reads as "file not found" and would end recovery early; in an archive_command it
            // makes the archiver restart, keeping the WAL.
            return ExitCode::from(EXIT_FETCH_FATAL);
        }
    };
    let cli = parsed.cli;
    let settings = SettingsView {
        file: parsed.file,
        matches: parsed.matches,
    };
    let default_filter = logging::default_filter(cli.command.name());
    let log_format = cli.global.log_format.unwrap_or_default();
    let log_source = match settings.matches.value_source("log_level") {
        Some(clap::parser::ValueSource::EnvVariable) => "WALHALLA_LOG",
        Some(clap::parser::ValueSource::DefaultValue) => "the config file's log_level",
        _ => "--log-level",
    };
    let given = cli
        .global
        .log_level
        .as_deref()
        .map(|text| (text, log_source));
    match logging::choose_filter(given, default_filter) {
        Ok(filter) => logging::init(filter, log_format),
        Err(e) => {
            // A usage error, like a mistyped flag: above 125 for PostgreSQL's sake.
            logging::print_error(log_format, &format!("walhalla: error: {e}"));
            return ExitCode::from(EXIT_FETCH_FATAL);
        }
    }
    let failure_code = match cli.command {
        Command::Fetch(_) => EXIT_FETCH_FATAL,
        _ => EXIT_PUSH_FAILED,
    };
    exit_with_on_panic(failure_code);

    let mut builder = match cli.command {
        // The daemon: network I/O and uploads on two workers, blocking work on a bounded pool.
        Command::Receive(_)
        | Command::Demo { .. }
        | Command::Serve(_)
        | Command::Backup(_)
        | Command::Restore(_) => {
            limit_allocator_caching();
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2).max_blocking_threads(16);
            builder
        }
        // A hook does one thing: one thread, blocking work on the pool.
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let message = format!("walhalla: cannot start the async runtime: {e}");
            logging::print_error(log_format, &message);
            return ExitCode::from(failure_code);
        }
    };
    let command = cli.command.name();
    let result = runtime.block_on(run_until_signal(cli, settings));
    // A blocking task stuck in the kernel (a hung mount) must not keep the process alive
    // past its deadline.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            logging::print_error(log_format, &format!("walhalla {command}: error: {e:#}"));
            if e.chain().any(|cause| cause.is::<UsageError>()) {
                // As for the parser's usage errors, above.
                return ExitCode::from(EXIT_FETCH_FATAL);
            }
            ExitCode::from(failure_code)
        }
    }
}

/// What `walhalla config` reports from: the config file and clap's matches.
struct SettingsView {
    file: Option<walhalla::settings::ConfigFile>,
    matches: clap::ArgMatches,
}

async fn run(cli: Cli, settings: SettingsView) -> anyhow::Result<u8> {
    if let Command::Demo { keep } = cli.command {
        // The demo makes its own archive: no --archive needed.
        let level = cli.global.compression_level;
        walhalla::fsutil::restrict_umask(&[]);
        return tokio::task::spawn_blocking(move || walhalla::demo::run(level, keep))
            .await
            .context("the demo")?
            .map(|()| 0);
    }
    if let Command::Config(args) = &cli.command {
        return print_settings(&settings, args).map(|()| 0);
    }
    let config =
        Config::resolve(cli.global.overrides()).map_err(|e| UsageError(format!("{e:#}")))?;
    let umask = walhalla::fsutil::restrict_umask(&private_roots(&cli.command, &config));
    tracing::debug!("umask {umask:04o}");
    match cli.command {
        Command::Demo { .. } | Command::Config(_) => unreachable!("handled above"),
        Command::Receive(args) => receive(&config, args).await.map(|()| 0),
        Command::Backup(args) => backup(&config, args).await,
        Command::Restore(args) => restore(&config, args).await.map(|()| 0),
        Command::List { json } => list(&config, json).await.map(|()| 0),
        Command::Verify(args) => verify(&config, args).await,
        Command::Check(args) => check(&config, args).await,
        Command::Prune(args) => prune(&config, args).await.map(|()| 0),
        Command::Serve(args) => serve(&config, &args.listen).await.map(|()| 0),
        Command::Status {
            client,
            json,
            healthz,
        } => status(&config, &client, json, healthz).await.map(|()| 0),
        Command::Push { path } => hooks::push(&config, &path).await.map(|_| 0),
        Command::Fetch(args) => {
            let options = FetchOptions {
                partial: args.partial,
                client: args.client.settings(),
                prefetch: usize::from(args.prefetch),
            };
            Ok(
                match hooks::fetch(&config, &args.name, &args.dest, &options).await? {
                    FetchOutcome::Restored => 0,
                    FetchOutcome::NotFound => EXIT_FETCH_NOT_FOUND,
                },
            )
        }
        Command::PrefetchWorker {
            cache,
            client,
            prefetch,
        } => hooks::run_prefetch_worker(&config, &cache, &client.settings(), usize::from(prefetch))
            .await
            .map(|()| 0),
    }
}

/// The directories `command` creates files and folders in, whose modes decide whether its
/// files may be readable by their group (see [`walhalla::fsutil::private_umask`]): the local
/// archive `push` and `receive` write, the spool, the directory a restored file and the
/// prefetch cache go to. PostgreSQL runs `push` and `fetch` with a umask derived from its
/// data directory's mode, which they keep.
fn private_roots(command: &Command, config: &Config) -> Vec<PathBuf> {
    let local_archive = || match &config.archive {
        Some(walhalla::archive::Location::Local(dir)) => Some(dir.clone()),
        _ => None,
    };
    match command {
        Command::Push { .. } | Command::Backup(_) | Command::Check(_) => {
            local_archive().into_iter().collect()
        }
        Command::Restore(args) => vec![args.to.clone()],
        Command::Receive(args) => {
            let spool = args
                .spool
                .clone()
                .unwrap_or_else(walhalla::receiver::spool_root);
            local_archive().into_iter().chain([spool]).collect()
        }
        Command::Fetch(args) => vec![walhalla::fsutil::parent_dir(&args.dest).to_path_buf()],
        Command::PrefetchWorker { cache, .. } => vec![cache.clone()],
        _ => Vec::new(),
    }
}

/// A watch that turns true at the first SIGTERM or SIGINT; a second one exits at once.
fn stop_on_signal() -> anyhow::Result<watch::Receiver<bool>> {
    let (stop, stopped) = watch::channel(false);
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
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
async fn serve(config: &Config, listen: &ListenArgs) -> anyhow::Result<()> {
    let options = listen.options();
    options.check()?;
    let archive = hooks::open_archive(config, false, None).await?;
    let system_id =
        hooks::resolve_system_id(config.system_id, std::path::Path::new("."), None, &archive)
            .await?;
    let cluster = ServedCluster {
        archive: archive.cluster(system_id),
        spool: None,
    };
    let shared = Arc::new(Shared::serving(archive, cluster));
    let server = Server::bind(&options, shared.clone()).await?;
    let stopped = stop_on_signal()?;
    if let Some(interval) = listen.survey_interval() {
        tokio::spawn(walhalla::survey::run(shared, interval, stopped.clone()));
    }
    server.run(stopped).await
}

/// `walhalla status`: a server's /status, for a person.
async fn status(
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
async fn receive(config: &Config, args: ReceiveArgs) -> anyhow::Result<()> {
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
    let stopped = stop_on_signal()?;
    if args.listen.listen.is_none() {
        return walhalla::receiver::run(options, archive, stopped, shared).await;
    }
    // Bound before streaming starts: a listener that cannot start is a configuration error.
    let server = Server::bind(&args.listen.options(), shared.clone()).await?;
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

/// The replication connection's settings: the connection string with libpq's environment
/// beneath, and the password from `--password-file` when the string has none.
fn connection(args: &ConnArgs) -> anyhow::Result<ConnParams> {
    let mut conn = ConnParams::parse(&args.conninfo, &|name| std::env::var(name).ok())
        .map_err(|e| UsageError(format!("connection string: {e}")))?;
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

/// `walhalla config`: the settings as they resolve, with their sources.
fn print_settings(settings: &SettingsView, args: &ConfigArgs) -> anyhow::Result<()> {
    let mut root = walhalla::settings::command();
    root.build();
    if let Some(name) = &args.command
        && !root
            .get_subcommands()
            .any(|c| c.get_name() == name && !c.is_hide_set())
    {
        anyhow::bail!("{name:?} is not a command");
    }
    let config = settings
        .matches
        .subcommand_matches("config")
        .context("the config command's options")?;
    let report = walhalla::settings::Report::new(
        &root,
        settings.file.as_ref(),
        config,
        args.command.as_deref(),
    );
    if args.json {
        emit(&pretty_json(&report)?)?;
    } else {
        emit(&walhalla::settings::describe(&report))?;
    }
    Ok(())
}

/// `walhalla backup`: exit 0 when the backup is complete, 1 when its WAL did not arrive.
async fn backup(config: &Config, args: BackupArgs) -> anyhow::Result<u8> {
    let conn = connection(&args.conn)?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = walhalla::backup::take::BackupOptions {
        conn,
        label: args.label,
        fast: args.fast,
        wal_timeout: Duration::from_secs(args.wal_timeout),
        compression_level: config.compression_level,
        parallelism: args.parallelism.map_or(cpus + 1, |n| n as usize),
        wal: args.wal,
        server_compression: args.server_compression,
    };
    let archive = hooks::open_archive(config, true, None).await?;
    let meta = walhalla::backup::take::run(&options, &archive).await?;
    if args.json {
        emit(&pretty_json(&meta)?)?;
    } else {
        emit(&(walhalla::backup::describe(&meta) + "\n"))?;
    }
    Ok(if meta.is_complete() { 0 } else { 1 })
}

/// `walhalla restore`.
async fn restore(config: &Config, args: RestoreArgs) -> anyhow::Result<()> {
    use walhalla::restore::plan::{Target, parse_time};
    use walhalla::restore::settings::Recovery;
    let target = if let Some(text) = args.target_time {
        Target::Time {
            at: parse_time(&text).map_err(|e| anyhow::anyhow!(e))?,
            text,
        }
    } else if let Some(lsn) = args.target_lsn {
        Target::Lsn(lsn)
    } else if let Some(xid) = args.target_xid {
        Target::Xid(xid)
    } else if let Some(name) = args.target_name {
        Target::Name(name)
    } else if args.target.is_some() {
        Target::Immediate
    } else {
        Target::End
    };
    let walhalla = std::env::current_exe().context("the path of this walhalla")?;
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = walhalla::restore::RestoreOptions {
        dest: std::path::absolute(&args.to).context("the data directory's path")?,
        backup: Some(args.backup),
        system_id: config.system_id,
        recovery: Recovery {
            walhalla: walhalla.display().to_string(),
            archive: config.archive()?.to_string(),
            server: args.server,
            target,
            action: args
                .target_action
                .map(|a| a.parse())
                .transpose()
                .map_err(|e: String| anyhow::anyhow!(e))?,
            timeline: args.target_timeline,
            exclusive: args.target_exclusive,
            archive_off: args.archive_mode == ArchiveMode::Off,
        },
        standby: args.standby,
        force: args.force,
        tablespace_map: args.tablespace_map.into_iter().collect(),
        parallelism: args.parallelism.map_or(cpus + 1, |n| n as usize),
    };
    if walhalla::osuser::is_root() {
        tracing::warn!(
            "restoring as root: the files will be root's, and PostgreSQL does not run as root; \
             run walhalla restore as the user PostgreSQL runs as, or give that user the directories before starting it"
        );
    }
    let archive = hooks::open_archive(config, false, None).await?;
    let report = walhalla::restore::run(&options, &archive).await?;
    if args.json {
        emit(&pretty_json(&report)?)?;
    } else {
        emit(&(walhalla::restore::describe(&report) + "\n"))?;
    }
    Ok(())
}

/// `walhalla list`.
async fn list(config: &Config, json: bool) -> anyhow::Result<()> {
    let archive = hooks::open_archive(config, false, None).await?;
    let listing = walhalla::list::listing(&archive, config.system_id).await?;
    if json {
        emit(&pretty_json(&listing)?)?;
    } else {
        emit(&walhalla::list::describe(&listing))?;
    }
    Ok(())
}

/// `walhalla verify`: exit 0 when clean, 1 when anything is wrong.
async fn verify(config: &Config, args: VerifyArgs) -> anyhow::Result<u8> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let options = walhalla::verify::VerifyOptions {
        since: args.since,
        parallelism: args.parallelism.map_or(cpus + 1, |n| n as usize),
    };
    let archive = hooks::open_archive(config, false, None).await?;
    let report = walhalla::verify::run(&archive, config.system_id, options).await?;
    if args.json {
        emit(&pretty_json(&report)?)?;
    } else {
        emit(&walhalla::verify::describe(&report))?;
    }
    Ok(if report.is_clean() { 0 } else { 1 })
}

/// `walhalla check`: exit 0 when every check passes, 1 otherwise.
async fn check(config: &Config, args: CheckArgs) -> anyhow::Result<u8> {
    let conn = connection(&args.conn)?;
    let options = walhalla::check::CheckOptions {
        conn,
        slot: args.slot,
        wait: Duration::from_secs(args.wait),
        archive: config.archive.clone(),
        system_id: config.system_id,
        timeout: config.timeout,
        store: config.store.clone(),
    };
    let report = walhalla::check::run(&options).await;
    let text = if args.json {
        pretty_json(&report)?
    } else {
        walhalla::check::describe(&report)
    };
    emit(&text)?;
    Ok(if report.ok { 0 } else { 1 })
}

/// `walhalla prune`.
async fn prune(config: &Config, args: PruneArgs) -> anyhow::Result<()> {
    use walhalla::retention::{Policy, Rule};
    let rule = if let Some(within) = args.keep_wal_within {
        Rule::WalWithin(within)
    } else if let Some(lsn) = args.before {
        Rule::WalBefore(lsn)
    } else {
        Rule::Backups {
            keep: args.keep_backups.map(|n| n as usize),
            within: args.keep_within,
        }
    };
    let options = walhalla::prune::PruneOptions {
        policy: Policy {
            rule,
            now: jiff::Timestamp::now(),
            assume_interrupted: args.assume_interrupted,
        },
        dry_run: args.dry_run,
    };
    let archive = hooks::open_archive(config, false, None).await?;
    let system_id = archive.chosen_cluster(config.system_id).await?;
    let report = walhalla::prune::run(&archive.cluster(system_id), options).await?;
    if args.json {
        emit(&pretty_json(&report)?)?;
    } else {
        emit(&walhalla::prune::describe(&report))?;
    }
    Ok(())
}

/// Runs the command; on SIGTERM or SIGINT removes temporary files and dies of that signal,
/// as PostgreSQL expects of a command it interrupts at shutdown.
async fn run_until_signal(cli: Cli, settings: SettingsView) -> anyhow::Result<u8> {
    if matches!(
        cli.command,
        Command::Receive(_)
            | Command::Demo { .. }
            | Command::Serve(_)
            | Command::PrefetchWorker { .. }
    ) {
        return run(cli, settings).await;
    }
    let (mut term, mut int) = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    let signo = tokio::select! {
        result = run(cli, settings) => return result,
        _ = term.recv() => libc::SIGTERM,
        _ = int.recv() => libc::SIGINT,
    };
    walhalla::fsutil::remove_live_temp_files();
    // SAFETY: restoring the default disposition and raising a signal are async-signal-safe
    // and touch no Rust state.
    unsafe {
        libc::signal(signo, libc::SIG_DFL);
        libc::raise(signo);
    }
    Ok(128 + signo as u8)
}

/// Keeps the daemon's memory bounded: glibc raises its mmap threshold after a large block is
/// freed, and from then on serves 16 MiB buffers from per-thread arenas that keep the memory
/// (hundreds of MiB with many blocking threads). A fixed threshold returns large blocks to the
/// system when freed, and two arenas bound what small allocations keep.
fn limit_allocator_caching() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A panic must not exit with Rust's 101, which restore_command would read as "not found".
fn exit_with_on_panic(code: u8) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        std::process::exit(i32::from(code));
    }));
}

/// Writes a command's output to stdout. A reader that stopped early (`walhalla list | head`)
/// has what it wanted: the closed pipe ends the output quietly instead of a panic or an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("write to standard output"))
        }
        _ => Ok(()),
    }
}

/// A report as pretty JSON, with its newline.
fn pretty_json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}
