//! A tiny `--flag value` parser, so the examples need no CLI crate.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Parsed `--name value` pairs and bare words.
#[derive(Debug, Default)]
pub struct Args {
    flags: HashMap<String, String>,
    /// Words that are not flags, in order.
    pub words: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`, skipping the program name.
    pub fn from_env() -> anyhow::Result<Self> {
        Self::parse(std::env::args().skip(1))
    }

    /// Parses `--name value` pairs; every flag takes a value.
    pub fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut parsed = Args::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.strip_prefix("--") {
                Some(name) => {
                    let Some(value) = args.next() else {
                        bail!("--{name} needs a value");
                    };
                    parsed.flags.insert(name.to_owned(), value);
                }
                None => parsed.words.push(arg),
            }
        }
        Ok(parsed)
    }

    /// A string flag.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.flags.get(name).map(String::as_str)
    }

    /// A duration flag such as `2s` or `150ms`.
    pub fn duration(&self, name: &str, default: Duration) -> anyhow::Result<Duration> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => humantime::parse_duration(value)
                .with_context(|| format!("--{name} {value:?} is not a duration (e.g. 2s, 150ms)")),
        }
    }

    /// A number flag.
    pub fn number(&self, name: &str, default: u64) -> anyhow::Result<u64> {
        match self.get(name) {
            None => Ok(default),
            Some(value) => value
                .parse()
                .with_context(|| format!("--{name} {value:?} is not a number")),
        }
    }
}
