//! TLS: the builder's TLS settings, the check that the certificate files named anywhere
//! can be read, and what a failed handshake means.
//!
//! `sqlx` takes libpq's parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`) from
//! the URL and libpq's variables (`PGSSLMODE`, `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`)
//! from the environment, and reads the files only when it connects: a missing file then
//! shows up as an outage ("No such file or directory"). So the files are opened once when
//! the backend is built, and a failure is a configuration error naming the setting. The
//! server name is not a setting: `sqlx` checks the certificate against the host
//! connected to and has no `hostaddr` to connect elsewhere, so connect by a name (or IP
//! address) the certificate carries.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use leasehold_core::{Error, Result};
use sqlx::postgres::PgSslMode;

use crate::NAME;

/// TLS settings given to the builder; each overrides the URL's parameter of the same
/// meaning.
#[derive(Clone, Debug, Default)]
pub(crate) struct TlsSettings {
    pub(crate) ssl_mode: Option<String>,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) cert_file: Option<PathBuf>,
    pub(crate) key_file: Option<PathBuf>,
}

impl TlsSettings {
    /// `url` with these settings appended as libpq parameters (a later parameter wins in
    /// `sqlx`), after checking them: an unknown mode, half a client identity or an
    /// unreadable file is [`Error::Config`] naming the builder setting.
    pub(crate) fn apply_to(&self, url: &str) -> Result<String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::config(
                "cert_file/key_file",
                "a client certificate needs both the certificate and the key file",
            ));
        }
        let mut params = Vec::new();
        if let Some(mode) = &self.ssl_mode {
            PgSslMode::from_str(mode).map_err(|err| {
                Error::config_with_source(
                    "ssl_mode",
                    format!(
                        "`{mode}` is not an sslmode (disable, allow, prefer, require, \
                         verify-ca, verify-full)"
                    ),
                    err,
                )
            })?;
            params.push(("sslmode", mode.clone()));
        }
        for (setting, param, file) in [
            ("ca_file", "sslrootcert", &self.ca_file),
            ("cert_file", "sslcert", &self.cert_file),
            ("key_file", "sslkey", &self.key_file),
        ] {
            if let Some(path) = file {
                let path = path.display().to_string();
                readable(setting, &path)?;
                params.push((param, path));
            }
        }
        if params.is_empty() {
            return Ok(url.to_owned());
        }
        let mut url = url.to_owned();
        for (name, value) in params {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(name);
            url.push('=');
            url.extend(url::form_urlencoded::byte_serialize(value.as_bytes()));
        }
        Ok(url)
    }
}

