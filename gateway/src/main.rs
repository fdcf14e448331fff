//! The `roost` binary: arguments, then config, logging and runtime, then the node. All the
//! work lives in the `roost_gateway` library; this file only decides exit codes.

use std::process::ExitCode;

use roost_gateway::cli::{self, Command};
use roost_gateway::{app, config, status};

/// Exit code for an invalid config or command line (the contract).
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args().skip(1)) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("roost: {message}\n\n{}", cli::USAGE);
            return ExitCode::from(EXIT_INVALID);
        }
    };
    match command {
        Command::Version => {
            println!("roost {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Help => {
            println!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Check { config } => match config::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_INVALID)
            }
        },
        Command::Status { http } => match status::run(&http) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("roost status: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let settings = match config {
                Some(path) => match config::load(&path) {
                    Ok(settings) => settings,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(EXIT_INVALID);
                    }
                },
                None => config::Settings::defaults(),
            };
            match app::run(settings) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("roost: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
