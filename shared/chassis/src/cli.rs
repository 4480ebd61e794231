//! The command line every service binary takes. Settings come from a file
//! and the environment; the command line only names the file and picks
//! between serving and migrating.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::settings::{CONFIG_FILE_ENV, ServiceIdentity};

#[derive(Debug, Parser)]
struct Args {
    /// A TOML settings file; environment variables override it.
    #[arg(long, value_name = "PATH", env = CONFIG_FILE_ENV)]
    config: Option<PathBuf>,
    /// Apply the database migrations and exit (what an init container or a
    /// release step runs; the service then starts with
    /// database.run_migrations = false).
    #[arg(long)]
    migrate: bool,
}

/// What a service was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    /// The settings file, if any.
    pub config: Option<PathBuf>,
    /// Migrate and exit instead of serving.
    pub migrate: bool,
}

impl Cli {
    /// Parses the process's arguments; `--help`, `--version` and mistakes
    /// print and exit, as a command-line tool should.
    pub fn parse(identity: ServiceIdentity) -> Self {
        Self::parse_from(identity, std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// Parses `args` (the first is the program name).
    pub fn parse_from<I, T>(identity: ServiceIdentity, args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let prefix = identity.env_prefix();
        let command = Args::command()
            .name(format!("cascade-{}", identity.name))
            .version(env!("CARGO_PKG_VERSION"))
            .about(format!(
                "Cascade's {} service: a gRPC server (default port {}).",
                identity.name, identity.default_port
            ))
            .after_help(format!(
                "Settings: built-in defaults, then --config, then environment variables \
                 {prefix}__<SECTION>__<KEY> (e.g. {prefix}__DATABASE__URL). See the README."
            ));
        let args = Args::from_arg_matches(&command.try_get_matches_from(args)?)?;
        Ok(Self {
            config: args.config,
            migrate: args.migrate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: ServiceIdentity = ServiceIdentity {
        name: "lifecycle",
        default_port: 50051,
        sqlite_connections: 8,
        permissions: |_, _| None,
        default_nice: 0,
        outbox_topics: &[],
    };

    #[test]
    fn reads_the_config_file_and_migrate() {
        let cli = Cli::parse_from(ID, ["bin", "--config", "x.toml", "--migrate"]);
        assert_eq!(
            cli.ok(),
            Some(Cli {
                config: Some(PathBuf::from("x.toml")),
                migrate: true
            })
        );
        let cli = Cli::parse_from(ID, ["bin", "--config=y.toml"]);
        assert_eq!(
            cli.ok().and_then(|c| c.config),
            Some(PathBuf::from("y.toml"))
        );
    }

    #[test]
    fn help_and_version_answer_instead_of_starting() {
        let help = Cli::parse_from(ID, ["bin", "--help"]).expect_err("help is not a run");
        assert_eq!(help.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(help.to_string().contains("--migrate"));
        let version = Cli::parse_from(ID, ["bin", "--version"]).expect_err("version");
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
        let unknown = Cli::parse_from(ID, ["bin", "--frobnicate"]).expect_err("unknown flag");
        assert_eq!(unknown.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