/// Checks that the certificate files named by the URL (`url_setting` in errors) or, where
/// it names none, by libpq's variables can be opened, unless `sslmode` is `disable`.
pub(crate) fn check_files(
    url: &str,
    url_setting: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<()> {
    let query: Vec<(String, String)> = url
        .split_once('?')
        .map(|(_, query)| {
            url::form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let param = |names: &[&str]| {
        query
            .iter()
            .rev()
            .find(|(key, _)| names.contains(&key.as_str()))
            .map(|(_, value)| value.clone())
    };
    let mode = param(&["sslmode", "ssl-mode"]).or_else(|| env("PGSSLMODE"));
    if mode.is_some_and(|mode| mode.eq_ignore_ascii_case("disable")) {
        return Ok(());
    }
    for (names, variable) in [
        (
            &["sslrootcert", "ssl-root-cert", "ssl-ca"][..],
            "PGSSLROOTCERT",
        ),
        (&["sslcert", "ssl-cert"][..], "PGSSLCERT"),
        (&["sslkey", "ssl-key"][..], "PGSSLKEY"),
    ] {
        let (setting, path) = match param(names) {
            Some(path) => (format!("{url_setting} ({})", names[0]), path),
            None => match env(variable) {
                Some(path) => (variable.to_owned(), path),
                None => continue,
            },
        };
        readable(&setting, &path)?;
    }
    Ok(())
}

/// Opens `path` to see that it can be read; PEM given inline (as `sqlx` also accepts)
/// is not a path.
fn readable(setting: &str, path: &str) -> Result<()> {
    if path.trim_start().starts_with("-----BEGIN") {
        return Ok(());
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|err| Error::config_with_source(setting, format!("cannot read `{path}`"), err))
}

/// The error a TLS failure of `operation` maps to, or gives `err` back if it is not one.
///
/// - The server's certificate was not trusted: [`Error::Unavailable`], saying so.
/// - The server requires a client certificate, or admits this client over TLS only:
///   [`Error::Auth`], as the server's refusal (`28000`) says, with words naming the
///   problem.
/// - TLS was required but the server declined it: [`Error::Misconfigured`], the server
///   does not speak TLS.
pub(crate) fn classify(err: sqlx::Error, operation: &'static str) -> Result<Error, sqlx::Error> {
    let problem = match &err {
        sqlx::Error::Io(io) if io.to_string().contains("invalid peer certificate") => {
            Problem::Untrusted
        }
        sqlx::Error::Tls(tls) if tls.to_string().contains("server does not support TLS") => {
            return Ok(Error::misconfigured(
                NAME,
                "sslmode asks for TLS but the server does not speak TLS (it declined the \
                 TLS request): turn ssl on in the server, or use sslmode=disable",
            ));
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("28000") => {
            let message = db.message();
            if message.contains("requires a valid client certificate") {
                Problem::CertificateRequired
            } else if message.contains("no encryption") {
                Problem::TlsRequired
            } else {
                return Err(err);
            }
        }
        _ => return Err(err),
    };
    let failure = TlsFailure {
        problem,
        source: err,
    };
    Ok(match problem {
        Problem::Untrusted => Error::unavailable(NAME, operation, failure),
        Problem::CertificateRequired | Problem::TlsRequired => Error::auth(NAME, failure),
    })
}

#[derive(Debug, Clone, Copy)]
enum Problem {
    Untrusted,
    CertificateRequired,
    TlsRequired,
}

/// The source of a TLS error: what went wrong in words, with `sqlx`'s error as its own
/// source.
#[derive(Debug)]
struct TlsFailure {
    problem: Problem,
    source: sqlx::Error,
}

impl fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.problem {
            Problem::Untrusted => {
                "TLS handshake failed: the server's certificate was not trusted (it is not \
                 signed by a CA of sslrootcert, or the system's roots without one, or, with \
                 sslmode=verify-full, is not issued for the host connected to)"
            }
            Problem::CertificateRequired => {
                "the server requires a client certificate signed by a CA it trusts (set \
                 sslcert and sslkey)"
            }
            Problem::TlsRequired => {
                "the server admits this client over TLS only (no pg_hba.conf entry without \
                 encryption): use sslmode=require or stricter"
            }
        })
    }
}

impl std::error::Error for TlsFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn check(url: &str, env: &[(&str, &str)]) -> Result<()> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        check_files(url, "url", |name| env.get(name).cloned())
    }

    fn setting(result: Result<()>) -> String {
        match result {
            Err(Error::Config { setting, .. }) => setting,
            other => panic!("expected Error::Config, got {other:?}"),
        }
    }

    #[test]
    fn missing_files_in_the_url_or_the_environment_name_their_setting() {
        let url = "postgres://app@db/app?sslmode=verify-full&sslrootcert=/no/such/ca.pem";
        assert_eq!(setting(check(url, &[])), "url (sslrootcert)");
        let url = "postgres://app@db/app?ssl-key=/no/such/key.pem";
        assert_eq!(setting(check(url, &[])), "url (sslkey)");
        assert_eq!(
            setting(check(
                "postgres://app@db/app",
                &[("PGSSLCERT", "/no/such.pem")]
            )),
            "PGSSLCERT"
        );
    }

    #[test]
    fn the_url_parameter_wins_over_the_variable_and_disable_checks_nothing() {
        let readable = std::env::current_exe().unwrap().display().to_string();
        let url = format!("postgres://app@db/app?sslrootcert={readable}");
        check(&url, &[("PGSSLROOTCERT", "/no/such.pem")]).unwrap();
        let url = "postgres://app@db/app?sslmode=disable&sslrootcert=/no/such.pem";
        check(url, &[]).unwrap();
        check(
            "postgres://app@db/app",
            &[("PGSSLMODE", "disable"), ("PGSSLKEY", "/no")],
        )
        .unwrap();
        let inline = "postgres://app@db/app?sslrootcert=-----BEGIN%20CERTIFICATE-----";
        check(inline, &[]).unwrap();
    }

    #[test]
    fn builder_settings_are_appended_as_libpq_parameters() {
        let readable = std::env::current_exe().unwrap();
        let tls = TlsSettings {
            ssl_mode: Some("verify-full".to_owned()),
            ca_file: Some(readable.clone()),
            cert_file: Some(readable.clone()),
            key_file: Some(readable.clone()),
        };
        let url = tls
            .apply_to("postgres://app@h1,h2/app?application_name=x")
            .unwrap();
        let encoded: String =
            url::form_urlencoded::byte_serialize(readable.display().to_string().as_bytes())
                .collect();
        assert_eq!(
            url,
            format!(
                "postgres://app@h1,h2/app?application_name=x&sslmode=verify-full\
                 &sslrootcert={encoded}&sslcert={encoded}&sslkey={encoded}"
            )
        );
        assert_eq!(
            TlsSettings::default()
                .apply_to("postgres://db/app")
                .unwrap(),
            "postgres://db/app"
        );
    }

    #[test]
    fn bad_builder_settings_name_the_setting() {
        let mode = TlsSettings {
            ssl_mode: Some("sometimes".to_owned()),
            ..TlsSettings::default()
        };
        assert_eq!(
            setting(mode.apply_to("postgres://db/app").map(drop)),
            "ssl_mode"
        );
        let half = TlsSettings {
            cert_file: Some(std::env::current_exe().unwrap()),
            ..TlsSettings::default()
        };
        assert_eq!(
            setting(half.apply_to("postgres://db/app").map(drop)),
            "cert_file/key_file"
        );
        let missing = TlsSettings {
            ca_file: Some(PathBuf::from("/no/such/ca.pem")),
            ..TlsSettings::default()
        };
        assert_eq!(
            setting(missing.apply_to("postgres://db/app").map(drop)),
            "ca_file"
        );
    }
}
