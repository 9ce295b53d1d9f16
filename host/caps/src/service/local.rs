//! What this machine's `/proc` says about processes and their TCP sockets: which processes
//! belong to a service (its process group and descendants), which one listens on a port, and
//! whether a database session's client socket belongs to one of them. Linux only; elsewhere
//! every answer is "none found".

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// `pid`'s parent, process group and start time (clock ticks since boot), while it is alive
/// (not a zombie).
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields start after the last `)`.
    let after = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let state = *fields.first()?;
    Some(Stat {
        parent: fields.get(1)?.parse().ok()?,
        group: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
        alive: state != "Z" && state != "X",
    })
}

/// A few fields of `/proc/PID/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub parent: u32,
    pub group: u32,
    pub start_ticks: u64,
    pub alive: bool,
}

/// Every process id now.
fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The command line of `pid`, word by word.
pub(crate) fn cmdline(pid: u32) -> Option<Vec<String>> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if bytes.is_empty() {
        return None;
    }
    Some(
        bytes
            .split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect(),
    )
}

/// Live processes whose command line is exactly `words`.
pub(crate) fn with_cmdline(words: &[String]) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| stat(*pid).is_some_and(|s| s.alive))
        .filter(|pid| cmdline(*pid).is_some_and(|c| c == words))
        .collect()
}

/// `root`, the rest of its process group when it leads one, and every descendant: what stopping
/// the service ends.
pub(crate) fn family(root: u32) -> BTreeSet<u32> {
    let all: Vec<(u32, Stat)> = pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .filter(|(_, s)| s.alive)
        .collect();
    let mut out = BTreeSet::from([root]);
    let leads_group = stat(root).is_some_and(|s| s.group == root);
    if leads_group {
        out.extend(all.iter().filter(|(_, s)| s.group == root).map(|(p, _)| *p));
    }
    loop {
        let before = out.len();
        let children: Vec<u32> = all
            .iter()
            .filter(|(p, s)| out.contains(&s.parent) && !out.contains(p))
            .map(|(p, _)| *p)
            .collect();
        out.extend(children);
        if out.len() == before {
            return out;
        }
    }
}

/// The socket inodes `pid` holds open.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeSet::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// One line of `/proc/PID/net/tcp` or `tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TcpSocket {
    local: (IpAddr, u16),
    listening: bool,
    inode: u64,
}

/// An address as `/proc/net/tcp{,6}` prints it: 32-bit words in host byte order, in hex.
fn parse_addr(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Option<Vec<u32>> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let words = words?;
    let ip = match words.as_slice() {
        [a] => IpAddr::V4(Ipv4Addr::from(a.to_ne_bytes())),
        [a, b, c, d] => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(bytes);
            v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
        }
        _ => return None,
    };
    Some((ip, port))
}

fn parse_tcp(text: &str) -> Vec<TcpSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(TcpSocket {
                local: parse_addr(f.get(1)?)?,
                // TCP_LISTEN is state 0A.
                listening: *f.get(3)? == "0A",
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The TCP sockets of the network namespace `pid` is in.
fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).ok())
        .flat_map(|t| parse_tcp(&t))
        .collect()
}

/// Whether a socket bound to `local` is the client end `client` a database server saw: the
/// same port and address, any loopback address standing for another (a server may name a
/// loopback client `localhost`).
fn is_client(local: (IpAddr, u16), client: (IpAddr, u16)) -> bool {
    let normal = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let (a, b) = (normal(local.0), normal(client.0));
    local.1 == client.1 && (a == b || (a.is_loopback() && b.is_loopback()))
}

/// Whether one of `processes` holds the TCP socket bound to `client` (a database session's
/// client address and port, as the server sees it from this machine or one of its containers).
pub(crate) fn holds_client(processes: &BTreeSet<u32>, client: (IpAddr, u16)) -> bool {
    let Some(first) = processes.iter().next() else {
        return false;
    };
    let inodes: BTreeSet<u64> = tcp_sockets(*first)
        .into_iter()
        .filter(|s| !s.listening && is_client(s.local, client))
        .map(|s| s.inode)
        .collect();
    !inodes.is_empty()
        && processes
            .iter()
            .any(|p| !socket_inodes(*p).is_disjoint(&inodes))
}

/// Live processes (of this machine's network namespace) listening on TCP `port`.
pub(crate) fn listening_on(port: u16) -> Vec<u32> {
    let inodes: BTreeSet<u64> = tcp_sockets(std::process::id())
        .into_iter()
        .filter(|s| s.listening && s.local.1 == port)
        .map(|s| s.inode)
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    pids()
        .into_iter()
        .filter(|p| !socket_inodes(*p).is_disjoint(&inodes))
        .collect()
}

/// The processes of this machine's network namespace whose TCP socket is bound to `client`:
/// who holds a database session, for naming it.
pub(crate) fn holders_of(client: (IpAddr, u16)) -> Vec<u32> {
    let inodes: BTreeSet<u64> = tcp_sockets(std::process::id())
        .into_iter()
        .filter(|s| !s.listening && is_client(s.local, client))
        .map(|s| s.inode)
        .collect();
    if inodes.is_empty() {
        return Vec::new();
    }
    pids()
        .into_iter()
        .filter(|p| !socket_inodes(*p).is_disjoint(&inodes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_net_tcp_addresses() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:A1B2 0100007F:1538 01 00000000:00000000 00:00000000 00000000   999        0 4343 1\n";
        let sockets = parse_tcp(text);
        assert_eq!(sockets.len(), 2);
        assert_eq!(sockets[0].local, (IpAddr::V4(Ipv4Addr::LOCALHOST), 5432));
        assert!(sockets[0].listening);
        assert_eq!(sockets[1].local.1, 0xA1B2);
        assert!(!sockets[1].listening);
        assert_eq!(sockets[1].inode, 4343);
        let v6 = parse_addr("00000000000000000000000001000000:1538").expect("v6");
        assert_eq!(v6, (IpAddr::V6(Ipv6Addr::LOCALHOST), 5432));
        let mapped = parse_addr("0000000000000000FFFF00000100007F:1538").expect("mapped");
        assert_eq!(mapped, (IpAddr::V4(Ipv4Addr::LOCALHOST), 5432));
    }

    #[test]
    fn finds_this_process_and_its_listener() {
        let me = std::process::id();
        assert!(stat(me).is_some_and(|s| s.alive));
        assert!(family(me).contains(&me));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(listening_on(port).contains(&me));
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let local = client.local_addr().expect("local");
        assert!(holds_client(
            &BTreeSet::from([me]),
            (local.ip(), local.port())
        ));
        assert_eq!(holders_of((local.ip(), local.port())), vec![me]);
    }
}
