//! The simulated KaiwuDB releases (product-facts §2.1, §2.3, §2.6).

use std::fmt;

/// A simulated release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    /// `major.minor.patch`.
    pub version: (u64, u64, u64),
    /// `YYYY/MM/DD HH:MM:SS`, the release date of §2.1 (the build text of `version()`).
    pub built: &'static str,
}

/// Every simulated release, oldest first. Dates from product-facts §2.1; 3.2.1 has no release
/// note date there, so it carries the month of the §2.6 example (`built 2026/06/..`).
pub const RELEASES: &[Release] = &[
    Release {
        version: (2, 1, 0),
        built: "2024/11/22 10:00:00",
    },
    Release {
        version: (2, 2, 0),
        built: "2025/03/31 10:00:00",
    },
    Release {
        version: (2, 2, 2),
        built: "2025/07/21 10:00:00",
    },
    Release {
        version: (3, 0, 0),
        built: "2025/11/12 10:00:00",
    },
    Release {
        version: (3, 1, 0),
        built: "2026/02/03 10:00:00",
    },
    Release {
        version: (3, 2, 0),
        built: "2026/05/28 10:00:00",
    },
    Release {
        version: (3, 2, 1),
        built: "2026/06/26 10:00:00",
    },
];

/// The Go toolchain shown in the version text (the sim's choice; §2.6 says `go1.x`).
pub const GO_VERSION: &str = "go1.19.13";
/// The C compiler shown in the version text.
pub const C_COMPILER: &str = "gcc 11.4.0";
/// The platform shown in `version()`.
pub const PLATFORM: &str = "x86_64-linux-gnu";

/// Parse `3.0.0`, `V3.0.0` or `v3.0.0`.
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let t = text.trim();
    let t = t
        .strip_prefix('V')
        .or_else(|| t.strip_prefix('v'))
        .unwrap_or(t);
    let mut parts = t.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().unwrap_or("0").parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// The simulated release for a version text.
pub fn find(text: &str) -> Option<Release> {
    let v = parse_version(text)?;
    RELEASES.iter().copied().find(|r| r.version == v)
}

/// `V<x.y.z>`.
pub fn tag(v: (u64, u64, u64)) -> String {
    format!("V{}.{}.{}", v.0, v.1, v.2)
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&tag(self.version))
    }
}

impl Release {
    /// `V<x.y.z>`.
    pub fn tag(&self) -> String {
        tag(self.version)
    }

    /// The on-disk store format: 2 for 1.x/2.x, 3 for the 3.x storage engine (§2.2).
    pub fn store_format(&self) -> u32 {
        if self.version.0 >= 3 { 3 } else { 2 }
    }

    /// 2.x keeps a custom partition interval on time-series databases; 3.0.0 dropped it (§2.2).
    pub fn keeps_partition_interval(&self) -> bool {
        self.version.0 < 3
    }

    /// 3.1.0 and later deprecated `PARTITION INTERVAL`: refused on create and in `meta.sql` (§2.2).
    pub fn refuses_partition_interval(&self) -> bool {
        self.version >= (3, 1, 0)
    }

    /// `SELECT version()`: `build.GetInfo().Short()` (§2.6).
    pub fn short_info(&self) -> String {
        format!(
            "KaiwuDB {} ({PLATFORM}, built {}, {GO_VERSION}, {C_COMPILER})",
            self.tag(),
            self.built
        )
    }

    /// A stable fake commit for `Build SHA-1:`.
    pub fn sha(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.tag().as_bytes());
        digest[..20].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `kwbase version` (§2.6).
    pub fn version_text(&self) -> String {
        format!(
            "KaiwuDB Version:  {}\nBuild Time:       {}\nDistribution:     community\nPlatform:         linux amd64 ({PLATFORM})\nGo Version:       {GO_VERSION}\nC Compiler:       {C_COMPILER}\nBuild SHA-1:      {}\n",
            self.tag(),
            self.built,
            self.sha()
        )
    }

    /// Default value of `ts.raft_log.sync_period`: `10s` before 3.2.0, `0s` from 3.2.0 (§2.3).
    pub fn default_raft_sync_period(&self) -> &'static str {
        if self.version >= (3, 2, 0) {
            "0s"
        } else {
            "10s"
        }
    }

    /// Why this release refuses to open in place a store last opened by `from`, if it does.
    /// Downgrades and format changes are checked by the caller; this is the same-format
    /// upgrade table of §2.3.
    pub fn refuses_in_place_from(&self, from: (u64, u64, u64)) -> Option<String> {
        let to = self.version;
        if to.0 == 2 && to.1 == 2 {
            // 2.2.0: in place from 2.1.0; 2.2.1/2.2.2: in place from 2.2.x only.
            let ok = if to.2 == 0 {
                from >= (2, 1, 0)
            } else {
                from >= (2, 2, 0)
            };
            if !ok {
                return Some(format!(
                    "KaiwuDB {} cannot be upgraded in place from {}: use export/import",
                    self.tag(),
                    tag(from)
                ));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_with_or_without_the_v() {
        assert_eq!(parse_version("V3.1.0"), Some((3, 1, 0)));
        assert_eq!(parse_version("3.1.0"), Some((3, 1, 0)));
        assert_eq!(parse_version("3.x"), None);
        assert!(find("v2.2.2").is_some());
        assert!(find("2.0.4").is_none());
    }

    #[test]
    fn the_in_place_table_follows_the_release_notes() {
        let r220 = find("2.2.0").expect("2.2.0");
        let r222 = find("2.2.2").expect("2.2.2");
        assert!(r220.refuses_in_place_from((2, 1, 0)).is_none());
        assert!(r220.refuses_in_place_from((2, 0, 4)).is_some());
        assert!(r222.refuses_in_place_from((2, 1, 0)).is_some());
        assert!(r222.refuses_in_place_from((2, 2, 0)).is_none());
        assert!(
            find("3.1.0")
                .expect("3.1.0")
                .refuses_in_place_from((3, 0, 0))
                .is_none()
        );
    }
}
