use callbridge::{recorder, replay, serve};
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::CrmRecorder(args) => recorder::run(args).await,
    }
}
