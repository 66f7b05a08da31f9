//! Bad input of every kind, sent to a real `callbridge serve` over HTTP: each gets its status
//! and a JSON error body (naming the field when a field is at fault), and reaches nobody.
//! TeleCMI's GET with query parameters is accepted and delivered.

mod support;

use callbridge::recorder::{Behaviour, Recorder, summary};
use callbridge_shared::domain::event::Provider;
use callbridge_shared::engine::ingest::MAX_BODY_BYTES;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use support::bridge::{Bridge, CrmSettings, Setup};
use support::scenario::{self, Scenario, token_of};

/// The fields that name the call, and the field of the time, of each provider's webhooks.
fn call_and_time_fields(provider: Provider) -> (&'static [&'static str], &'static str) {
    match provider {
        Provider::Telsmart => (&["id"], "timestamp"),
        Provider::Teltel => (&["call_id"], "timestamp"),
        Provider::Voys => (&["call_id"], "timestamp"),
        // The conversation, or failing that the leg.
        Provider::Telecmi => (&["conversation_uuid", "cmiuuid"], "time"),
    }
}

/// The first scenario of `provider`: its first webhook is a good one to spoil.
fn first_scenario(provider: Provider) -> Scenario {
    scenario::all()
        .into_iter()
        .find(|s| s.provider == provider)
        .unwrap_or_else(|| panic!("no {provider} scenario"))
}

/// `webhook` with `changes` applied: `null` removes a field.
fn spoiled(webhook: &Value, changes: &[(&str, Value)]) -> Value {
    let mut webhook = webhook.clone();
    let object = webhook.as_object_mut().expect("a webhook is an object");
    for (field, value) in changes {
        match value {
            Value::Null => object.remove(*field),
            value => object.insert(field.to_string(), value.clone()),
        };
    }
    webhook
}

