//! A blocking RESP2 client of a few dozen lines: enough to ask the sentinels, servers and
//! cluster nodes of the Redis test topologies who the master is and to set a cluster up,
//! without an async runtime or a Redis client crate.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text: a status or a bulk string.
    pub(super) fn text(&self) -> Option<&str> {
        match self {
            Reply::Status(text) | Reply::Bulk(Some(text)) => Some(text),
            _ => None,
        }
    }

    /// A flat `[field, value, field, value, ...]` array (`SENTINEL MASTER`) as a map.
    pub(super) fn fields(&self) -> HashMap<String, String> {
        let Reply::Array(Some(items)) = self else {
            return HashMap::new();
        };
        items
            .chunks(2)
            .filter_map(|pair| match pair {
                [name, value] => Some((name.text()?.to_owned(), value.text()?.to_owned())),
                _ => None,
            })
            .collect()
    }
}

/// Sends one command to `127.0.0.1:port` on a new connection and reads its reply, within
/// about a second for each step.
pub(super) fn command(port: u16, args: &[&str]) -> io::Result<Reply> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    (&stream).write_all(request.as_bytes())?;
    read_reply(&mut BufReader::new(stream))
}

fn read_reply(reader: &mut impl BufRead) -> io::Result<Reply> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a reply",
        ));
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (tag, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| io::Error::other(format!("bad RESP length or integer: {line:?}")))
    };
    Ok(match tag {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Int(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0u8; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                Reply::Bulk(Some(String::from_utf8_lossy(&data).into_owned()))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(len) => Reply::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(io::Error::other(format!("not a RESP reply: {line:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_replies_and_field_arrays_are_read() {
        let wire = b"*4\r\n$4\r\nname\r\n$1\r\nm\r\n$4\r\nport\r\n:7\r\n";
        let reply = read_reply(&mut &wire[..]).unwrap();
        let fields = reply.fields();
        assert_eq!(fields.get("name").map(String::as_str), Some("m"));
        assert_eq!(fields.get("port"), None, "an integer is no text value");
        assert_eq!(read_reply(&mut &b"$-1\r\n"[..]).unwrap(), Reply::Bulk(None));
        assert_eq!(
            read_reply(&mut &b"-ERR no\r\n"[..]).unwrap(),
            Reply::Error("ERR no".into())
        );
    }
}
