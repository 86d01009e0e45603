//! The parts of a multi-host Redis URL,
//! `scheme://[user[:password]@]host1[:port],host2[:port][/path][?query]`, shared by the
//! Sentinel and Cluster forms.

use leasehold_core::{Error, Result};

use super::{Password, Settings};

/// A multi-host URL split into its parts; the user name and password are already applied.
pub(crate) struct Parts<'a> {
    pub(crate) scheme: &'a str,
    pub(crate) hosts: &'a str,
    pub(crate) path: &'a str,
    pub(crate) query: &'a str,
}

/// Splits `url` and applies its user name and password to `settings`; `setting` names
/// the URL in errors, which never echo it (it may hold a password).
pub(crate) fn split<'a>(settings: &mut Settings, url: &'a str, setting: &str) -> Result<Parts<'a>> {
    let bad = |reason: String| Error::config(setting, reason);
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("not a URL".to_owned()));
    };
    if rest.contains('#') {
        return Err(bad("URL fragments (`#...`) are not supported".to_owned()));
    }
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let decode = |text: &str, what: &str| {
        super::percent_decode(text).ok_or_else(|| bad(format!("bad {what} encoding")))
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (userinfo, None),
        };
        settings.username = (!user.is_empty())
            .then(|| decode(user, "username"))
            .transpose()?;
        settings.password = match password {
            None | Some("") => None,
            Some(password) => Some(Password(decode(password, "password")?)),
        };
    }
    Ok(Parts {
        scheme,
        hosts,
        path,
        query,
    })
}
