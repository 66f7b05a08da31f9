//! Secrets at rest on AWS (issue 13, item 8; `docs/security.md`): a connection's REST API key
//! and secret are stored apart from the rest of it, the ingest functions read connections
//! without them, and the template lets only the functions' own roles use the tables' key, each
//! through DynamoDB and for its own tables; the ingest roles may read only `id` and
//! `connection` of a connection.
//!
//! The emulator does not enforce IAM or key policies: what it shows is what is stored and what
//! each function asks for; the template's policies are checked as written.
//!
//! Needs `moto_server` (on the PATH or in `.venv`, installed by `infra/setup.sh`).

mod aws_support;
#[allow(dead_code)]
#[path = "support/scenario.rs"]
mod scenario;

use aws_support::AwsBridge;
use aws_support::emulator::repo_root;
use callbridge_shared::adapters::aws::aws_sdk_dynamodb::types::AttributeValue;
use callbridge_shared::adapters::aws::dynamo_connections::DynamoConnections;
use callbridge_shared::config::Config;
use callbridge_shared::domain::connection::ApiCredentials;
use callbridge_shared::ports::ConnectionDirectory;
use serde_json::Value;
use std::sync::Arc;

const API_KEY: &str = "acme-morph-api-key-0123456789";
const API_SECRET: &str = "acme-morph-api-secret-0123456789";
const SIGNING_SECRET: &str = "acme-signing-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_credentials_are_stored_apart_and_ingest_never_reads_them() {
    let bridge = AwsBridge::start("secrets", "https://crm.example/events", &[]).await;
    let config = Config::parse(&format!(
        r#"
        [[connections]]
        id = "acme-rest"
        provider = "telsmart"
        token = "acme-rest-token-0123456789"
        connector_id = "conn"
        owner_id = "owner"
        delivery = "rest"
        api_key = "{API_KEY}"
        api_secret = "{API_SECRET}"
        signing_secret = "{SIGNING_SECRET}"
        "#
    ))
    .unwrap();
    let acme = config.connections().unwrap().remove(0);
    let table = bridge.connections();
    table.put(&acme).await.unwrap();
    let table_name = bridge
        .resources
        .worker_function()
        .0
        .var("CONNECTIONS_TABLE")
        .expect("CONNECTIONS_TABLE");

    // As stored: the connection's JSON holds no REST credential; they have their own attribute.
    let item = bridge
        .dynamodb
        .get_item()
        .table_name(table_name.as_str())
        .key("id", AttributeValue::S("acme-rest".into()))
        .send()
        .await
        .unwrap()
        .item
        .expect("the item");
    let connection_json = item["connection"].as_s().unwrap();
    assert!(
        !connection_json.contains(API_SECRET) && !connection_json.contains(API_KEY),
        "{connection_json}"
    );
    let stored: ApiCredentials =
        serde_json::from_str(item["rest_credentials"].as_s().unwrap()).unwrap();
    assert_eq!(
        (stored.api_key.as_str(), stored.api_secret.as_str()),
        (API_KEY, API_SECRET)
    );

    // The worker (and the operator) read the whole connection back.
    let whole = table.connection("acme-rest").await.unwrap().unwrap();
    assert_eq!(*whole, acme);

    // Ingest reads it without them, and still has what it checks a webhook with.
    let ingest_view = DynamoConnections::without_rest_credentials(
        bridge.dynamodb.clone(),
        table_name.as_str(),
        Arc::default(),
        callbridge_shared::config::AwsConfig::default().connection_cache(),
    );
    let seen = ingest_view.connection("acme-rest").await.unwrap().unwrap();
    assert_eq!(seen.api_credentials, None);
    assert_eq!(seen.token_hashes, acme.token_hashes);
    assert_eq!(seen.signing_secret.as_deref(), Some(SIGNING_SECRET));
    // A reader that never saw the credentials cannot write the item back without them.
    assert!(ingest_view.update("acme-rest", |_| Ok(())).await.is_err());
    table.update("acme-rest", |_| Ok(())).await.unwrap();
    assert_eq!(*table.connection("acme-rest").await.unwrap().unwrap(), acme);

    // An item written before the split (credentials inside `connection`): ingest drops them.
    bridge
        .dynamodb
        .put_item()
        .table_name(table_name.as_str())
        .item("id", AttributeValue::S("acme-old".into()))
        .item(
            "connection",
            AttributeValue::S(
                serde_json::to_string(&callbridge_shared::domain::connection::Connection {
                    id: "acme-old".into(),
                    ..acme.clone()
                })
                .unwrap(),
            ),
        )
        .send()
        .await
        .unwrap();
    let old = ingest_view.connection("acme-old").await.unwrap().unwrap();
    assert_eq!(old.api_credentials, None);
}

