//! The template and the configuration agree: every environment variable a function of
//! `template.yaml` is given is one the [`Config`] reads, and each function's settings read from
//! exactly what the template gives it, so a variable the settings need is one the template sets
//! or one with a default.

use callbridge_shared::config::ENVIRONMENT;
use callbridge_shared::hosts::lambda::webhook_function::IngestSettings;
use callbridge_shared::hosts::lambda::worker_function::WorkerSettings;
use std::collections::BTreeMap;
use std::time::Duration;

/// Read by the telemetry, not the [`Config`]: the log filter and the metrics' namespace.
const TELEMETRY_VARIABLES: [&str; 2] = ["RUST_LOG", "METRICS_NAMESPACE"];

/// A function of the template: where its code is and its environment, as deployed.
struct Function {
    name: String,
    code_uri: String,
    variables: BTreeMap<String, String>,
}

/// The template's functions, read line by line (the template's own layout: two spaces per
/// level). A value is what CloudFormation would give: a literal as written, `!Ref` of a
/// parameter its default, `!Ref` of a resource a name (its logical id stands for it).
fn template_functions() -> Vec<Function> {
    let template =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../template.yaml"))
            .expect("template.yaml reads");
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut defaults = BTreeMap::new();
    let mut functions = Vec::new();
    let (mut section, mut resource, mut in_variables) = (String::new(), String::new(), None);
    for line in template.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (key, value) = trimmed
            .split_once(':')
            .map_or((trimmed, ""), |(k, v)| (k.trim(), v.trim()));
        match indent(line) {
            0 => section = key.to_owned(),
            2 => {
                resource = key.to_owned();
                in_variables = None;
            }
            4 if section == "Parameters" && key == "Default" => {
                defaults.insert(resource.clone(), value.trim_matches('"').to_owned());
            }
            level if section == "Resources" => {
                if in_variables.is_some_and(|at| level <= at) {
                    in_variables = None;
                }
                if key == "Type" && value == "AWS::Serverless::Function" {
                    functions.push(Function {
                        name: resource.clone(),
                        code_uri: String::new(),
                        variables: BTreeMap::new(),
                    });
                }
                let Some(function) = functions.last_mut().filter(|f| f.name == resource) else {
                    continue;
                };
                match in_variables {
                    Some(_) => {
                        function.variables.insert(key.to_owned(), value.to_owned());
                    }
                    None if key == "Variables" => in_variables = Some(level),
                    None if key == "CodeUri" => function.code_uri = value.to_owned(),
                    None => {}
                }
            }
            _ => {}
        }
    }
    for function in &mut functions {
        for value in function.variables.values_mut() {
            *value = match value.strip_prefix("!Ref ") {
                Some(name) => defaults
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| name.to_owned()),
                None => value.trim_matches('"').to_owned(),
            };
        }
    }
    assert_eq!(
        functions.len(),
        5,
        "four ingest functions and the worker in the template"
    );
    functions
}

#[test]
fn every_variable_the_template_gives_a_function_is_read() {
    for function in template_functions() {
        assert!(
            !function.variables.is_empty(),
            "{} has no environment",
            function.name
        );
        for variable in function.variables.keys() {
            assert!(
                ENVIRONMENT.iter().any(|(name, _)| name == variable)
                    || TELEMETRY_VARIABLES.contains(&variable.as_str()),
                "{} is given {variable}, which nothing reads",
                function.name
            );
        }
    }
}

#[test]
fn each_functions_settings_read_from_what_the_template_gives_it() {
    for function in template_functions() {
        let vars = |name: &str| function.variables.get(name).cloned();
        let name = &function.name;
        match function.code_uri.as_str() {
            "functions/worker" => {
                let settings =
                    WorkerSettings::from_vars(vars).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(settings.calls_table, "CallsTable");
                assert_eq!(settings.users_table, "UsersTable");
                assert_eq!(settings.dead_letter_queue_url, "DeadLetterQueue");
                // The template's parameters' defaults and its own schedule (docs/aws.md).
                assert_eq!(settings.crm_timeout, Duration::from_millis(5_000));
                assert_eq!(settings.crm_rest_url, None);
                assert_eq!(settings.call_retention, Duration::from_secs(30 * 24 * 3600));
                // 72 hours of retries, 250 ms doubling to 5 minutes (RELIABILITY.md).
                assert_eq!(settings.retry.horizon, Duration::from_secs(72 * 3600));
                assert_eq!(settings.retry.initial, Duration::from_millis(250));
                assert_eq!(settings.retry.cap, Duration::from_secs(300));
                assert_eq!(settings.breaker.open_after, 5);
                assert_eq!(settings.breaker.probe_every, Duration::from_secs(30));
            }
            ingest if ingest.starts_with("functions/ingest-") => {
                let settings =
                    IngestSettings::from_vars(vars).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(settings.connections_table, "ConnectionsTable");
                assert_eq!(settings.queue_url, "WebhookQueue");
                // Only Telsmart's function takes the onboarding requests, which write users.
                let users = (ingest == "functions/ingest-telsmart").then(|| "UsersTable".into());
                assert_eq!(settings.users_table, users, "{name}");
                assert_eq!(settings.connection_cache, Duration::from_secs(60));
            }
            other => panic!("{name}: no settings for the code at {other:?}"),
        }
    }
}
