//! A scheduled routine's record, kept by the backend beside the name's lease
//! ([`LockBackend::write_record`](leasehold_core::LockBackend::write_record)): the fires
//! claimed, the runs going on and the last fire recorded as failed. Fires are claimed by
//! adding them with compare-and-set, so each runs once whatever the members' clocks say.
//!
//! The newest [`KEPT_CLAIMS`] claimed fires are listed; older ones are folded into a
//! floor, and every fire at or before the floor counts as claimed. A fire is therefore
//! lost only if a member claims that many later fires before any member gets to it.
//!
//! Encoded as one line of text:
//! `leasehold-schedule v1 floor=<ns> claimed=<ns>,... failed=<ns> run=<ns>/<slot>/<token>,...`
//! (instants in nanoseconds since the UNIX epoch, `-` for none).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use leasehold_core::{Error, FencingToken, LockKey, Result};

const MAGIC: &str = "leasehold-schedule v1";

/// The most runs a record lists: bounds [`RunOptions::instances`](crate::RunOptions::instances)
/// so the record stays within the backends' record size.
pub(crate) const MAX_RUNS: u32 = 8;

/// How many claimed fires a record lists before folding the oldest into its floor.
pub(crate) const KEPT_CLAIMS: usize = 16;

/// A run going on: the fire it runs, the lease slot it holds and that lease's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Running {
    pub(crate) fire: SystemTime,
    pub(crate) slot: u32,
    pub(crate) token: FencingToken,
}

/// What the backend keeps for a scheduled name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FireRecord {
    /// Every fire at or before this one counts as claimed.
    pub(crate) floor: Option<SystemTime>,
    /// The newest fires claimed, oldest first, at most [`KEPT_CLAIMS`], all after `floor`.
    pub(crate) claimed: Vec<SystemTime>,
    /// The newest fire whose run was cut off and given up (recorded as failed).
    pub(crate) failed: Option<SystemTime>,
    /// The runs started and not yet finished (or cut off, until someone notices).
    pub(crate) running: Vec<Running>,
}

fn nanos(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn instant(nanos: &str) -> Option<SystemTime> {
    let nanos: u128 = nanos.parse().ok()?;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, sub))
}

fn optional(at: Option<SystemTime>) -> String {
    at.map_or_else(|| "-".to_owned(), |at| nanos(at).to_string())
}

