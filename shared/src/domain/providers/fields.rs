//! Tolerant field access shared by the provider parsers: unknown fields are ignored, numbers
//! may come as strings and strings as numbers, empty strings count as absent; what we rely on
//! is checked strictly, and every error names its field.

use super::ParseError;
use crate::domain::time::Timestamp;
use serde_json::{Map, Value};

/// A JSON object being read, with the dotted path that leads to it (for error messages).
#[derive(Clone)]
pub struct Fields<'a> {
    object: &'a Map<String, Value>,
    path: String,
}

/// Longest text we accept in any one field; a longer one is an abuse, not a phone number.
const MAX_TEXT: usize = 4096;

impl<'a> Fields<'a> {
    pub fn root(payload: &'a Value) -> Result<Self, ParseError> {
        match payload {
            Value::Object(object) => Ok(Self {
                object,
                path: String::new(),
            }),
            _ => Err(ParseError::payload("the payload must be a JSON object")),
        }
    }

    fn path_of(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    fn value(&self, name: &str) -> Option<&'a Value> {
        self.object.get(name).filter(|v| !v.is_null())
    }

    /// A text field; a number is accepted and written out; an empty string is absent.
    pub fn text(&self, name: &str) -> Result<Option<String>, ParseError> {
        let text = match self.value(name) {
            None => return Ok(None),
            Some(Value::String(s)) => s.trim().to_string(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(_) => {
                return Err(ParseError::field(self.path_of(name), "must be a string"));
            }
        };
        if text.len() > MAX_TEXT {
            return Err(ParseError::field(
                self.path_of(name),
                format!("is longer than {MAX_TEXT} bytes"),
            ));
        }
        Ok((!text.is_empty()).then_some(text))
    }

    pub fn required_text(&self, name: &str) -> Result<String, ParseError> {
        self.text(name)?
            .ok_or_else(|| ParseError::field(self.path_of(name), "is required"))
    }

    /// A whole number; a string holding one is accepted.
    pub fn integer(&self, name: &str) -> Result<Option<i64>, ParseError> {
        let invalid = || ParseError::field(self.path_of(name), "must be a whole number");
        match self.value(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                        .map(|f| f as i64)
                })
                .map(Some)
                .ok_or_else(invalid),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| invalid()),
            Some(_) => Err(invalid()),
        }
    }

    /// A yes/no field: `true`/`false`, `1`/`0`, `"yes"`/`"no"` and their string forms.
    pub fn flag(&self, name: &str) -> Result<Option<bool>, ParseError> {
        let invalid = || ParseError::field(self.path_of(name), "must be true or false");
        match self.value(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(0) => Ok(Some(false)),
                Some(1) => Ok(Some(true)),
                _ => Err(invalid()),
            },
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "" => Ok(None),
                "true" | "1" | "yes" | "y" => Ok(Some(true)),
                "false" | "0" | "no" | "n" => Ok(Some(false)),
                _ => Err(invalid()),
            },
            Some(_) => Err(invalid()),
        }
    }

    /// A time as epoch seconds, milliseconds or microseconds (number or string), or RFC 3339 text.
    pub fn timestamp(&self, name: &str) -> Result<Option<Timestamp>, ParseError> {
        let at = |reason: String| ParseError::field(self.path_of(name), reason);
        match self.value(name) {
            None => Ok(None),
            Some(Value::Number(_)) => {
                let n = self.integer(name)?.expect("a number is present");
                Timestamp::from_epoch_any_unit(n).map(Some).map_err(at)
            }
            Some(Value::String(s)) => {
                let s = s.trim();
                if s.is_empty() {
                    Ok(None)
                } else if s.bytes().all(|b| b.is_ascii_digit()) {
                    let n: i64 = s.parse().map_err(|_| at("is out of range".into()))?;
                    Timestamp::from_epoch_any_unit(n).map(Some).map_err(at)
                } else {
                    Timestamp::parse_rfc3339(s).map(Some).map_err(at)
                }
            }
            Some(_) => Err(at("must be an epoch number or an RFC 3339 date-time".into())),
        }
    }

    pub fn required_timestamp(&self, name: &str) -> Result<Timestamp, ParseError> {
        self.timestamp(name)?
            .ok_or_else(|| ParseError::field(self.path_of(name), "is required"))
    }

    /// A nested object, if present.
    pub fn object(&self, name: &str) -> Result<Option<Fields<'a>>, ParseError> {
        match self.value(name) {
            None => Ok(None),
            Some(Value::Object(object)) => Ok(Some(Fields {
                object,
                path: self.path_of(name),
            })),
            Some(_) => Err(ParseError::field(self.path_of(name), "must be an object")),
        }
    }

    /// A field's JSON as it came, for data kept whole rather than read (Telsmart's summary).
    pub fn raw(&self, name: &str) -> Option<&'a Value> {
        self.value(name)
    }

    /// Whether the field is present and not null.
    pub fn has(&self, name: &str) -> bool {
        self.value(name).is_some()
    }

    /// A list of texts; a single text is read as a list of one.
    pub fn texts(&self, name: &str) -> Result<Vec<String>, ParseError> {
        match self.value(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::String(s) if s.trim().is_empty() => None,
                    Value::String(s) => Some(Ok(s.trim().to_string())),
                    Value::Number(n) => Some(Ok(n.to_string())),
                    Value::Null => None,
                    _ => Some(Err(ParseError::field(
                        format!("{}[{i}]", self.path_of(name)),
                        "must be a string",
                    ))),
                })
                .collect(),
            Some(_) => Ok(self.text(name)?.into_iter().collect()),
        }
    }

    /// A list of objects; a single object is read as a list of one.
    pub fn objects(&self, name: &str) -> Result<Vec<Fields<'a>>, ParseError> {
        match self.value(name) {
            None => Ok(Vec::new()),
            Some(Value::Object(object)) => Ok(vec![Fields {
                object,
                path: self.path_of(name),
            }]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::Object(object) => Ok(Fields {
                        object,
                        path: format!("{}[{i}]", self.path_of(name)),
                    }),
                    _ => Err(ParseError::field(
                        format!("{}[{i}]", self.path_of(name)),
                        "must be an object",
                    )),
                })
                .collect(),
            Some(_) => Err(ParseError::field(
                self.path_of(name),
                "must be a list of objects",
            )),
        }
    }

    /// A text field that must be one of `allowed` (compared without case); gives the allowed
    /// spelling back.
    pub fn one_of(
        &self,
        name: &str,
        allowed: &[&'static str],
    ) -> Result<Option<&'static str>, ParseError> {
        let Some(text) = self.text(name)? else {
            return Ok(None);
        };
        allowed
            .iter()
            .find(|a| a.eq_ignore_ascii_case(&text))
            .copied()
            .map(Some)
            .ok_or_else(|| {
                ParseError::field(
                    self.path_of(name),
                    format!("is `{text}`, expected one of: {}", allowed.join(", ")),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_and_strings_are_interchangeable() {
        let payload = json!({"a": 42, "b": "42", "c": "", "d": null, "e": [1, "x"]});
        let f = Fields::root(&payload).unwrap();
        assert_eq!(f.text("a").unwrap().as_deref(), Some("42"));
        assert_eq!(f.integer("b").unwrap(), Some(42));
        assert_eq!(f.text("c").unwrap(), None);
        assert_eq!(f.integer("d").unwrap(), None);
        assert_eq!(
            f.texts("e").unwrap(),
            vec!["1".to_string(), "x".to_string()]
        );
        assert_eq!(f.texts("a").unwrap(), vec!["42".to_string()]);
    }

    #[test]
    fn errors_name_the_field() {
        let payload = json!({"caller": {"number": {"x": 1}}, "n": "abc"});
        let f = Fields::root(&payload).unwrap();
        let caller = f.object("caller").unwrap().unwrap();
        let err = caller.text("number").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("caller.number"));
        assert_eq!(f.integer("n").unwrap_err().field.as_deref(), Some("n"));
        assert_eq!(
            f.required_text("missing").unwrap_err().reason,
            "is required"
        );
    }

    #[test]
    fn timestamps_in_any_unit_or_text() {
        let payload = json!({"us": "1765209366386177", "ms": 1650635340436_i64, "iso": "2023-09-01T13:41:25.972110+00:00", "bad": "yesterday"});
        let f = Fields::root(&payload).unwrap();
        assert_eq!(
            f.required_timestamp("us").unwrap().as_micros(),
            1_765_209_366_386_177
        );
        assert_eq!(
            f.required_timestamp("ms").unwrap().as_micros(),
            1_650_635_340_436_000
        );
        assert_eq!(
            f.required_timestamp("iso").unwrap().as_micros(),
            1_693_575_685_972_110
        );
        assert_eq!(
            f.timestamp("bad").unwrap_err().field.as_deref(),
            Some("bad")
        );
    }
}