/// The template as JSON (its `!Ref`, `!Sub` and `!GetAtt` as `{"Fn::...": ...}`), read with
/// the emulator's loader.
fn template() -> Value {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run infra/setup.sh",
        python.display()
    );
    let output = std::process::Command::new(&python)
        .current_dir(root.join("infra/aws"))
        .args([
            "-c",
            "import json, sys, yaml, resources; \
             print(json.dumps(yaml.load(open(sys.argv[1]).read(), Loader=resources.TemplateLoader)))",
        ])
        .arg(root.join("template.yaml"))
        .output()
        .expect("python runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the template as JSON")
}

fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        one => vec![one.clone()],
    }
}

/// The logical id a `!GetAtt Role.Arn` names.
fn role_of(value: &Value) -> String {
    value["Fn::GetAtt"][0]
        .as_str()
        .unwrap_or_else(|| panic!("not a role's ARN: {value}"))
        .to_string()
}

#[test]
fn only_the_functions_roles_use_the_key_each_through_dynamodb_for_its_own_tables() {
    let template = template();
    let resources = &template["Resources"];
    let statements = as_list(&resources["ConnectionsKey"]["Properties"]["KeyPolicy"]["Statement"]);
    let table = |suffix: &str| format!("${{NamePrefix}}-{suffix}");
    let mut decrypters = Vec::new();
    for statement in &statements {
        let principal = &statement["Principal"]["AWS"];
        assert_ne!(principal, "*", "a wildcard principal: {statement}");
        if statement["Sid"] == "TheAccountAdministersTheKey" {
            // Delegation to the account's IAM policies: a principal needs this key named.
            assert_eq!(
                principal["Fn::Sub"],
                "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"
            );
            continue;
        }
        let conditions = &statement["Condition"]["StringEquals"];
        assert_eq!(
            conditions["kms:ViaService"]["Fn::Sub"], "dynamodb.${AWS::Region}.amazonaws.com",
            "{statement}"
        );
        let actions = as_list(&statement["Action"]);
        if actions.iter().any(|a| a == "kms:Decrypt") {
            let tables: Vec<String> =
                as_list(&conditions["kms:EncryptionContext:aws:dynamodb:tableName"])
                    .iter()
                    .map(|t| t["Fn::Sub"].as_str().unwrap().to_string())
                    .collect();
            for role in as_list(principal) {
                decrypters.push((role_of(&role), tables.clone()));
            }
        }
    }
    decrypters.sort();
    assert_eq!(
        decrypters,
        [
            ("IngestRole".to_string(), vec![table("connections")]),
            (
                "IngestTelsmartRole".to_string(),
                vec![table("connections"), table("activated-users")]
            ),
            (
                "WorkerRole".to_string(),
                vec![
                    table("calls"),
                    table("connections"),
                    table("activated-users")
                ]
            ),
        ]
    );

    // The ingest functions run as the ingest roles, which read `id` and `connection` only.
    for (function, role) in [
        ("IngestTelsmartFunction", "IngestTelsmartRole"),
        ("IngestTeltelFunction", "IngestRole"),
        ("IngestVoysFunction", "IngestRole"),
        ("IngestTelecmiFunction", "IngestRole"),
    ] {
        assert_eq!(
            role_of(&resources[function]["Properties"]["Role"]),
            role,
            "{function}"
        );
    }
    for role in ["IngestRole", "IngestTelsmartRole"] {
        let policies = as_list(&resources[role]["Properties"]["Policies"]);
        let statements: Vec<Value> = policies
            .iter()
            .flat_map(|p| as_list(&p["PolicyDocument"]["Statement"]))
            .collect();
        let reads: Vec<&Value> = statements
            .iter()
            .filter(|s| {
                s["Resource"]["Fn::Sub"]
                    .as_str()
                    .is_some_and(|r| r.ends_with(&table("connections")))
            })
            .collect();
        assert_eq!(reads.len(), 1, "{role}: {reads:?}");
        assert_eq!(reads[0]["Action"], "dynamodb:GetItem", "{role}");
        assert_eq!(
            reads[0]["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"],
            serde_json::json!(["id", "connection"]),
            "{role}"
        );
        assert!(
            !serde_json::to_string(&statements)
                .unwrap()
                .contains(&table("calls")),
            "{role} reaches the calls table"
        );
    }
}
