//! Parameter types with units: durations ("0.6s"), byte sizes ("4GiB") and resolutions ("720p").
//!
//! Each is a newtype that deserializes from the string users write and reports a JSON-schema
//! `format`, so the validator can check it (with a positioned error) before anything runs.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Implements serde and JsonSchema for a unit newtype through its `FromStr` and `Display`.
macro_rules! unit_type {
    ($ty:ident, $format:literal, $examples:expr) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl JsonSchema for $ty {
            fn inline_schema() -> bool {
                true
            }
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({ "type": "string", "format": $format, "examples": $examples })
            }
        }
    };
}

/// A length of time written with a unit: "500ms", "0.6s", "12s", "2m", "1h".
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// Seconds as a float, the unit most stage math wants.
    pub fn as_secs_f64(&self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = split_number(s.trim());
        let value: f64 = num.parse().map_err(|_| {
            format!("`{s}` is not a duration; write a number with a unit, e.g. \"0.6s\", \"500ms\", \"2m\"")
        })?;
        let scale = match unit {
            "ms" => 1e-3,
            "s" | "sec" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("`{s}` has no unit; write e.g. \"{s}s\" for seconds or \"{s}ms\"")),
            other => return Err(format!("unknown duration unit `{other}` in `{s}`; use ms, s, m or h")),
        };
        if !value.is_finite() || value < 0.0 {
            return Err(format!("`{s}` must be a non-negative duration"));
        }
        Ok(Duration(std::time::Duration::from_secs_f64(value * scale)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_secs_f64() * 1e3;
        if ms < 1000.0 && ms.fract() == 0.0 {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", self.0.as_secs_f64())
        }
    }
}

unit_type!(Duration, "duration", ["0.6s", "500ms", "2m"]);

/// A number of bytes written with a unit: "512MiB", "4GiB", "1.5GB", or a bare byte count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (num, unit) = split_number(s.trim());
        let value: f64 = num.parse().map_err(|_| format!("`{s}` is not a size; write e.g. \"512MiB\" or \"4GiB\""))?;
        let scale: f64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            "kib" | "k" => 1024.0,
            "mib" | "m" => 1024f64.powi(2),
            "gib" | "g" => 1024f64.powi(3),
            "tib" | "t" => 1024f64.powi(4),
            _ => return Err(format!("unknown size unit in `{s}`; use B, KiB, MiB, GiB, TiB (or kB, MB, GB, TB)")),
        };
        if !value.is_finite() || value < 0.0 {
            return Err(format!("`{s}` must be a non-negative size"));
        }
        Ok(ByteSize((value * scale).round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
        let mut v = self.0 as f64;
        let mut u = 0;
        while v >= 1024.0 && u < UNITS.len() - 1 && (v / 1024.0).fract() == 0.0 {
            v /= 1024.0;
            u += 1;
        }
        write!(f, "{v}{}", UNITS[u])
    }
}

unit_type!(ByteSize, "byte-size", ["512MiB", "4GiB"]);

/// A frame size: "720p" (1280x720), "480p", "1080p", or explicit "WIDTHxHEIGHT".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl FromStr for Resolution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a resolution; write e.g. \"720p\" or \"1280x720\"");
        let t = s.trim().to_ascii_lowercase();
        if let Some(h) = t.strip_suffix('p') {
            let height: u32 = h.parse().map_err(|_| bad())?;
            // "Np" names the 16:9 frame of height N, rounded to an even width.
            let width = (height * 16 / 9 + 1) & !1;
            return Ok(Resolution { width, height });
        }
        let (w, h) = t.split_once('x').ok_or_else(bad)?;
        let (width, height) = (w.parse().map_err(|_| bad())?, h.parse().map_err(|_| bad())?);
        if width == 0 || height == 0 {
            return Err(bad());
        }
        Ok(Resolution { width, height })
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

unit_type!(Resolution, "resolution", ["720p", "1280x720"]);

/// Split "12.5ms" into ("12.5", "ms").
fn split_number(s: &str) -> (&str, &str) {
    let end =
        s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e')).unwrap_or(s.len());
    // An 'e' right before the unit is more likely part of the unit than an exponent.
    let (n, u) = s.split_at(end);
    (n.trim(), u.trim())
}

/// Check a string against a unit `format` named in a schema; `Ok` for formats we don't know.
pub fn check_format(format: &str, value: &str) -> Result<(), String> {
    match format {
        "duration" => value.parse::<Duration>().map(drop),
        "byte-size" => value.parse::<ByteSize>().map(drop),
        "resolution" => value.parse::<Resolution>().map(drop),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!("0.6s".parse::<Duration>().unwrap().as_secs_f64(), 0.6);
        assert_eq!("500ms".parse::<Duration>().unwrap().as_secs_f64(), 0.5);
        assert_eq!("12s".parse::<Duration>().unwrap().as_secs_f64(), 12.0);
        assert_eq!("2m".parse::<Duration>().unwrap().as_secs_f64(), 120.0);
        assert!("12".parse::<Duration>().unwrap_err().contains("no unit"));
        assert!("12parsecs".parse::<Duration>().unwrap_err().contains("unknown duration unit"));
        assert!("fast".parse::<Duration>().is_err());
        assert_eq!("500ms".parse::<Duration>().unwrap().to_string(), "500ms");
        assert_eq!("0.6s".parse::<Duration>().unwrap().to_string(), "600ms");
        assert_eq!("1.5s".parse::<Duration>().unwrap().to_string(), "1.5s");
    }

    #[test]
    fn sizes() {
        assert_eq!("4GiB".parse::<ByteSize>().unwrap().0, 4 << 30);
        assert_eq!("1.5GB".parse::<ByteSize>().unwrap().0, 1_500_000_000);
        assert_eq!("4GiB".parse::<ByteSize>().unwrap().to_string(), "4GiB");
        assert!("4 gigs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn resolutions() {
        assert_eq!("720p".parse::<Resolution>().unwrap(), Resolution { width: 1280, height: 720 });
        assert_eq!("480p".parse::<Resolution>().unwrap(), Resolution { width: 854, height: 480 });
        assert_eq!("1280x720".parse::<Resolution>().unwrap().to_string(), "1280x720");
        assert!("720i".parse::<Resolution>().is_err());
    }
}
