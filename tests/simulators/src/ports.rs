//! Loopback ports for simulators, clusters and tests.

use std::collections::HashSet;
use std::sync::Mutex;

/// A free loopback TCP port that this process has not handed out before.
///
/// The kernel may give a just-released ephemeral port to the next `bind(0)`; when tests run in
/// parallel that lets one test's client reach another test's server. Remembering every port
/// handed out rules that out within one process.
pub fn free_port() -> std::io::Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if given.insert(port) {
            return Ok(port);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..500)
            .map(|_| super::free_port().expect("port"))
            .collect();
        let unique: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len());
    }
}