impl FireRecord {
    /// The record as stored.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let runs: Vec<String> = self
            .running
            .iter()
            .map(|run| format!("{}/{}/{}", nanos(run.fire), run.slot, run.token.get()))
            .collect();
        let runs = if runs.is_empty() {
            "-".to_owned()
        } else {
            runs.join(",")
        };
        let claimed: Vec<String> = self
            .claimed
            .iter()
            .map(|at| nanos(*at).to_string())
            .collect();
        let claimed = if claimed.is_empty() {
            "-".to_owned()
        } else {
            claimed.join(",")
        };
        format!(
            "{MAGIC} floor={} claimed={claimed} failed={} run={runs}",
            optional(self.floor),
            optional(self.failed)
        )
        .into_bytes()
    }

    /// Reads a stored record; an error names `key` if it is not one this version wrote.
    pub(crate) fn decode(key: &LockKey, bytes: &[u8]) -> Result<Self> {
        let bad = || {
            Error::misconfigured(
                "schedule",
                format!(
                    "the record of {key} is not a schedule record of this version: {:?}",
                    String::from_utf8_lossy(bytes)
                ),
            )
        };
        let text = std::str::from_utf8(bytes).map_err(|_| bad())?;
        let rest = text.strip_prefix(MAGIC).ok_or_else(bad)?;
        let mut record = FireRecord::default();
        for field in rest.split_whitespace() {
            let (name, value) = field.split_once('=').ok_or_else(bad)?;
            let at = |value: &str| -> Result<Option<SystemTime>> {
                if value == "-" {
                    Ok(None)
                } else {
                    instant(value).map(Some).ok_or_else(bad)
                }
            };
            match name {
                "floor" => record.floor = at(value)?,
                "claimed" if value == "-" => {}
                "claimed" => {
                    for fire in value.split(',') {
                        record.claimed.push(instant(fire).ok_or_else(bad)?);
                    }
                    record.claimed.sort();
                }
                "failed" => record.failed = at(value)?,
                "run" if value == "-" => {}
                "run" => {
                    for run in value.split(',') {
                        let mut parts = run.split('/');
                        let (Some(fire), Some(slot), Some(token), None) =
                            (parts.next(), parts.next(), parts.next(), parts.next())
                        else {
                            return Err(bad());
                        };
                        record.running.push(Running {
                            fire: instant(fire).ok_or_else(bad)?,
                            slot: slot.parse().map_err(|_| bad())?,
                            token: FencingToken::new(token.parse().map_err(|_| bad())?),
                        });
                    }
                }
                // Fields a later version adds are kept out of this version's decisions.
                _ => {}
            }
        }
        Ok(record)
    }

    /// Whether `fire` was claimed already (by any member), or is at or before the floor.
    pub(crate) fn is_claimed(&self, fire: SystemTime) -> bool {
        self.floor.is_some_and(|floor| floor >= fire) || self.claimed.contains(&fire)
    }

    /// Adds `fire` to the claimed fires, folding the oldest into the floor past
    /// [`KEPT_CLAIMS`].
    pub(crate) fn claim(&mut self, fire: SystemTime) {
        if self.is_claimed(fire) {
            return;
        }
        let at = self.claimed.partition_point(|claimed| *claimed < fire);
        self.claimed.insert(at, fire);
        while self.claimed.len() > KEPT_CLAIMS {
            let oldest = self.claimed.remove(0);
            self.floor = self.floor.max(Some(oldest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let key = LockKey::new("job").unwrap();
        for record in [
            FireRecord::default(),
            FireRecord {
                floor: Some(at(1_600_000_000, 1)),
                claimed: vec![at(1_699_999_999, 0), at(1_700_000_000, 5)],
                failed: Some(at(1_600_000_000, 0)),
                running: vec![
                    Running {
                        fire: at(1_700_000_000, 5),
                        slot: 3,
                        token: FencingToken::new(42),
                    },
                    Running {
                        fire: at(1_699_999_999, 999_999_999),
                        slot: 0,
                        token: FencingToken::new(u64::MAX),
                    },
                ],
            },
        ] {
            assert_eq!(FireRecord::decode(&key, &record.encode()).unwrap(), record);
        }
    }

    #[test]
    fn the_longest_record_fits_the_backends_record_size() {
        let run = Running {
            fire: at(u64::from(u32::MAX), 999_999_999),
            slot: MAX_RUNS - 1,
            token: FencingToken::new(u64::MAX),
        };
        let record = FireRecord {
            floor: Some(run.fire),
            claimed: vec![run.fire; KEPT_CLAIMS],
            failed: Some(run.fire),
            running: vec![run; MAX_RUNS as usize],
        };
        assert!(record.encode().len() <= leasehold_core::MAX_RECORD_LEN);
    }

    #[test]
    fn claims_past_the_kept_number_fold_into_the_floor() {
        let mut record = FireRecord::default();
        for second in (0..20).rev() {
            record.claim(at(second, 0));
        }
        assert_eq!(record.claimed.len(), KEPT_CLAIMS);
        assert_eq!(record.floor, Some(at(3, 0)), "fires 0 to 3 folded");
        assert!((0..20).all(|second| record.is_claimed(at(second, 0))));
        assert!(!record.is_claimed(at(20, 0)));
        let mut gap = FireRecord::default();
        gap.claim(at(10, 0));
        assert!(!gap.is_claimed(at(9, 0)), "an earlier fire stays claimable");
        gap.claim(at(9, 0));
        assert_eq!(gap.claimed, [at(9, 0), at(10, 0)], "kept in order");
    }

    #[test]
    fn a_foreign_record_is_a_misconfiguration_naming_the_key() {
        let key = LockKey::new("job").unwrap();
        for bytes in [&b"hello"[..], b"leasehold-schedule v1 floor=x", b"\xff"] {
            let error = FireRecord::decode(&key, bytes).unwrap_err();
            assert!(matches!(error, Error::Misconfigured { .. }), "{error:?}");
            assert!(error.to_string().contains("job"), "{error}");
        }
    }
}
