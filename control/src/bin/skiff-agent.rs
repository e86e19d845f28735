//! The skiff node daemon; see `skiff_control::agent`.

use std::process::ExitCode;

use clap::CommandFactory;
use skiff_control::agent::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::load() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("skiff-agent: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Some(Command::Crds) => {
            print!("{}", skiff_control::crd::crds_yaml());
            Ok(())
        }
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "skiff-agent", &mut std::io::stdout());
            Ok(())
        }
        Some(Command::Cleanup { pin_dir }) => agent::cleanup(&pin_dir),
        None => {
            agent::init_logging(cli.options.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(agent::run(cli.options)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
