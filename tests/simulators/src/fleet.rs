//! Fleet-file text for simulated instances run through `upshift simulate` — one place for the
//! tests and `upshift demo` to spell how a simulated product is bound.

use std::path::Path;

/// Where an OpenMetadata simulator's database is, as its environment spells it.
pub struct OmDatabase<'a> {
    /// The db binding's URL (`postgres://…` or `mysql://…`).
    pub url: &'a str,
    /// `DB_SCHEME`: `postgresql` or `mysql`.
    pub scheme: &'a str,
    /// `DB_PORT`.
    pub port: u16,
    /// `DB_USER`.
    pub user: &'a str,
    /// `OM_DATABASE`.
    pub name: &'a str,
}

/// The Fernet key the simulated servers are given.
const FERNET_KEY: &str = "jJ/9sz0g0OHxsfxOoSfdFdmk3ysNmPRnH3TUAbz3IHA=";

/// An OpenMetadata instance: the server, its one-shot migrate job, the API and admin ports.
/// `extra_env` is appended to the environment (`, KEY = "value"` pairs).
pub fn openmetadata(
    name: &str,
    exe: &Path,
    db: &OmDatabase<'_>,
    version: &str,
    ports: (u16, u16),
    extra_env: &str,
) -> String {
    let (port, admin) = ports;
    let env = format!(
        "{{ DB_SCHEME = \"{}\", DB_HOST = \"127.0.0.1\", DB_PORT = \"{}\", DB_USER = \"{}\", DB_USER_PASSWORD = \"\", OM_DATABASE = \"{}\", FERNET_KEY = \"{FERNET_KEY}\"{extra_env} }}",
        db.scheme, db.port, db.user, db.name
    );
    format!(
        r#"
[[instance]]
name = "{name}"
product = "openmetadata"

[instance.db.meta]
url = "{url}"

[instance.service.server]
kind = "process"
command = "'{exe}' simulate openmetadata --version {{version}} server --port {port} --admin-port {admin}"
version = "{version}"
health_url = "http://127.0.0.1:{admin}/healthcheck"
stop_timeout_secs = 10
env = {env}

[instance.service.migrate]
kind = "process"
oneshot = true
run_timeout_secs = 120
command = "'{exe}' simulate openmetadata --version {{version}} migrate"
version = "{version}"
env = {env}

[instance.http.api]
url = "http://127.0.0.1:{port}"

[instance.http.admin]
url = "http://127.0.0.1:{admin}"
"#,
        url = db.url,
        exe = exe.display(),
    )
}

/// A DevLake instance run as a process on the `.env` in `config` (approach 2 of the seed).
pub fn devlake(
    name: &str,
    exe: &Path,
    db_url: &str,
    port: u16,
    version: &str,
    config: &Path,
    extra_env: &str,
) -> String {
    format!(
        r#"
[[instance]]
name = "{name}"
product = "devlake"

[instance.db.lake]
url = "{db_url}"

[instance.service.app]
kind = "process"
command = "'{exe}' simulate devlake --version {{version}}"
version = "{version}"
health_url = "http://127.0.0.1:{port}/ping"
stop_timeout_secs = 10
env = {{ ENV_FILE = "{env_file}"{extra_env} }}

[instance.http.api]
url = "http://127.0.0.1:{port}"

[instance.files.config]
path = "{config}"
"#,
        exe = exe.display(),
        env_file = config.join(".env").display(),
        config = config.display(),
    )
}
