//! Signed adapters and the fleet file's trust policy (issue 6, part 1): an adapter file runs only
//! when trusted keys signed exactly its bytes, checked before anything is compiled; unsigned,
//! wrongly signed, tampered or under-signed adapters never run. Live against a simulated
//! Bytebase on a real PostgreSQL.

mod common;

use common::{Env, connect, free_port, start_services, stderr};

fn keygen(env: &Env, name: &str) -> String {
    let out = env.upshift(&[
        "adapter",
        "keygen",
        "--out",
        &env.dir.path().join(name).display().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read_to_string(env.dir.path().join(format!("{name}.pub")))
        .expect("public key")
        .trim()
        .to_string()
}

fn sign(env: &Env, wasm: &std::path::Path, key: &str) {
    let key_file = env.dir.path().join(format!("{key}.key"));
    let out = env.upshift(&[
        "adapter",
        "sign",
        &wasm.display().to_string(),
        "--key",
        &key_file.display().to_string(),
        "--signer",
        key,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_file_runs_only_when_trusted_keys_signed_it() {
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("trust").await;
    let env = Env::new();
    let wasm = env.dir.path().join("bytebase.wasm");
    std::fs::copy(
        std::path::Path::new(upshift::adapters::BUILT_DIR).join("bytebase.wasm"),
        &wasm,
    )
    .expect("copy adapter");
    let vendor = keygen(&env, "vendor");
    let security = keygen(&env, "security");
    let port = free_port();
    let instance = common::bytebase_instance("bb", &url, port, "3.10.0", None).replace(
        "product = \"bytebase\"",
        &format!("adapter = \"{}\"", wasm.display()),
    );
    let fleet = |trust: &str| format!("[trust]\n{trust}\n{instance}");
    let plan = |env: &Env| env.upshift(&["plan", "bb", "--to", "3.11.1", "--json"]);

    // Start the instance with the bundled adapter, then put the adapter file under the policy.
    env.write_fleet(&common::bytebase_instance("bb", &url, port, "3.10.0", None));
    start_services(&env, "bb", &["app"]).await;
    env.write_fleet(&fleet(&format!("keys = {{ vendor = \"{vendor}\" }}")));
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 5)
        .await
        .expect("seed");

    // Unsigned: refused before anything runs.
    let out = plan(&env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not signed"), "{}", stderr(&out));
    // Signed, but by a key the policy does not trust.
    sign(&env, &wasm, "security");
    let out = plan(&env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0 valid signature(s)"),
        "{}",
        stderr(&out)
    );
    // Signed by the trusted vendor: it plans.
    sign(&env, &wasm, "vendor");
    let out = plan(&env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // One changed byte and it is refused again.
    let original = std::fs::read(&wasm).expect("wasm");
    let mut tampered = original.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    std::fs::write(&wasm, &tampered).expect("tamper");
    let out = plan(&env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("changed after it was signed"),
        "{}",
        stderr(&out)
    );
    std::fs::write(&wasm, &original).expect("restore");

    // All-of: both keys must have signed (both have by now); with a third, unsigned key, not.
    env.write_fleet(&fleet(&format!(
        "keys = {{ vendor = \"{vendor}\", security = \"{security}\" }}\nrequire = \"all\""
    )));
    assert_eq!(plan(&env).status.code(), Some(0));
    let auditor = keygen(&env, "auditor");
    env.write_fleet(&fleet(&format!("keys = {{ vendor = \"{vendor}\", security = \"{security}\", auditor = \"{auditor}\" }}\nrequire = \"all\"")));
    let out = plan(&env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("requires all 3"), "{}", stderr(&out));
    // At-least-N: two of three suffice.
    env.write_fleet(&fleet(&format!("keys = {{ vendor = \"{vendor}\", security = \"{security}\", auditor = \"{auditor}\" }}\nrequire = 2")));
    assert_eq!(plan(&env).status.code(), Some(0));
    let out = env.upshift(&["adapter", "verify", &wasm.display().to_string()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed by security, vendor"));

    // A policy that cannot be met is a fleet-file error with the fix.
    env.write_fleet(&fleet(&format!(
        "keys = {{ vendor = \"{vendor}\" }}\nrequire = 2"
    )));
    let out = plan(&env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a number from 1 to 1"),
        "{}",
        stderr(&out)
    );
    env.write_fleet(&fleet("keys = { vendor = \"not-a-key\" }"));
    let out = plan(&env);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("[trust] key `vendor`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_secret_key_is_never_overwritten_and_stays_private() {
    let env = Env::new();
    let prefix = env.dir.path().join("k").display().to_string();
    assert!(
        env.upshift(&["adapter", "keygen", "--out", &prefix])
            .status
            .success()
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(format!("{prefix}.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "only its owner may read the secret key");
    let again = env.upshift(&["adapter", "keygen", "--out", &prefix]);
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("must not exist yet"),
        "{}",
        stderr(&again)
    );
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn built(name: &str) -> std::path::PathBuf {
    std::path::Path::new(upshift::adapters::BUILT_DIR).join(name)
}

fn audit_records(env: &Env) -> usize {
    std::fs::read_to_string(env.data().join("audit.jsonl"))
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_file_pins_adapters_and_refuses_updates_until_approved() {
    let Some(pg) = common::pg() else { return };
    let (_, url) = pg.fresh_db("lock").await;
    let env = Env::new();
    std::fs::create_dir_all(env.dir.path().join("adapters")).expect("dir");
    let wasm = env.dir.path().join("adapters/app.wasm");
    std::fs::copy(built("bytebase.wasm"), &wasm).expect("copy adapter");
    let port = free_port();
    let instance = common::bytebase_instance("bb", &url, port, "3.10.0", None)
        .replace("product = \"bytebase\"", "adapter = \"adapters/app.wasm\"");
    env.write_fleet(&instance);
    start_services(&env, "bb", &["app"]).await;
    upshift_sim::bytebase::seed_user_rows(&connect(&url).await, 5)
        .await
        .expect("seed");

    // Nothing approved yet: `lock` says so (exit 1), `--approve` pins it.
    let out = env.upshift(&["lock"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("new: not approved yet"),
        "{}",
        stdout(&out)
    );
    let out = env.upshift(&["lock", "--approve"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lock_text =
        std::fs::read_to_string(env.dir.path().join("upshift.lock")).expect("lock file");
    let digest = upshift::runtime::digest(&std::fs::read(&wasm).expect("wasm"));
    assert!(lock_text.contains(&digest), "{lock_text}");
    assert!(
        lock_text.contains("source = \"adapters/app.wasm\""),
        "{lock_text}"
    );
    assert!(
        lock_text.contains("access = [\"read\", \"backup\", \"restore\"]"),
        "{lock_text}"
    );
    let out = env.upshift(&["lock"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("approved"));

    // The approved bytes plan.
    let plan = env.upshift(&["plan", "bb", "--to", "3.11.1", "--json"]);
    assert_eq!(plan.status.code(), Some(0), "{}", stderr(&plan));

    // The file is replaced by an adapter that asks for more: refused before anything runs,
    // naming every widened capability; nothing reaches the audit log.
    std::fs::copy(built("test-misbehaving.wasm"), &wasm).expect("swap adapter");
    let records = audit_records(&env);
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("changed since it was approved"), "{err}");
    assert!(err.contains("asks for more than was approved"), "{err}");
    assert!(err.contains("+ meta (db): adds write"), "{err}");
    assert!(err.contains("upshift lock --approve"), "{err}");
    assert_eq!(audit_records(&env), records, "nothing ran");
    let version: String = connect(&url)
        .await
        .query_one(
            "SELECT version FROM instance_change_history ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .expect("version row")
        .get(0);
    assert!(version.contains("3.10"), "still at 3.10: {version}");

    // `adapter diff` shows the same change and exits 1; `lock` lists it as pending.
    let out = env.upshift(&[
        "adapter",
        "diff",
        &built("bytebase.wasm").display().to_string(),
        &wasm.display().to_string(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("+ meta (db): adds write"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("NEW asks for more"),
        "{}",
        stdout(&out)
    );
    let out = env.upshift(&["lock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("changed since approval"),
        "{}",
        stdout(&out)
    );

    // A bundled adapter is pinned too: a new instance on one is not approved.
    std::fs::copy(built("bytebase.wasm"), &wasm).expect("restore adapter");
    env.write_fleet(&format!(
        "{instance}\n[[instance]]\nname = \"other\"\nproduct = \"bytebase\"\n[instance.db.meta]\nurl = \"{url}\"\n"
    ));
    let out = env.upshift(&["plan", "other", "--to", "3.11.1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bundled:bytebase (bytebase) is not approved"),
        "{}",
        stderr(&out)
    );

    // The approved bytes are back: the upgrade runs.
    let out = env.upshift(&["apply", "bb", "--to", "3.11.1", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn inspect_shows_the_world_and_who_signed_without_running_it() {
    let env = Env::new();
    let wasm = env.dir.path().join("bytebase.wasm");
    std::fs::copy(built("bytebase.wasm"), &wasm).expect("copy adapter");
    let vendor = keygen(&env, "vendor");
    keygen(&env, "stranger");
    sign(&env, &wasm, "vendor");
    sign(&env, &wasm, "stranger");
    env.write_fleet(&format!("[trust]\nkeys = {{ acme = \"{vendor}\" }}\n"));
    let file = wasm.display().to_string();

    let out = env.upshift(&["adapter", "inspect", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("import   upshift:adapter/db@0.1.0"), "{text}");
    assert!(text.contains("export   plan-restore"), "{text}");
    assert!(
        text.contains("compatible; this host supports >=0.1.0, <0.2.0"),
        "{text}"
    );
    assert!(
        text.contains("meta     db       read, backup, restore"),
        "{text}"
    );
    let vendor_line = text
        .lines()
        .find(|l| l.contains("vendor "))
        .expect("vendor line");
    assert!(
        vendor_line.contains("valid, trusted as `acme`"),
        "{vendor_line}"
    );
    let stranger = text
        .lines()
        .find(|l| l.contains("stranger"))
        .expect("stranger line");
    assert!(
        stranger.contains("valid") && !stranger.contains("trusted"),
        "{stranger}"
    );

    let out = env.upshift(&["adapter", "inspect", &file, "--json"]);
    let report = common::json(&out);
    assert_eq!(report["host_api"]["built_against"], "0.1.0");
    assert_eq!(report["signatures"].as_array().map(Vec::len), Some(2));
    assert!(
        report["world"]["imports"]
            .as_array()
            .expect("imports")
            .iter()
            .any(|i| i == "upshift:adapter/service@0.1.0")
    );

    // One flipped byte: the signatures no longer hold for these bytes.
    let mut bytes = std::fs::read(&wasm).expect("wasm");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&wasm, &bytes).expect("tamper");
    let text = stdout(&env.upshift(&["adapter", "inspect", &file]));
    assert_eq!(text.matches("INVALID for these bytes").count(), 2, "{text}");
}

/// A real component renamed to another `upshift:adapter` version: every import name and the
/// manifest's `host_api` (same length, so the binary stays valid).
fn at_api_version(from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut wasm = std::fs::read(built("test-misbehaving.wasm")).expect("wasm");
    let mut i = 0;
    while i + from.len() <= wasm.len() {
        if &wasm[i..i + from.len()] == from {
            wasm[i..i + to.len()].copy_from_slice(to);
            i += to.len();
        } else {
            i += 1;
        }
    }
    wasm
}

#[test]
fn unsupported_interface_versions_are_refused_before_instantiation() {
    let env = Env::new();
    for (version, accepted) in [("0.2.0", false), ("0.0.9", false), ("0.1.9", true)] {
        let wasm = env.dir.path().join(format!("v{version}.wasm"));
        std::fs::write(&wasm, at_api_version(b"0.1.0", version.as_bytes())).expect("write");
        let file = wasm.display().to_string();
        let text = stdout(&env.upshift(&["adapter", "inspect", &file]));
        assert!(
            text.contains(&format!("import   upshift:adapter/db@{version}")),
            "{text}"
        );
        env.write_fleet(&format!(
            "[[instance]]\nname = \"m\"\nadapter = \"{file}\"\n"
        ));
        let out = env.upshift(&["plan", "m", "--to", "2.0.0", "--json"]);
        if accepted {
            // A newer patch of the same 0.1 interface links and runs.
            assert_eq!(out.status.code(), Some(0), "{version}: {}", stderr(&out));
            assert!(text.contains("(compatible;"), "{text}");
        } else {
            assert_eq!(out.status.code(), Some(2), "{version}: {}", stderr(&out));
            let err = stderr(&out);
            assert!(
                err.contains(&format!("targets upshift:adapter {version}"))
                    && err.contains("supports upshift:adapter >=0.1.0, <0.2.0"),
                "{err}"
            );
            assert!(text.contains("NOT compatible"), "{text}");
        }
    }
}
