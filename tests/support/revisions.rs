//! The check of a scenario's Morph events against the `revisions` of its `.expected.json`
//! (written by hand from the providers' and Morph's documents). One module for the three runs of the scenarios: the
//! core's (`shared/tests/scenarios.rs`), the local server's and the AWS path's
//! (`tests/support/scenario.rs`).

use serde_json::Value;

/// The differences between the Morph events one call got (their bodies, in order) and the
/// reference's `revisions`: event name, `data.fields` and `data.rawResource` of each, exactly.
pub fn revision_faults(revisions: &[Value], delivered: &[&Value]) -> Vec<String> {
    let mut faults = Vec::new();
    if revisions.len() != delivered.len() {
        faults.push(format!(
            "{} events, the reference has {} revisions",
            delivered.len(),
            revisions.len()
        ));
    }
    for (n, (expected, got)) in revisions.iter().zip(delivered).enumerate() {
        let data = &got["data"];
        for (what, reference, program) in [
            ("event", &expected["event"], &got["event"]),
            ("fields", &expected["fields"], &data["fields"]),
            (
                "rawResource",
                &expected["rawResource"],
                &data["rawResource"],
            ),
        ] {
            if program != reference {
                faults.push(format!(
                    "revision {}: {what} {program}\n  reference {reference}",
                    n + 1
                ));
            }
        }
    }
    faults
}

/// The faults of a reference with itself: its `events` are its revisions' names, its `fields`
/// its last revision's (a deletion repeats the fields it deletes), and every revision says
/// what its `rawResource` is. Empty when `revisions` is absent.
pub fn reference_faults(call: &Value) -> Vec<String> {
    let Some(revisions) = call.get("revisions").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut faults = Vec::new();
    let names: Vec<&Value> = revisions.iter().map(|r| &r["event"]).collect();
    let events: Vec<&Value> = call["events"].as_array().into_iter().flatten().collect();
    if names != events {
        faults.push(format!("reference: events {events:?}, revisions {names:?}"));
    }
    if let Some(last) = revisions.last()
        && last["fields"] != call["fields"]
    {
        faults.push("reference: fields are not the last revision's".to_string());
    }
    if revisions.iter().any(|r| r.get("rawResource").is_none()) {
        faults.push("reference: a revision without rawResource".to_string());
    }
    faults
}

/// Judges a scenario by its faults: `Err` says why it failed.
pub fn verdict(scenario: &str, faults: &[String]) -> Result<(), String> {
    if faults.is_empty() {
        Ok(())
    } else {
        Err(format!("{scenario}:\n{}", faults.join("\n")))
    }
}
