//! Durations written the way Kubernetes users already write them: Go's
//! `time.ParseDuration` format restricted to whole numbers (`90s`, `15m`,
//! `1h30m`, `720h`). The same strings work in CEL's `duration()`, which the
//! CRD rules use to compare them.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The pattern the schema enforces.
const PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// A duration such as `30s`, `15m` or `1h30m` (units: ms, s, m, h).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

/// Why a string is not a [`Duration`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: expected whole numbers with units ms, s, m or h, such as 90s or 1h30m")]
pub struct DurationError(String);

impl Duration {
    /// The parsed value.
    pub fn get(&self) -> std::time::Duration {
        self.value
    }
}

impl FromStr for Duration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(text.to_owned());
        let mut total = std::time::Duration::ZERO;
        let mut rest = text;
        if rest.is_empty() {
            return Err(err());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            if digits == 0 {
                return Err(err());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| err())?;
            rest = &rest[digits..];
            let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let millis_per_unit: u64 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            let millis = number.checked_mul(millis_per_unit).ok_or_else(err)?;
            total = total.checked_add(std::time::Duration::from_millis(millis)).ok_or_else(err)?;
        }
        Ok(Self { text: text.to_owned(), value: total })
    }
}

impl TryFrom<String> for Duration {
    type Error = DurationError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Duration> for String {
    fn from(d: Duration) -> Self {
        d.text
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": PATTERN, "maxLength": 32 })
    }

    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as Std;

    #[test]
    fn parses_go_style_durations() {
        let cases = [
            ("90s", Std::from_secs(90)),
            ("15m", Std::from_secs(900)),
            ("1h30m", Std::from_secs(5400)),
            ("720h", Std::from_secs(720 * 3600)),
            ("250ms", Std::from_millis(250)),
            ("1m30s500ms", Std::from_millis(90_500)),
            ("0s", Std::ZERO),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Duration>().unwrap().get(), want, "{text}");
        }
    }

    #[test]
    fn rejects_what_the_schema_rejects() {
        // NB: Rust's regex and the apiserver's RE2 agree on this syntax.
        let re = regex::Regex::new(PATTERN).unwrap();
        let pattern = |s: &str| re.is_match(s);
        for text in ["", "10", "h", "1.5h", "-1s", "1d", "1 h", "1H", "s1"] {
            assert!(text.parse::<Duration>().is_err(), "{text:?} should be rejected");
            assert!(!pattern(text), "{text:?} should fail the schema pattern");
        }
        for text in ["1s", "1h30m", "250ms"] {
            assert!(pattern(text), "{text:?} should pass the schema pattern");
        }
    }

    #[test]
    fn error_names_the_input_and_format() {
        let err = "1d".parse::<Duration>().unwrap_err().to_string();
        assert!(err.contains("\"1d\"") && err.contains("1h30m"), "{err}");
    }

    #[test]
    fn serde_round_trips_the_text() {
        let d: Duration = serde_json::from_str("\"1h30m\"").unwrap();
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1h30m\"");
        assert!(serde_json::from_str::<Duration>("\"soon\"").is_err());
    }
}
