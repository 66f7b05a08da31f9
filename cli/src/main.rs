#[cfg(feature = "aws")]
use callbridge::connections;
use callbridge::{calls, deliveries, recorder, replay, serve};
use clap::{Parser, Subcommand};

// The local server allocates and frees on every thread all the time (JSON values, SQLite rows,
// HTTP buffers). Under load glibc's malloc made its latency fall apart (p99 end to end over
// 500 ms at 5,000 webhooks/s); jemalloc keeps it at about 15 ms (BENCHMARKS.md).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// callbridge: telephony webhooks in, Morph telephonyCall events out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge locally: webhooks in, Morph events out, on an embedded durable store.
    Serve(serve::Args),
    /// Post a scenario (a JSON list of webhook bodies) to a running server.
    Replay(replay::Args),
    /// Run a local CRM that records every Morph event it receives.
    CrmRecorder(recorder::Args),
    /// List the calls kept, show one with its revisions and delivery state, or erase one.
    Calls(calls::Args),
    /// What waits for an operator (parked deliveries; on AWS, the dead-letter queue), or send
    /// it again.
    Deliveries(deliveries::Args),
    /// Manage the connections of an AWS deployment (its DynamoDB connections table).
    #[cfg(feature = "aws")]
    Connections(connections::Args),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::CrmRecorder(args) => recorder::run(args).await,
        Command::Calls(args) => calls::run(args).await,
        Command::Deliveries(args) => deliveries::run(args).await,
        #[cfg(feature = "aws")]
        Command::Connections(args) => connections::run(args).await,
    }
}