/// Sends a request that must be refused with `status` and a JSON error body naming `field`.
async fn expect_refused(
    bridge: &Bridge,
    what: &str,
    request: reqwest::RequestBuilder,
    status: u16,
    field: Option<&str>,
) {
    let answer = bridge.send(request).await;
    let body = &answer.body;
    assert_eq!(answer.status, status, "{what}: answered {body}");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{what}: the answer is not a JSON error with `error` and `message`: {body}"
    );
    if let Some(field) = field {
        assert_eq!(
            body["field"], field,
            "{what}: the error does not name the field: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_input_is_refused_with_a_json_error_and_reaches_nobody() {
    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let setup = Setup::new(&recorder.url(), CrmSettings::default(), &[]);
    let bridge = Bridge::start(&setup).await;
    let client = bridge.client();
    let telsmart = first_scenario(Provider::Telsmart);
    let good = &telsmart.webhooks[0];
    let (connection, token) = (telsmart.connection.as_str(), telsmart.token());
    let url = bridge.webhook_url("telsmart", connection);
    let post = |url: &str| client.post(url).bearer_auth(&token);

    // Where: unknown provider, unknown connection, a connection of another provider.
    let nowhere = [
        (
            "an unknown provider",
            bridge.webhook_url("nokia", connection),
        ),
        (
            "an unknown connection",
            bridge.webhook_url("telsmart", "nobody"),
        ),
        (
            "another provider's connection",
            bridge.webhook_url("teltel", connection),
        ),
    ];
    for (what, url) in nowhere {
        expect_refused(&bridge, what, post(&url).json(good), 404, None).await;
    }

    // Who: no token, a wrong one, another connection's.
    let other_token = token_of("demo-teltel");
    let strangers = [
        ("no token", client.post(&url)),
        (
            "a wrong token",
            client.post(&url).bearer_auth("not-the-token-of-anyone"),
        ),
        (
            "another connection's token",
            client.post(&url).bearer_auth(&other_token),
        ),
        (
            "a wrong token in the query",
            client.post(format!("{url}?token=not-the-token-of-anyone")),
        ),
    ];
    for (what, request) in strangers {
        expect_refused(&bridge, what, request.json(good), 401, None).await;
    }

    // Whose: a payload of another tenant, on the connections that know their tenant.
    let telsmart_tenant = spoiled(
        good,
        &[("tenant_id", json!("00000000-0000-4000-8000-000000000000"))],
    );
    expect_refused(
        &bridge,
        "another Telsmart tenant",
        post(&url).json(&telsmart_tenant),
        403,
        None,
    )
    .await;
    let telecmi = first_scenario(Provider::Telecmi);
    let telecmi_app = spoiled(
        &telecmi.webhooks[0],
        &[("app_id", json!("9999999")), ("appid", json!("9999999"))],
    );
    let request = bridge.webhook(
        Provider::Telecmi,
        &telecmi.connection,
        &telecmi.token(),
        &telecmi_app,
    );
    expect_refused(&bridge, "another TeleCMI app", request, 403, None).await;

    // How: the method, the size, the media type.
    expect_refused(
        &bridge,
        "PUT",
        client.put(&url).bearer_auth(&token).json(good),
        405,
        None,
    )
    .await;
    expect_refused(
        &bridge,
        "GET to Telsmart",
        client.get(&url).bearer_auth(&token),
        405,
        None,
    )
    .await;
    let huge = spoiled(good, &[("padding", json!("x".repeat(MAX_BODY_BYTES)))]);
    expect_refused(
        &bridge,
        "a body over the limit",
        post(&url).json(&huge),
        413,
        None,
    )
    .await;
    let xml = post(&url)
        .header(CONTENT_TYPE, "application/xml")
        .body("<call/>");
    expect_refused(&bridge, "XML", xml, 415, None).await;

    // What: malformed JSON, then per provider a webhook without its call id or with a bad time.
    let malformed = post(&url)
        .header(CONTENT_TYPE, "application/json")
        .body("{\"id\": ");
    expect_refused(&bridge, "malformed JSON", malformed, 400, None).await;
    for provider in Provider::ALL {
        let s = first_scenario(provider);
        let (call_fields, time_field) = call_and_time_fields(provider);
        let no_call: Vec<(&str, Value)> = call_fields.iter().map(|f| (*f, Value::Null)).collect();
        let cases = [
            (
                "without its call id",
                spoiled(&s.webhooks[0], &no_call),
                call_fields[0],
            ),
            (
                "with a bad time",
                spoiled(&s.webhooks[0], &[(time_field, json!("yesterday"))]),
                time_field,
            ),
        ];
        for (what, webhook, field) in cases {
            let request = bridge.webhook(provider, &s.connection, &s.token(), &webhook);
            expect_refused(
                &bridge,
                &format!("{provider} {what}"),
                request,
                400,
                Some(field),
            )
            .await;
        }
    }
    assert!(
        recorder.events().is_empty(),
        "refused webhooks reached the CRM:\n{}",
        summary(&recorder.events())
    );

    // TeleCMI may send its webhook as GET with query parameters. It is accepted, queued behind
    // everything refused above, and is all the CRM ever gets: nothing refused was queued.
    let query_scenario = scenario::telecmi_as_query();
    let query = scenario::query_pairs(&query_scenario);
    let get = client
        .get(bridge.webhook_url("telecmi", &query_scenario.connection))
        .query(&query)
        .query(&[("token", query_scenario.token())]);
    let answer = bridge.send(get).await;
    assert_eq!(answer.status, 202, "TeleCMI GET: {}", answer.body);
    let call = answer.body["resource_id"]
        .as_str()
        .expect("the answer names the resource")
        .to_string();
    let events = bridge
        .settled(&recorder, "the TeleCMI GET webhook", |events| {
            !events.is_empty()
        })
        .await;
    assert!(
        events
            .iter()
            .all(|e| e.resource_id() == Some(call.as_str())),
        "the CRM got more than the TeleCMI call {call}:\n{}",
        summary(&events)
    );
}

/// A sender trickling its request one byte every 2 s: its head, then (another request) its
/// body. The server drops the first within its 10-second header read timeout and answers the
/// second 408 within its 10-second body read timeout, not after the 70 s and more such a
/// sender held a connection before; other requests are answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_are_cut_off_by_the_read_timeouts() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let recorder = Recorder::start("127.0.0.1:0", Behaviour::default())
        .await
        .expect("the CRM recorder starts");
    let setup = Setup::new(&recorder.url(), CrmSettings::default(), &[]);
    let bridge = Bridge::start(&setup).await;
    let url = bridge.url_of("/");
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let telsmart = first_scenario(Provider::Telsmart);
    let head = format!(
        "POST /webhooks/telsmart/{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n",
        telsmart.connection,
        telsmart.token()
    );

    // Trickles `sent` then one byte of `trickled` every 2 s, until the server answers or
    // closes; what it answered, and when.
    let trickle = |sent: String, trickled: String| {
        let address = address.clone();
        async move {
            let started = Instant::now();
            let mut tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
            tcp.write_all(sent.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            for byte in trickled.bytes().cycle() {
                let mut buffer = [0; 4096];
                match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buffer)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        answer.extend_from_slice(&buffer[..n]);
                        break;
                    }
                    Err(_) => {}
                }
                if tcp.write_all(&[byte]).await.is_err() {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the server still reads a trickled request after 60 s"
                );
            }
            (
                String::from_utf8_lossy(&answer).into_owned(),
                started.elapsed(),
            )
        }
    };
    let slow_head = tokio::spawn(trickle(String::new(), head.clone()));
    let slow_body = tokio::spawn(trickle(head, "{\"a\":1".repeat(200)));
    // Meanwhile the server answers.
    let health = bridge.health().await;
    assert_eq!(health.status, 200, "{}", health.body);

    let (answer, took) = slow_head.await.unwrap();
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert!(
        took < Duration::from_secs(20),
        "the slow head was read for {took:?}"
    );
    let (answer, took) = slow_body.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        took < Duration::from_secs(20),
        "the slow body was read for {took:?}"
    );
}
