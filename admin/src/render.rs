//! How leases are shown: a table for people, JSON for machines, a detail view, and one
//! line per change for `watch`.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use leasehold::LeaseInfo;
use serde::Serialize;

/// What is shown for a field the backend cannot know.
const UNKNOWN: &str = "-";

/// One lease as the JSON output carries it. Times are RFC 3339 (UTC) and milliseconds,
/// so that scripts need no duration parser.
#[derive(Debug, Serialize)]
pub(crate) struct LeaseJson<'a> {
    /// The lock name.
    name: &'a str,
    /// Whether anyone holds it (always true in `list`).
    held: bool,
    /// The holder's identity, `null` if unknown or free.
    #[serde(skip_serializing_if = "Option::is_none")]
    holder: Option<&'a str>,
    /// The fencing token of the holder's acquisition.
    #[serde(skip_serializing_if = "Option::is_none")]
    fencing_token: Option<u64>,
    /// When the holder acquired the lease, RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    acquired_at: Option<String>,
    /// How long the lease has left, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_ms: Option<u128>,
}

impl<'a> LeaseJson<'a> {
    /// A held lease.
    pub(crate) fn held(info: &'a LeaseInfo) -> Self {
        Self {
            name: info.key.as_str(),
            held: true,
            holder: info.holder.as_deref(),
            fencing_token: info.fencing_token.map(u64::from),
            acquired_at: info.acquired_at.map(rfc3339),
            expires_in_ms: info.expires_in.map(|left| left.as_millis()),
        }
    }

    /// A free name.
    pub(crate) fn free(name: &'a str) -> Self {
        Self {
            name,
            held: false,
            holder: None,
            fencing_token: None,
            acquired_at: None,
            expires_in_ms: None,
        }
    }
}

/// An instant as RFC 3339 in UTC, to the millisecond.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// A duration for people, to the millisecond: `4s 200ms`, `1m 3s`.
pub(crate) fn human(duration: Duration) -> String {
    let millis = Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(millis).to_string()
}

/// `acquired_at` with how long ago, or the placeholder.
fn acquired(info: &LeaseInfo, now: SystemTime) -> String {
    match info.acquired_at {
        Some(at) => match now.duration_since(at) {
            Ok(ago) => format!("{} ({} ago)", rfc3339(at), human(ago)),
            // The holder's clock is ahead of ours (etcd keeps the holder's clock).
            Err(_) => rfc3339(at),
        },
        None => UNKNOWN.to_owned(),
    }
}

fn holder(info: &LeaseInfo) -> &str {
    info.holder.as_deref().unwrap_or(UNKNOWN)
}

fn token(info: &LeaseInfo) -> String {
    info.fencing_token
        .map_or_else(|| UNKNOWN.to_owned(), |token| token.to_string())
}

fn expires(info: &LeaseInfo) -> String {
    info.expires_in.map_or_else(|| UNKNOWN.to_owned(), human)
}

/// The `list` table: one row per lease, columns padded to their widest cell.
pub(crate) fn table(out: &mut impl Write, leases: &[LeaseInfo], now: SystemTime) -> io::Result<()> {
    let header = ["NAME", "HOLDER", "TOKEN", "ACQUIRED", "EXPIRES IN"].map(str::to_owned);
    let rows: Vec<[String; 5]> = leases
        .iter()
        .map(|info| {
            [
                info.key.as_str().to_owned(),
                holder(info).to_owned(),
                token(info),
                acquired(info, now),
                expires(info),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|cell| cell.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (column, (cell, width)) in row.iter().zip(widths).enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// The `show` view of a held lease: one field a line.
pub(crate) fn detail(out: &mut impl Write, info: &LeaseInfo, now: SystemTime) -> io::Result<()> {
    writeln!(out, "name:          {}", info.key)?;
    writeln!(out, "holder:        {}", holder(info))?;
    writeln!(out, "fencing token: {}", token(info))?;
    writeln!(out, "acquired:      {}", acquired(info, now))?;
    writeln!(out, "expires in:    {}", expires(info))
}

/// A one-line summary of who holds a lease, for `watch` and `release`.
pub(crate) fn summary(info: &LeaseInfo) -> String {
    let mut text = match &info.holder {
        Some(holder) => format!("held by {holder}"),
        // A client that stores no identity (the Go original on Redis).
        None => "held (holder unknown)".to_owned(),
    };
    if let Some(token) = info.fencing_token {
        text.push_str(&format!(", fencing token {token}"));
    }
    if let Some(left) = info.expires_in {
        text.push_str(&format!(", expires in {}", human(left)));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::{FencingToken, LockKey};

    fn lease(name: &str) -> LeaseInfo {
        LeaseInfo::new(LockKey::new(name).unwrap())
    }

    #[test]
    fn the_table_aligns_columns_and_marks_unknown_fields() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let full = lease("billing-sync")
            .with_holder("web-7:4242")
            .with_fencing_token(FencingToken::new(12))
            .with_acquired_at(now - Duration::from_secs(90))
            .with_expires_in(Duration::from_millis(4200));
        let bare = lease("go-job");
        let mut out = Vec::new();
        table(&mut out, &[full, bare], now).unwrap();
        let text = String::from_utf8(out).unwrap();
        let expected = "\
NAME          HOLDER      TOKEN  ACQUIRED                               EXPIRES IN
billing-sync  web-7:4242  12     2027-01-15T07:58:30.000Z (1m 30s ago)  4s 200ms
go-job        -           -      -                                      -
";
        assert_eq!(text, expected, "got:\n{text}");
    }

    #[test]
    fn a_summary_says_when_the_holder_is_unknown() {
        let info = lease("job")
            .with_fencing_token(FencingToken::new(4))
            .with_expires_in(Duration::from_secs(3));
        assert_eq!(
            summary(&info),
            "held (holder unknown), fencing token 4, expires in 3s"
        );
        assert_eq!(
            summary(&lease("job").with_holder("pod-1:7")),
            "held by pod-1:7"
        );
    }

    #[test]
    fn json_leaves_out_what_is_unknown() {
        let info = lease("job").with_fencing_token(FencingToken::new(3));
        let json = serde_json::to_string(&LeaseJson::held(&info)).unwrap();
        assert_eq!(json, r#"{"name":"job","held":true,"fencing_token":3}"#);
        let json = serde_json::to_string(&LeaseJson::free("job")).unwrap();
        assert_eq!(json, r#"{"name":"job","held":false}"#);
    }
}
