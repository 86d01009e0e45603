//! Command-line arguments: `--name value` options and bare `--flag`s after a mode.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// Parsed arguments: the mode (first word, if not an option), options and flags.
#[derive(Debug, Default)]
pub(crate) struct Args {
    pub(crate) mode: Option<String>,
    options: HashMap<String, String>,
    flags: Vec<String>,
}

/// Options that take no value.
const FLAGS: [&str; 3] = ["quick", "help", "lean"];

impl Args {
    pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut parsed = Args::default();
        let mut args = args.into_iter().peekable();
        if args.peek().is_some_and(|first| !first.starts_with("--")) {
            parsed.mode = args.next();
        }
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                bail!("unexpected argument {arg:?}");
            };
            if let Some((name, value)) = name.split_once('=') {
                parsed.options.insert(name.to_owned(), value.to_owned());
            } else if FLAGS.contains(&name) {
                parsed.flags.push(name.to_owned());
            } else {
                let value = args
                    .next()
                    .with_context(|| format!("--{name} needs a value"))?;
                parsed.options.insert(name.to_owned(), value);
            }
        }
        Ok(parsed)
    }

    pub(crate) fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|flag| flag == name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    pub(crate) fn required(&self, name: &str) -> Result<&str> {
        self.get(name)
            .with_context(|| format!("--{name} is required"))
    }

    pub(crate) fn duration(&self, name: &str) -> Result<Duration> {
        let text = self.required(name)?;
        humantime::parse_duration(text).with_context(|| format!("--{name} {text:?}"))
    }

    pub(crate) fn number(&self, name: &str) -> Result<u64> {
        let text = self.required(name)?;
        text.parse().with_context(|| format!("--{name} {text:?}"))
    }

    /// A comma-separated list, or `None` if the option is absent.
    pub(crate) fn list(&self, name: &str) -> Option<Vec<String>> {
        self.get(name).map(|text| {
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::parse(args.iter().map(|s| s.to_string())).unwrap()
    }

    #[test]
    fn options_flags_and_mode_are_told_apart() {
        let args = parse(&["hold", "--routines", "10", "--quick", "--ttl=5s"]);
        assert_eq!(args.mode.as_deref(), Some("hold"));
        assert_eq!(args.number("routines").unwrap(), 10);
        assert_eq!(args.duration("ttl").unwrap(), Duration::from_secs(5));
        assert!(args.flag("quick"));
        assert!(!args.flag("help"));
    }

    #[test]
    fn lists_split_on_commas() {
        let args = parse(&["--backends", "redis, etcd,"]);
        assert_eq!(args.mode, None);
        assert_eq!(args.list("backends").unwrap(), ["redis", "etcd"]);
    }

    #[test]
    fn an_option_without_value_is_an_error() {
        assert!(Args::parse(["--json".to_owned()]).is_err());
        assert!(Args::parse(["a".to_owned(), "b".to_owned()]).is_err());
    }
}
