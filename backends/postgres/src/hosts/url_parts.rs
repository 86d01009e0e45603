//! Cutting a URL around its hosts: `url::Url` cannot parse an authority holding several.

/// A URL cut around its hosts, which `url::Url` cannot parse when there are several.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UrlParts<'a> {
    /// Before `://`.
    pub(crate) scheme: &'a str,
    /// Before the last `@` of the authority, if any.
    pub(crate) user_info: Option<&'a str>,
    /// The host list (or host), ports included.
    pub(crate) hosts: &'a str,
    /// The path, query and fragment.
    pub(crate) tail: &'a str,
}

impl<'a> UrlParts<'a> {
    /// Splits `url`, or `None` without a `://`.
    pub(crate) fn split(url: &'a str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (user_info, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (Some(user), hosts),
            None => (None, authority),
        };
        Some(Self {
            scheme,
            user_info,
            hosts,
            tail,
        })
    }

    /// The URL with `hosts` in place of its own.
    pub(crate) fn with_hosts(&self, hosts: &str) -> String {
        let Self {
            scheme,
            user_info,
            tail,
            ..
        } = self;
        match user_info {
            Some(user) => format!("{scheme}://{user}@{hosts}{tail}"),
            None => format!("{scheme}://{hosts}{tail}"),
        }
    }
}
