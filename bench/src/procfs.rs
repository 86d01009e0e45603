//! What `/proc` says about a process: CPU time, resident memory, open sockets.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// Clock ticks per second of `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`). It is
/// 100 on every Linux architecture this runs on; `getconf` confirms it at startup.
const TICKS_PER_SECOND: u64 = 100;

/// Checks the tick rate assumed by [`cpu_time`] against `getconf CLK_TCK`.
pub(crate) fn check_tick_rate() -> Result<()> {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .context("getconf CLK_TCK")?;
    let ticks: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("getconf CLK_TCK printed no number")?;
    if ticks != TICKS_PER_SECOND {
        bail!("CLK_TCK is {ticks}, this program assumes {TICKS_PER_SECOND}");
    }
    Ok(())
}

/// User plus system CPU time of every thread of `pid` so far.
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let (utime, stime) = parse_stat_times(&stat)?;
    Ok(Duration::from_millis(
        (utime + stime) * 1000 / TICKS_PER_SECOND,
    ))
}

/// `utime` and `stime` (fields 14 and 15) from a `/proc/<pid>/stat` line. The command
/// name (field 2) is in parentheses and may contain spaces, so fields are counted from
/// the last `)`.
fn parse_stat_times(stat: &str) -> Result<(u64, u64)> {
    let after_name = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .context("no `)` in /proc/<pid>/stat")?;
    // Field 3 (state) is the first after the name, so utime (14) is the 12th here.
    let mut fields = after_name.split_whitespace().skip(11);
    let mut next = || -> Result<u64> {
        fields
            .next()
            .context("/proc/<pid>/stat is too short")?
            .parse()
            .context("/proc/<pid>/stat time is not a number")
    };
    Ok((next()?, next()?))
}

/// The parent pid (field 4) from a `/proc/<pid>/stat` line.
fn parse_stat_ppid(stat: &str) -> Option<u32> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of `pid` and its live children: a PostgreSQL server is a postmaster and one
/// process per connection.
pub(crate) fn cpu_time_with_children(pid: u32) -> Result<Duration> {
    let mut total = cpu_time(pid)?;
    for entry in std::fs::read_dir("/proc").context("read /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we read: a vanished one is skipped.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if parse_stat_ppid(&stat) == Some(pid)
            && let Ok((utime, stime)) = parse_stat_times(&stat)
        {
            total += Duration::from_millis((utime + stime) * 1000 / TICKS_PER_SECOND);
        }
    }
    Ok(total)
}

/// Resident memory of `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub(crate) fn resident_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    parse_vm_rss(&status).context("no VmRSS in /proc/<pid>/status")
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How many sockets `pid` has open (file descriptors linking to `socket:[...]`).
pub(crate) fn open_sockets(pid: u32) -> Result<usize> {
    let dir = format!("/proc/{pid}/fd");
    let mut sockets = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let Ok(entry) = entry else { continue };
        if std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        {
            sockets += 1;
        }
    }
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_a_name_with_spaces_and_parentheses() {
        let stat = "1234 (tokio (rt) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    731 42 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_times(stat).unwrap(), (731, 42));
        assert_eq!(parse_stat_ppid(stat), Some(1));
    }

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t 9000 kB\nVmRSS:\t    2048 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(2048 * 1024));
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(
            resident_bytes(pid).unwrap() > 0,
            "a live process has resident pages"
        );
        cpu_time(pid).unwrap();
        open_sockets(pid).unwrap();
    }
}
