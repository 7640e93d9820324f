//! The `walhalla` binary: parse the command line, set up logging, run the command, and map its
//! outcome to the exit codes PostgreSQL expects of archive and restore commands.

mod output;
mod services;
mod tools;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use walhalla::cli::{Cli, Command, ConfigArgs};
use walhalla::config::{Config, UsageError};
use walhalla::hooks::{
    self, EXIT_FETCH_FATAL, EXIT_FETCH_NOT_FOUND, EXIT_PUSH_FAILED, FetchOptions, FetchOutcome,
};
use walhalla::logging::{self, LogFormat};

use output::{emit, pretty_json};
use services::{receive, serve, status};
use tools::{backup, check, list, prune, restore, verify};

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
    let notes = parsed.notes;
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
    for note in notes {
        tracing::warn!("{note}");
    }
    let failure_code = match cli.command {
        Command::Fetch(_) => EXIT_FETCH_FATAL,
        _ => EXIT_PUSH_FAILED,
    };
    exit_with_on_panic(cli.command.name(), failure_code, log_format);
    let unreadable_line = |message: &str| logging::error_line(log_format, message, None);
    if let Err(e) =
        walhalla::mapped::exit_on_unreadable_map(cli.command.name(), failure_code, unreadable_line)
    {
        tracing::warn!("cannot handle SIGBUS: {e}");
    }

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
                to_end: args.to_end,
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
    )
    .map_err(UsageError)?;
    if args.json {
        emit(&pretty_json(&report)?)?;
    } else {
        emit(&walhalla::settings::describe(&report))?;
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
/// Under JSON logging its message is a JSON line like the others. One that
/// [`walhalla::blocking::catching_panic`] catches is reported, and unwinds to it.
fn exit_with_on_panic(command: &'static str, code: u8, format: LogFormat) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        match format {
            LogFormat::Text => default(info),
            LogFormat::Json => {
                let thread = std::thread::current();
                let thread = thread.name().unwrap_or("<unnamed>");
                logging::print_error(
                    format,
                    &format!("walhalla {command}: thread '{thread}' {info}"),
                )
            }
        }
        if !walhalla::blocking::panic_is_caught() {
            std::process::exit(i32::from(code));
        }
    }));
}
