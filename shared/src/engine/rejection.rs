//! A refused request: an HTTP status and a JSON body that says what was wrong. Ingest,
//! signature checks and onboarding all answer with it.

use serde::Serialize;
use serde_json::{Value, json};

/// A refused request: an HTTP status and a JSON body that says what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    #[serde(skip)]
    pub status: u16,
    /// A stable, machine-readable reason.
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(status: u16, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            field: None,
        }
    }

    pub fn body(&self) -> Value {
        json!(self)
    }
}
