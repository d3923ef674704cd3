//! chat-load: load generator and delivery checker for WebSocket broadcast
//! chat servers. See load/README.md for usage.

mod args;
mod clock;
mod connect;
mod marker;
mod proc_stats;
mod report;
mod run;
mod verify;

use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;

use args::Args;

fn main() -> ExitCode {
    clock::start();
    let args = Args::parse();
    match try_main(&args) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if args.json {
                // Scripts parse stdout: give them an object there too.
                println!(
                    "{}",
                    serde_json::json!({ "url": args.url_list(), "error": format!("{e:#}") })
                );
            }
            eprintln!("chat-load: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main(args: &Args) -> Result<report::Report> {
    args.validate()?;
    raise_fd_limit(args.clients)?;
    // Pinned to one core (taskset -c 1, as compare.sh does), a single-threaded
    // runtime avoids cross-thread wake-ups; otherwise use every core we may.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    runtime.block_on(run::run(args))
}

/// Each client is one socket: lift the soft open-files limit to the hard one,
/// and refuse up front a client count that cannot fit.
fn raise_fd_limit(clients: usize) -> Result<()> {
    // Headroom for stdio, the runtime's own descriptors and /proc reads.
    const SPARE: u64 = 64;
    let soft = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    let (soft, hard) = if soft == 0 {
        rlimit::getrlimit(rlimit::Resource::NOFILE)?
    } else {
        (soft, rlimit::getrlimit(rlimit::Resource::NOFILE)?.1)
    };
    if clients as u64 + SPARE > soft {
        bail!(
            "--clients {clients} needs about {} open files but this process may open {soft} \
             (hard limit {hard}); run fewer clients per process or raise the hard limit",
            clients as u64 + SPARE
        );
    }
    Ok(())
}
