//! lbctl: the command line for lbd. See `lb::cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Usage errors exit 2 here, help and version 0.
    let cli = lb::cli::Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lbctl: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(lb::cli::run(cli))
}
