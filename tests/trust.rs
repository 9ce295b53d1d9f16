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
