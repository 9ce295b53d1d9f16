//! Connection failures (databases, HTTP) in an operator's words.

/// The cause of a failed connection in words an operator acts on: `connection refused`,
/// `timed out`, `no such host`…, from the innermost I/O error of `e`'s chain (else `e` itself).
pub(crate) fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut io = None;
    while let Some(err) = source {
        if let Some(found) = err.downcast_ref::<std::io::Error>() {
            io = Some(found);
        }
        source = err.source();
    }
    let Some(io) = io else {
        return e.to_string();
    };
    match io.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            "connection refused (nothing listens on that port)".into()
        }
        std::io::ErrorKind::TimedOut => "timed out".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset by the server".into(),
        std::io::ErrorKind::NotFound => format!("not found ({io})"),
        _ => io.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::cause;

    #[test]
    fn a_refused_connection_says_so() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(cause(&refused).starts_with("connection refused"));
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(cause(&timed_out), "timed out");
        let other = std::fmt::Error;
        assert_eq!(cause(&other), other.to_string());
    }
}
