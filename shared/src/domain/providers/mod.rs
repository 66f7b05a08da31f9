//! One module per provider. Each turns one webhook payload (a JSON object; TeleCMI's GET
//! query parameters arrive as an object of strings) into one [`CallEvent`], or a precise error.

mod fields;
mod recording;
pub mod telecmi;
pub mod telsmart;
pub mod teltel;
pub mod voys;

pub use fields::Fields;

use super::event::{CallEvent, Provider, event_id};
use serde_json::Value;
use std::fmt;

/// Why a payload was refused: which field, and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The field at fault, as a dotted path (`caller.number`); `None` for the payload as a whole.
    pub field: Option<String>,
    pub reason: String,
}

impl ParseError {
    pub fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            reason: reason.into(),
        }
    }

    pub fn payload(reason: impl Into<String>) -> Self {
        Self {
            field: None,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "`{field}` {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl std::error::Error for ParseError {}

/// A parsed webhook: its event, and the tenant, app or account it names (checked against the
/// connection's `account`).
#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    pub event: CallEvent,
    pub account: Option<String>,
}

/// Parses one payload of `provider` and gives its event a stable id.
pub fn parse(provider: Provider, payload: &Value) -> Result<Webhook, ParseError> {
    let fields = Fields::root(payload)?;
    let mut webhook = match provider {
        Provider::Telsmart => telsmart::parse(&fields),
        Provider::Teltel => teltel::parse(&fields),
        Provider::Voys => voys::parse(&fields),
        Provider::Telecmi => telecmi::parse(&fields),
    }?;
    webhook.event.id = event_id(provider, payload);
    Ok(webhook)
}
