//! What each command's `--help` (and its man page) says beyond its options: its exit codes and
//! examples, and the help of shared options where a command reads them differently.

use clap::Command;

/// A command's exit codes and examples, shown after its options.
struct CommandHelp {
    name: &'static str,
    exit_codes: &'static str,
    examples: &'static str,
}

const USAGE_ERROR: &str =
    "  255  usage error: an unknown option, a bad value, a mistake in the config file";

const HELP: &[CommandHelp] = &[
    CommandHelp {
        name: "push",
        exit_codes: "  0    stored durably, or already archived with identical content
  1    not stored: invalid file, different content already archived, archive down or
       deadline passed; PostgreSQL keeps the segment and retries",
        examples: "  # postgresql.conf
  archive_mode = on
  archive_command = 'walhalla --archive /var/lib/walhalla push %p'",
    },
    CommandHelp {
        name: "fetch",
        exit_codes: "  0    the file was written, complete and verified
  1    the archive (or the --server) does not have the file; recovery moves on (in standby
       mode, with a warning, also an archive that holds nothing yet for this cluster, and
       an archive or --server that cannot be reached or passed --timeout)
  255  the file cannot be delivered (corrupt, a missing bucket or directory, a --server
       that refuses with no archive to fall back to; outside standby mode also an archive
       unreachable or --timeout passed): recovery stops instead of ending early",
        examples:
            "  # postgresql.conf of a standby or a server being restored
  restore_command = 'walhalla --archive s3://bucket/prod fetch %f %p'
  restore_command = 'walhalla --archive s3://bucket/prod fetch --server https://10.0.0.5:7480 --server-ca /etc/walhalla/ca.pem --token-file /etc/walhalla/token %f %p'",
    },
    CommandHelp {
        name: "backup",
        exit_codes: "  0    the backup is complete: its files and its WAL are archived
  1    it failed, or its WAL did not arrive within --wal-timeout (kept, marked incomplete)",
        examples: "  walhalla --archive s3://bucket/prod backup -d 'host=db1 user=walhalla' --fast
  walhalla --archive /var/lib/walhalla backup -d 'host=db1 user=walhalla' --wal stream",
    },
    CommandHelp {
        name: "restore",
        exit_codes: "  0    restored: start the server to recover
  1    refused or failed (what was written is removed)",
        examples: "  walhalla --archive s3://bucket/prod restore --to /var/lib/postgresql/17/main \\
      --target-time '2026-12-02 14:05:00+00' --target-action promote",
    },
    CommandHelp {
        name: "list",
        exit_codes: "  0    listed
  1    the archive could not be read",
        examples: "  walhalla --archive s3://bucket/prod list
  walhalla --archive s3://bucket/prod list --json | jq '.clusters[0].windows'",
    },
    CommandHelp {
        name: "verify",
        exit_codes: "  0    the archive is clean
  1    something is wrong (each problem is named), the archive holds no cluster, or it
       could not be read",
        examples: "  walhalla --archive s3://bucket/prod verify
  walhalla --archive s3://bucket/prod verify --since 24h --json",
    },
    CommandHelp {
        name: "prune",
        exit_codes: "  0    pruned (or, with --dry-run, said what would go)
  1    refused (a backup may be in progress) or failed",
        examples: "  walhalla --archive s3://bucket/prod prune --keep-backups 7 --dry-run
  walhalla --archive s3://bucket/prod prune --keep-within 14d",
    },
    CommandHelp {
        name: "check",
        exit_codes: "  0    every check passed (or was skipped, with why)
  1    a check failed: each is named with a hint",
        examples: "  walhalla --archive s3://bucket/prod check -d 'host=db1 user=postgres'
  walhalla --archive s3://bucket/prod check -d 'host=db1 user=postgres' -S walhalla --json",
    },
    CommandHelp {
        name: "receive",
        exit_codes:
            "  0    stopped by SIGTERM or SIGINT after archiving what was complete, or --endpos
       reached
  1    a fatal problem (another cluster, the slot gone, the archive refusing); any other
       failure reconnects",
        examples: "  walhalla --archive s3://bucket/prod receive -d 'host=db1,db2 user=walhalla \\
      target_session_attrs=read-write' -S walhalla --create-slot --listen 127.0.0.1:7480
  WALHALLA_CONFIG=/etc/walhalla/walhalla.toml walhalla receive",
    },
    CommandHelp {
        name: "serve",
        exit_codes: "  0    stopped by SIGTERM or SIGINT
  1    could not start (address in use, bad TLS files, no authentication on a public address)",
        examples: "  walhalla --archive s3://bucket/prod serve --listen 0.0.0.0:7480 \\
      --tls-cert server.pem --tls-key server.key --token-file /etc/walhalla/token",
    },
    CommandHelp {
        name: "status",
        exit_codes: "  0    printed
  1    the server did not answer or refused",
        examples: "  walhalla status
  walhalla status --server https://10.0.0.5:7480 --server-ca ca.pem --json
  walhalla status --healthz        # a container's health check: no token needed",
    },
    CommandHelp {
        name: "demo",
        exit_codes: "  0    the demo ran
  1    it could not (PostgreSQL's binaries not found, a step failed)",
        examples: "  walhalla demo
  walhalla demo --keep",
    },
    CommandHelp {
        name: "config",
        exit_codes: "  0    printed",
        examples: "  walhalla config receive
  WALHALLA_CONFIG=/etc/walhalla/walhalla.toml walhalla config --json",
    },
];

/// `root` with each command's exit codes and examples after its options, and the shared
/// options' help adjusted where a command reads them its own way.
pub fn explain(root: Command) -> Command {
    let mut root = root.after_help(format!(
        "{}\n\nEach command's --help lists its own exit codes, with examples.",
        crate::hooks::EXIT_CODES
    ));
    for help in HELP {
        let text = format!(
            "Exit codes:\n{}\n{USAGE_ERROR}\n\nExamples:\n{}",
            help.exit_codes, help.examples
        );
        root = root.mut_subcommand(help.name, |sub| sub.after_help(text));
    }
    root.mut_subcommand("status", |sub| {
        sub.mut_arg("server", |a| {
            a.help("The server to ask: `walhalla receive --listen` or `walhalla serve` [default: http://127.0.0.1:7480]")
        })
    })
    .mut_subcommand("serve", |sub| {
        sub.mut_arg("listen", |a| {
            a.help("Listen on this address (another than loopback needs authentication: the bearer token, by default, or --tls-client-ca; never --no-auth) [default: 127.0.0.1:7480]")
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_visible_command_has_exit_codes_and_examples() {
        use clap::CommandFactory;
        let root = super::explain(crate::cli::Cli::command());
        for sub in root.get_subcommands().filter(|c| !c.is_hide_set()) {
            let after = sub
                .get_after_help()
                .map(|s| s.to_string())
                .unwrap_or_default();
            assert!(
                after.contains("Exit codes:") && after.contains("Examples:"),
                "{} lacks exit codes or examples",
                sub.get_name()
            );
        }
    }
}
