//! `callbridge replay`: posts the webhooks of a scenario file to a running server, one after
//! the other, as the provider would, and shows each answer.

use callbridge_shared::domain::event::Provider;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
#[command(
    after_help = "The defaults fit the example config (infra/callbridge.example.toml): \
the provider is the name of the file's folder (tests/scenarios/<provider>/...), the connection \
`demo-<provider>` and the token `demo-<provider>-token-change-me`. The command fails when a \
webhook is refused."
)]
pub struct Args {
    /// A scenario: a JSON list of webhook bodies.
    file: PathBuf,
    /// The server's base URL.
    #[arg(long, default_value_t = format!("http://{}", callbridge_shared::config::default_listen()))]
    url: String,
    /// The connection the webhooks are sent to [default: demo-<provider>].
    #[arg(long)]
    connection: Option<String>,
    /// The connection's token, sent as `Authorization: Bearer`
    /// [default: demo-<provider>-token-change-me].
    #[arg(long)]
    token: Option<String>,
    /// telsmart, teltel, voys or telecmi [default: the name of the file's folder].
    #[arg(long)]
    provider: Option<Provider>,
    /// Pause between two webhooks.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let provider = match args.provider {
        Some(provider) => provider,
        None => provider_of(&args.file)?,
    };
    let target = Target {
        webhooks_url: format!(
            "{}/webhooks/{provider}/{}",
            args.url.trim_end_matches('/'),
            args.connection
                .clone()
                .unwrap_or_else(|| format!("demo-{provider}"))
        ),
        token: args
            .token
            .clone()
            .unwrap_or_else(|| format!("demo-{provider}-token-change-me")),
    };
    let webhooks = read_scenario(&args.file)?;
    let delay = Duration::from_millis(args.delay_ms);
    let refused = replay(&target, &webhooks, delay, &mut std::io::stdout()).await?;
    anyhow::ensure!(
        refused == 0,
        "{refused} of {} webhooks were refused",
        webhooks.len()
    );
    Ok(())
}

/// Where the webhooks go.
struct Target {
    /// `{url}/webhooks/{provider}/{connection}`
    webhooks_url: String,
    token: String,
}

/// The provider a scenario is for, from its folder: `tests/scenarios/<provider>/<name>.json`.
fn provider_of(file: &Path) -> anyhow::Result<Provider> {
    let folder = file
        .canonicalize()
        .unwrap_or_else(|_| file.to_path_buf())
        .parent()
        .and_then(Path::file_name)
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    folder.parse().map_err(|_| {
        anyhow::anyhow!(
            "cannot tell the provider of {} from its folder `{folder}`: pass --provider",
            file.display()
        )
    })
}

fn read_scenario(file: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    match serde_json::from_str(&text) {
        Ok(Value::Array(webhooks)) => Ok(webhooks),
        Ok(_) => anyhow::bail!("{}: a scenario is a JSON list of webhooks", file.display()),
        Err(e) => anyhow::bail!("{}: {e}", file.display()),
    }
}

/// Posts the webhooks in order, writing one line per answer. Returns how many were refused;
/// fails only when the server cannot be reached.
async fn replay(
    target: &Target,
    webhooks: &[Value],
    delay: Duration,
    out: &mut impl Write,
) -> anyhow::Result<usize> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut refused = 0;
    for (i, webhook) in webhooks.iter().enumerate() {
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let answer = client
            .post(&target.webhooks_url)
            .bearer_auth(&target.token)
            .json(webhook)
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot post to {}: {e} (is `callbridge serve` running?)",
                    target.webhooks_url
                )
            })?;
        let status = answer.status();
        if !status.is_success() {
            refused += 1;
        }
        let body = answer.text().await.unwrap_or_default();
        writeln!(
            out,
            "{}/{} {} {}",
            i + 1,
            webhooks.len(),
            status.as_u16(),
            body.trim()
        )?;
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::{HeaderMap, StatusCode, Uri};
    use axum::routing::post;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    /// What the stub server saw: path, `Authorization`, body.
    type Seen = Arc<Mutex<Vec<(String, String, Value)>>>;

    /// A server that accepts every webhook but those with `"refuse": true`.
    async fn stub() -> (String, Seen) {
        let seen = Seen::default();
        let log = seen.clone();
        let app = Router::new().fallback(post(
            move |uri: Uri, headers: HeaderMap, axum::Json(body): axum::Json<Value>| async move {
                let auth = headers["authorization"].to_str().unwrap().to_string();
                let refuse = body["refuse"] == true;
                log.lock()
                    .unwrap()
                    .push((uri.path().to_string(), auth, body));
                if refuse {
                    (StatusCode::BAD_REQUEST, r#"{"error":"invalid_payload"}"#)
                } else {
                    (StatusCode::ACCEPTED, r#"{"status":"accepted"}"#)
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }

    #[test]
    fn the_provider_is_the_scenario_folder() {
        let file = Path::new("tests/scenarios/telecmi/2-missed.json");
        assert_eq!(provider_of(file).unwrap(), Provider::Telecmi);
        let error = provider_of(Path::new("calls.json")).unwrap_err();
        assert!(error.to_string().contains("--provider"), "{error}");
    }

    #[tokio::test]
    async fn posts_every_webhook_in_order_and_counts_refusals() {
        let (url, seen) = stub().await;
        let target = Target {
            webhooks_url: format!("{url}/webhooks/voys/demo-voys"),
            token: "secret-token-of-the-connection".into(),
        };
        let webhooks = [json!({"n": 1}), json!({"refuse": true}), json!({"n": 3})];
        let mut out = Vec::new();
        let refused = replay(&target, &webhooks, Duration::ZERO, &mut out)
            .await
            .unwrap();

        assert_eq!(refused, 1);
        let seen = seen.lock().unwrap();
        let bodies: Vec<&Value> = seen.iter().map(|(_, _, body)| body).collect();
        assert_eq!(bodies, webhooks.iter().collect::<Vec<_>>());
        for (path, auth, _) in seen.iter() {
            assert_eq!(path, "/webhooks/voys/demo-voys");
            assert_eq!(auth, "Bearer secret-token-of-the-connection");
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1/3 202 {\"status\":\"accepted\"}\n\
             2/3 400 {\"error\":\"invalid_payload\"}\n\
             3/3 202 {\"status\":\"accepted\"}\n"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error() {
        // A port just released: nothing listens there.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let target = Target {
            webhooks_url: format!("http://{addr}/webhooks/voys/demo-voys"),
            token: "t".into(),
        };
        let error = replay(&target, &[json!({})], Duration::ZERO, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(error.to_string().contains("callbridge serve"), "{error}");
    }
}
