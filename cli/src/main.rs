#[cfg(feature = "aws")]
use callbridge::connections;
use callbridge::{calls, deliveries, recorder, replay, serve};
use clap::{Parser, Subcommand};

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
