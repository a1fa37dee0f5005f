//! `mugflow`: prepare training data for video generation models and run catalog-scale generation.

mod cli;
mod report;

fn main() -> std::process::ExitCode {
    cli::main()
}
