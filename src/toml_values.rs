//! How settings read TOML values that serde does not: durations written like `"5s"` or
//! `"20ms"`. Every component's settings use these, so they sit below all of them.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration such as `"20ms"`, `"5s"`, `"7d"` (humantime).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration {text:?} ({e}); write e.g. \"20ms\", \"5s\""
        ))
    })
}

/// [`duration`], for an optional setting.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}
