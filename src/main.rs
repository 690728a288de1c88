use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = chaincore::cli::Cli::parse();
    match chaincore::cli::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", chaincore::cli::error_report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}
