//! Reading a `PostgresBackendBuilder` from environment variables.

use leasehold_core::{Error, Result};

use crate::config::{PostgresBackendBuilder, Sourced};

/// The URL, preferred over [`DATABASE_URL`].
const URL: &str = "ROUTINE_POSTGRES_URL";
/// The conventional URL variable, used when [`URL`] is not set.
const DATABASE_URL: &str = "DATABASE_URL";
const SCHEMA: &str = "ROUTINE_POSTGRES_SCHEMA";
const TABLE: &str = "ROUTINE_POSTGRES_TABLE";
const NAMESPACE: &str = "ROUTINE_POSTGRES_NAMESPACE";
const REQUEST_TIMEOUT: &str = "ROUTINE_POSTGRES_REQUEST_TIMEOUT";

impl PostgresBackendBuilder {
    /// A builder from the process environment:
    ///
    /// | variable | meaning | default |
    /// |---|---|---|
    /// | `ROUTINE_POSTGRES_URL`, else `DATABASE_URL` | the server URL | required |
    /// | `ROUTINE_POSTGRES_SCHEMA` | schema of the fencing table | `public` |
    /// | `ROUTINE_POSTGRES_TABLE` | name of the fencing table | `routine_fencing` |
    /// | `ROUTINE_POSTGRES_NAMESPACE` | key namespace | `routine` |
    /// | `ROUTINE_POSTGRES_REQUEST_TIMEOUT` | request timeout, e.g. `3s`, `500ms` (`humantime`) | `5s` |
    ///
    /// A URL without a host (`postgres:///app`) takes it from `PGHOST` and `PGPORT`, as
    /// libpq does, lists included (`PGHOST=db1,db2`, `PGPORT=5432,5433`: one port for
    /// all, or one per host); see [`with_url`](Self::with_url) for several servers.
    ///
    /// Setters called afterwards override the environment.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the variable if one is missing, not UTF-8 or malformed.
    /// Values that need no parsing (URL, identifiers) are checked by
    /// [`build`](Self::build), whose errors also name the variable.
    pub fn from_env() -> Result<Self> {
        Self::from_env_with(|name| match std::env::var(name) {
            Ok(value) => Ok(Some(value)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(err @ std::env::VarError::NotUnicode(_)) => {
                Err(Error::config_with_source(name, "not valid UTF-8", err))
            }
        })
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup` (for tests,
    /// or configuration that comes from elsewhere): it returns `Ok(None)` for an unset
    /// variable.
    ///
    /// # Errors
    ///
    /// As for [`from_env`](Self::from_env), and any error `lookup` returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use leasehold_postgres::PostgresBackendBuilder;
    ///
    /// let err = PostgresBackendBuilder::from_env_with(|name| {
    ///     Ok(match name {
    ///         "DATABASE_URL" => Some("postgres://db/app".to_owned()),
    ///         "ROUTINE_POSTGRES_REQUEST_TIMEOUT" => Some("soon".to_owned()),
    ///         _ => None,
    ///     })
    /// })
    /// .unwrap_err();
    /// assert!(err.to_string().contains("ROUTINE_POSTGRES_REQUEST_TIMEOUT"));
    /// ```
    pub fn from_env_with(lookup: impl Fn(&str) -> Result<Option<String>>) -> Result<Self> {
        let mut builder = Self::new();
        let set = |name: &'static str| -> Result<Option<Sourced<String>>> {
            Ok(lookup(name)?.map(|value| Sourced::new(value, name)))
        };
        builder.url = match set(URL)? {
            Some(url) => Some(url),
            None => set(DATABASE_URL)?,
        };
        if builder.url.is_none() {
            return Err(Error::config(
                URL,
                format!("not set (nor {DATABASE_URL}): the PostgreSQL URL is required"),
            ));
        }
        builder.with_env_settings(lookup)
    }

    /// Applies the optional variables of [`from_env`](Self::from_env) other than the URL
    /// (`ROUTINE_POSTGRES_SCHEMA`, `_TABLE`, `_NAMESPACE`, `_REQUEST_TIMEOUT`), read
    /// through `lookup`, to this builder: for a URL that comes from elsewhere, such as
    /// `leasehold`'s `ROUTINE_BACKEND_URL` (see [`with_url_from`](Self::with_url_from)).
    ///
    /// # Errors
    ///
    /// As for [`from_env`](Self::from_env), for these variables.
    pub fn with_env_settings(
        mut self,
        lookup: impl Fn(&str) -> Result<Option<String>>,
    ) -> Result<Self> {
        let builder = &mut self;
        let set = |name: &'static str| -> Result<Option<Sourced<String>>> {
            Ok(lookup(name)?.map(|value| Sourced::new(value, name)))
        };
        if let Some(schema) = set(SCHEMA)? {
            builder.schema = schema;
        }
        if let Some(table) = set(TABLE)? {
            builder.table = table;
        }
        if let Some(namespace) = set(NAMESPACE)? {
            builder.namespace = namespace;
        }
        if let Some(timeout) = set(REQUEST_TIMEOUT)? {
            let value = humantime::parse_duration(timeout.value.trim()).map_err(|err| {
                let reason = format!("{:?} is not a duration such as `5s`", timeout.value);
                Error::config_with_source(REQUEST_TIMEOUT, reason, err)
            })?;
            builder.request_timeout = Sourced::new(value, REQUEST_TIMEOUT);
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;

    fn from(vars: &[(&str, &str)]) -> Result<PostgresBackendBuilder> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PostgresBackendBuilder::from_env_with(|name| Ok(vars.get(name).cloned()))
    }

    fn setting_of(err: Error) -> String {
        match err {
            Error::Config { setting, .. } => setting,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn routine_url_wins_over_database_url() {
        let builder = from(&[
            (URL, "postgres://routine/db"),
            (DATABASE_URL, "postgres://other/db"),
        ])
        .unwrap();
        let url = builder.url.unwrap();
        assert_eq!(url.value, "postgres://routine/db");
        assert_eq!(url.setting, URL);
    }

    #[test]
    fn a_url_from_elsewhere_takes_the_other_variables() {
        let vars: HashMap<&str, &str> = [(SCHEMA, "ops"), (TABLE, "fences")].into();
        let builder = PostgresBackendBuilder::new()
            .with_url_from("postgres://h/db", "ROUTINE_BACKEND_URL")
            .with_env_settings(|name| Ok(vars.get(name).map(|v| v.to_string())))
            .unwrap();
        let url = builder.url.clone().unwrap();
        assert_eq!(url.setting, "ROUTINE_BACKEND_URL");
        let settings = builder.settings().unwrap();
        assert_eq!(settings.qualified_table, "\"ops\".\"fences\"");
        let err = PostgresBackendBuilder::new()
            .with_url_from("mysql://h/db", "ROUTINE_BACKEND_URL")
            .settings()
            .unwrap_err();
        assert_eq!(setting_of(err), "ROUTINE_BACKEND_URL");
    }

    #[test]
    fn missing_url_names_the_variable() {
        let err = from(&[]).unwrap_err();
        assert!(err.to_string().contains(DATABASE_URL), "{err}");
        assert_eq!(setting_of(err), URL);
    }

    #[test]
    fn malformed_values_name_their_variable() {
        let err = from(&[(DATABASE_URL, "postgres://h/db"), (REQUEST_TIMEOUT, "5")]).unwrap_err();
        assert_eq!(setting_of(err), REQUEST_TIMEOUT);
        for (name, value) in [
            (DATABASE_URL, "http://h/db"),
            (SCHEMA, ""),
            (TABLE, "x\ny"),
            (NAMESPACE, ""),
        ] {
            let mut vars = vec![(DATABASE_URL, "postgres://h/db")];
            vars.push((name, value));
            let err = from(&vars).unwrap().settings().unwrap_err();
            assert_eq!(setting_of(err), name, "bad {name}={value:?}");
        }
        let err = from(&[(URL, "postgres://h:notaport/db")])
            .unwrap()
            .settings()
            .unwrap_err();
        assert_eq!(setting_of(err), URL);
    }

    #[test]
    fn all_variables_are_read() {
        let settings = from(&[
            (DATABASE_URL, "postgres://h/db"),
            (SCHEMA, "ops"),
            (TABLE, "fences"),
            (NAMESPACE, "billing"),
            (REQUEST_TIMEOUT, "1500ms"),
        ])
        .unwrap()
        .settings()
        .unwrap();
        assert_eq!(settings.qualified_table, "\"ops\".\"fences\"");
        assert_eq!(settings.namespace, "billing");
        assert_eq!(settings.request_timeout, Duration::from_millis(1500));
    }
}
