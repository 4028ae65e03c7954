//! lbd: the lb daemon. Thin: argument parsing and logging here, the work in
//! `lb::lbd` (start-up), `lb::daemon` (state and maps) and `lb::api` (control socket).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use lb::model::defaults::DEFAULT_CONFIG_PATH;

#[derive(Parser)]
#[command(name = "lbd", version, about = "The lb load balancer daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the balancer in the foreground.
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config file without touching the system.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Remove the programs, everything pinned and the routes lbd wrote for
    /// an interface.
    Detach {
        #[arg(long)]
        interface: String,
    },
    /// Attach the decap program on a backend host (stays after lbd exits).
    Decap {
        #[arg(long)]
        interface: String,
        /// Tunnel endpoint addresses of this host (outer destinations).
        #[arg(long = "address", required = true, num_args = 1..)]
        addresses: Vec<std::net::IpAddr>,
        /// auto (native, else generic), native or generic.
        #[arg(long, default_value = "auto")]
        xdp_mode: lb::model::AttachMode,
        /// Also lower the MSS of SYN-ACKs sent from a VIP (a TC egress
        /// program), for networks that drop ICMP: `auto` (from the MTU) or N.
        #[arg(long, value_name = "auto|N")]
        clamp_mss: Option<lb::decap::ClampMss>,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LBD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, log_format } => {
            init_logging(log_format);
            lb::lbd::run(&config)
        }
        Command::CheckConfig { config } => lb::lbd::check_config(&config),
        Command::Detach { interface } => lb::lbd::detach(&interface),
        Command::Decap {
            interface,
            addresses,
            xdp_mode,
            clamp_mss,
        } => lb::lbd::decap(&interface, &addresses, xdp_mode, clamp_mss),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
