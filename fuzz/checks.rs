//! The checks behind the fuzz targets, shared with the corpus regression test.
//!
//! This file is included by path from `fuzz/fuzz_targets/*.rs` (under `cargo fuzz`) and from
//! `tests/fuzz_corpus.rs` (under plain `cargo test`), so a committed corpus entry is checked
//! exactly as the fuzzer checked it. A check panics, naming the broken invariant, when the host
//! misbehaves; that is how both libFuzzer and the test see a finding. docs/fuzzing.md lists the
//! invariants.

#![allow(dead_code)]

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use upshift::caps::backup::snapshot;
use upshift::caps::files::FilesBackend;
use upshift::caps::limits::{MAX_PLAN_STEPS, MAX_TEXT};
use upshift::fleet::{AdapterRef, Fleet, FleetError, ServiceBackend, valid_binding_name};
use upshift::grants::{Access, BindingKind, BindingRequest, BoundName, GrantSet};
use upshift::ops::plan::{self, Prior, PriorService, RollbackAction};
use upshift::runtime::bindings as wit;
use upshift::runtime::manifest::{self, Manifest};
use upshift::signing::Require;

/// A check: one fuzz input in, a panic out when an invariant breaks.
pub type Check = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/corpus/<name>/` holds their corpora.
pub const TARGETS: &[(&str, Check)] = &[
    ("fleet_file", fleet_file),
    ("adapter_manifest", adapter_manifest),
    ("plan", plan),
    ("snapshot_path", snapshot_path),
];

// ---------------------------------------------------------------------------------------------
// fleet_file

/// Where the fuzzed fleet file pretends to live; relative paths resolve against its directory.
const FLEET_PATH: &str = "/srv/fleet/upshift.toml";

/// Arbitrary text into [`Fleet::parse`]: it never panics, every error says where (a line, or
/// for a syntax error toml's line and column), and an accepted fleet is consistent.
pub fn fleet_file(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new(FLEET_PATH);
    let lines = text.split('\n').count();
    match Fleet::parse(path, &text) {
        Ok(fleet) => accepted_fleet(path, &text, &fleet),
        Err(FleetError::Invalid {
            line, message, fix, ..
        }) => {
            assert!(
                (1..=lines).contains(&line),
                "error on line {line} of a {lines}-line file: {message}"
            );
            assert!(!message.is_empty() && !fix.is_empty(), "an empty message");
        }
        Err(FleetError::Syntax { message, .. }) => {
            assert!(
                message.contains("line "),
                "a syntax error that names no line: {message}"
            );
        }
        Err(other) => panic!("parsing text returned a non-parse error: {other}"),
    }
}

fn accepted_fleet(path: &Path, text: &str, fleet: &Fleet) {
    let again = Fleet::parse(path, text).unwrap_or_else(|e| panic!("accepted once, then: {e}"));
    assert_eq!(
        format!("{fleet:?}"),
        format!("{again:?}"),
        "the same text parsed twice differs"
    );
    if let Some(trust) = &fleet.trust {
        assert!(!trust.keys.is_empty(), "[trust] without keys accepted");
        if let Require::AtLeast(n) = trust.require {
            assert!(
                (1..=trust.keys.len()).contains(&n),
                "require = {n} of {} keys accepted",
                trust.keys.len()
            );
        }
    }
    let base = path.parent().unwrap_or(Path::new("/"));
    for (i, inst) in fleet.instances.iter().enumerate() {
        let name = &inst.name;
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
            "instance name `{name}` accepted"
        );
        assert!(
            fleet.instances[..i].iter().all(|o| &o.name != name),
            "instance name `{name}` accepted twice"
        );
        assert!(
            fleet
                .instance(name)
                .is_ok_and(|found| std::ptr::eq(found, inst)),
            "instance `{name}` cannot be looked up"
        );
        assert_eq!(
            format!("{:?}", inst.trust),
            format!("{:?}", fleet.trust),
            "instance `{name}` lost the fleet's trust policy"
        );
        if let AdapterRef::File(p) = &inst.adapter {
            assert!(p.starts_with(base) || p.is_absolute(), "adapter path {p:?}");
        }
        let names = inst
            .db
            .keys()
            .chain(inst.files.keys())
            .chain(inst.service.keys())
            .chain(inst.http.keys());
        for n in names {
            assert!(valid_binding_name(n), "binding name `{n}` accepted");
        }
        for (n, b) in &inst.db {
            assert!(
                ["postgres://", "postgresql://", "mysql://", "kwdb://"]
                    .iter()
                    .any(|s| b.url.starts_with(s)),
                "db `{n}`: URL `{}` accepted",
                b.url
            );
            narrowing_fits(&b.access, BindingKind::Db);
        }
        for b in inst.files.values() {
            assert!(b.path.is_absolute(), "files path {:?} not resolved", b.path);
            narrowing_fits(&b.access, BindingKind::Files);
        }
        for (n, b) in &inst.service {
            narrowing_fits(&b.access, BindingKind::Service);
            match &b.backend {
                ServiceBackend::Process(p) => assert!(
                    p.command.contains("{version}"),
                    "service `{n}`: command without {{version}}"
                ),
                ServiceBackend::Docker(d) => {
                    assert!(d.image.contains("{version}"), "service `{n}`: image");
                }
                ServiceBackend::Compose(c) => {
                    assert!(c.image.contains("{version}"), "service `{n}`: image");
                    assert!(
                        c.file.is_absolute(),
                        "compose file {:?} not resolved",
                        c.file
                    );
                }
            }
        }
        for (n, b) in &inst.http {
            let rest = b
                .url
                .strip_prefix("http://")
                .or_else(|| b.url.strip_prefix("https://"));
            assert!(
                rest.is_some_and(|r| !r.is_empty()),
                "http `{n}`: base URL `{}` accepted",
                b.url
            );
            assert!(!b.url.ends_with('/'), "http `{n}`: trailing `/` kept");
            narrowing_fits(&b.access, BindingKind::Http);
        }
        let bound = inst.bound_names();
        let count = inst.db.len() + inst.files.len() + inst.service.len() + inst.http.len();
        assert_eq!(bound.len(), count, "bound names lost");
        // Nothing is declared, so every bound name is an error (and none is a panic).
        let resolved = GrantSet::resolve(name, &[], &bound);
        assert_eq!(
            resolved.is_ok(),
            bound.is_empty(),
            "undeclared bindings resolved"
        );
        let _ = inst.adapter_label();
    }
}

fn narrowing_fits(access: &Option<Vec<Access>>, kind: BindingKind) {
    for a in access.iter().flatten() {
        assert!(
            kind.valid_access().contains(a),
            "{kind} binding narrowed to `{a}`"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// adapter_manifest

/// The smallest valid component: the preamble (magic, component version, layer) and nothing else.
const EMPTY_COMPONENT: [u8; 8] = [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00];

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A real (empty) component carrying `text` as its `upshift-manifest` custom section.
pub fn component_with_manifest(text: &[u8]) -> Vec<u8> {
    let name = manifest::SECTION.as_bytes();
    let mut body = Vec::with_capacity(name.len() + text.len() + 4);
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(text);
    let mut wasm = EMPTY_COMPONENT.to_vec();
    wasm.push(0); // custom section
    leb128(body.len(), &mut wasm);
    wasm.extend_from_slice(&body);
    wasm
}

/// Arbitrary bytes into [`Manifest::from_component`], twice: as the whole component, and as the
/// TOML text of a real component's manifest section (so the TOML parser and the validator are
/// reached). It never panics, every error says something, and an accepted manifest satisfies
/// the documented rules and reads back identically after being written out again.
pub fn adapter_manifest(data: &[u8]) {
    manifest_outcome(data);
    manifest_outcome(&component_with_manifest(data));
}

fn manifest_outcome(wasm: &[u8]) {
    let m = match Manifest::from_component(wasm) {
        Ok(m) => m,
        Err(e) => {
            assert!(!e.trim().is_empty(), "an empty error");
            return;
        }
    };
    m.validate()
        .unwrap_or_else(|e| panic!("accepted, then invalid: {e}"));
    assert!(
        !m.product.is_empty()
            && m.product.len() <= 64
            && m.product
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "product `{}` accepted",
        m.product
    );
    assert!(semver::Version::parse(&m.adapter_version).is_ok());
    assert!(semver::VersionReq::parse(&m.supported_versions).is_ok());
    assert!(
        semver::Version::parse(&m.host_api).is_ok(),
        "host_api `{}` accepted",
        m.host_api
    );
    assert!(
        m.bindings.len() <= 32,
        "{} bindings accepted",
        m.bindings.len()
    );
    for (i, b) in m.bindings.iter().enumerate() {
        assert!(valid_binding_name(&b.name), "binding `{}` accepted", b.name);
        assert!(
            m.bindings[..i].iter().all(|o| o.name != b.name),
            "binding `{}` twice",
            b.name
        );
        assert!(!b.access.is_empty(), "binding `{}` with no access", b.name);
        for a in &b.access {
            assert!(b.kind.valid_access().contains(a), "{} binding: {a}", b.kind);
        }
        assert!(
            b.purpose.len() <= 300,
            "purpose of {} bytes",
            b.purpose.len()
        );
    }
    let text = toml::to_string(&m).unwrap_or_else(|e| panic!("cannot write it back: {e}"));
    let back = Manifest::from_component(&component_with_manifest(text.as_bytes()))
        .unwrap_or_else(|e| panic!("written back, it is refused: {e}\n{text}"));
    assert_eq!(back, m, "written back, it reads differently:\n{text}");
}

// ---------------------------------------------------------------------------------------------
// plan

/// A binding or step name: usually one of a few, so that references meet; sometimes anything.
#[derive(Debug, Clone)]
struct Name(String);

impl<'a> Arbitrary<'a> for Name {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        const COMMON: &[&str] = &["app", "meta", "data", "api", "a", "b", "", "App", "x-1"];
        Ok(Name(if u.ratio(7u8, 8)? {
            (*u.choose(COMMON)?).to_string()
        } else {
            String::arbitrary(u)?
        }))
    }
}

/// Text that is sometimes longer than any input could spell, to reach the length limits.
/// (`ratio` answers yes once the input runs out, so the rare case is its `no`.)
#[derive(Debug, Clone)]
struct Text(String);

impl<'a> Arbitrary<'a> for Text {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Text(if !u.ratio(63u8, 64)? {
            "x".repeat(u.int_in_range(MAX_TEXT - 2..=MAX_TEXT + 2)?)
        } else {
            String::arbitrary(u)?
        }))
    }
}

#[derive(Debug)]
enum ArbKind {
    Db,
    Files,
    Service,
    Http,
}

impl<'a> Arbitrary<'a> for ArbKind {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=3)? {
            0 => ArbKind::Db,
            1 => ArbKind::Files,
            2 => ArbKind::Service,
            _ => ArbKind::Http,
        })
    }
}

impl ArbKind {
    fn kind(&self) -> BindingKind {
        match self {
            ArbKind::Db => BindingKind::Db,
            ArbKind::Files => BindingKind::Files,
            ArbKind::Service => BindingKind::Service,
            ArbKind::Http => BindingKind::Http,
        }
    }
}

fn access_of(bits: u16) -> Vec<Access> {
    Access::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, a)| a)
        .collect()
}

#[derive(Debug)]
struct ArbRequest {
    name: Name,
    kind: ArbKind,
    access: u16,
    optional: bool,
}

impl<'a> Arbitrary<'a> for ArbRequest {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(ArbRequest {
            name: u.arbitrary()?,
            kind: u.arbitrary()?,
            access: u.arbitrary()?,
            optional: u.arbitrary()?,
        })
    }
}

#[derive(Debug)]
struct ArbBound {
    name: Name,
    kind: ArbKind,
    narrowing: Option<u16>,
}

impl<'a> Arbitrary<'a> for ArbBound {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(ArbBound {
            name: u.arbitrary()?,
            kind: u.arbitrary()?,
            narrowing: u.arbitrary()?,
        })
    }
}

#[derive(Debug)]
enum ArbAction {
    DbBackup(Name, u8, bool),
    DbRestore(Name, Option<Text>, Vec<(Text, Text)>),
    FilesSnapshot(Name),
    FilesRestore(Name),
    ServiceStop(Name),
    ServiceStart(Name),
    ServiceSwitch(Name, Text),
    WaitHealthy(Name, u32),
    HttpCheck(Name, Text, u16, Option<Text>, u32),
    Custom(Text, Text, bool),
}

impl<'a> Arbitrary<'a> for ArbAction {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u.int_in_range(0u8..=9)? {
            0 => ArbAction::DbBackup(u.arbitrary()?, u.arbitrary()?, u.arbitrary()?),
            1 => ArbAction::DbRestore(u.arbitrary()?, u.arbitrary()?, u.arbitrary()?),
            2 => ArbAction::FilesSnapshot(u.arbitrary()?),
            3 => ArbAction::FilesRestore(u.arbitrary()?),
            4 => ArbAction::ServiceStop(u.arbitrary()?),
            5 => ArbAction::ServiceStart(u.arbitrary()?),
            6 => ArbAction::ServiceSwitch(u.arbitrary()?, u.arbitrary()?),
            7 => ArbAction::WaitHealthy(u.arbitrary()?, u.arbitrary()?),
            8 => ArbAction::HttpCheck(
                u.arbitrary()?,
                u.arbitrary()?,
                u.arbitrary()?,
                u.arbitrary()?,
                u.arbitrary()?,
            ),
            _ => ArbAction::Custom(u.arbitrary()?, u.arbitrary()?, u.arbitrary()?),
        })
    }
}

impl ArbAction {
    fn action(self) -> wit::Action {
        use wit::Action as A;
        match self {
            ArbAction::DbBackup(b, m, restore) => A::DbBackup(wit::DbBackupAction {
                binding: b.0,
                method: match m % 3 {
                    0 => wit::BackupMethod::Clone,
                    1 => wit::BackupMethod::Dump,
                    _ => wit::BackupMethod::Snapshot,
                },
                restore_on_rollback: restore,
            }),
            ArbAction::DbRestore(b, into, cols) => A::DbRestore(wit::DbRestoreAction {
                binding: b.0,
                target: match into {
                    None => wit::RestoreTarget::SameDatabase,
                    Some(n) => wit::RestoreTarget::NewDatabase(n.0),
                },
                namespace_columns: cols
                    .into_iter()
                    .map(|(t, c)| wit::NamespaceColumn {
                        table: t.0,
                        column: c.0,
                    })
                    .collect(),
            }),
            ArbAction::FilesSnapshot(b) => A::FilesSnapshot(b.0),
            ArbAction::FilesRestore(b) => A::FilesRestore(b.0),
            ArbAction::ServiceStop(b) => A::ServiceStop(b.0),
            ArbAction::ServiceStart(b) => A::ServiceStart(b.0),
            ArbAction::ServiceSwitch(b, v) => A::ServiceSwitch(wit::SwitchAction {
                binding: b.0,
                version: v.0,
            }),
            ArbAction::WaitHealthy(b, t) => A::WaitHealthy(wit::WaitAction {
                binding: b.0,
                timeout_ms: t,
            }),
            ArbAction::HttpCheck(b, path, status, body, t) => A::HttpCheck(wit::HttpCheckAction {
                binding: b.0,
                path: path.0,
                expect_status: status,
                expect_body_contains: body.map(|t| t.0),
                timeout_ms: t,
            }),
            ArbAction::Custom(name, payload, mutates) => A::Custom(wit::CustomAction {
                name: name.0,
                payload: payload.0,
                mutates,
            }),
        }
    }
}

#[derive(Debug)]
struct ArbStep {
    id: Name,
    title: Text,
    action: ArbAction,
}

impl<'a> Arbitrary<'a> for ArbStep {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(ArbStep {
            id: u.arbitrary()?,
            title: u.arbitrary()?,
            action: u.arbitrary()?,
        })
    }
}

#[derive(Debug)]
struct PlanInput {
    requests: Vec<ArbRequest>,
    bound: Vec<ArbBound>,
    prior: Vec<(Name, bool, String)>,
    from_version: Text,
    to_version: Text,
    steps: Vec<ArbStep>,
    /// Filler steps `fill-<i>` appended after `steps` (rarely, and then around the step
    /// limit), to reach it without spelling every step.
    filler: Option<u8>,
    notes: Vec<Text>,
}

impl<'a> Arbitrary<'a> for PlanInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(PlanInput {
            requests: u.arbitrary()?,
            bound: u.arbitrary()?,
            prior: u.arbitrary()?,
            from_version: u.arbitrary()?,
            to_version: u.arbitrary()?,
            steps: u.arbitrary()?,
            filler: if !u.ratio(63u8, 64)? {
                Some(u.arbitrary()?)
            } else {
                None
            },
            notes: u.arbitrary()?,
        })
    }
}

/// Every text field of a plan, the actions' included.
fn plan_texts(plan: &wit::Plan) -> Vec<&str> {
    use wit::Action as A;
    let mut out: Vec<&str> = vec![&plan.from_version, &plan.to_version];
    out.extend(plan.notes.iter().map(String::as_str));
    for s in &plan.steps {
        out.push(&s.id);
        out.push(&s.title);
        match &s.action {
            A::DbBackup(a) => out.push(&a.binding),
            A::DbRestore(a) => {
                out.push(&a.binding);
                if let wit::RestoreTarget::NewDatabase(n) = &a.target {
                    out.push(n);
                }
                for c in &a.namespace_columns {
                    out.push(&c.table);
                    out.push(&c.column);
                }
            }
            A::FilesSnapshot(b) | A::FilesRestore(b) | A::ServiceStop(b) | A::ServiceStart(b) => {
                out.push(b)
            }
            A::ServiceSwitch(a) => {
                out.push(&a.binding);
                out.push(&a.version);
            }
            A::WaitHealthy(a) => out.push(&a.binding),
            A::HttpCheck(a) => {
                out.push(&a.binding);
                out.push(&a.path);
                if let Some(b) = &a.expect_body_contains {
                    out.push(b);
                }
            }
            A::Custom(a) => {
                out.push(&a.name);
                out.push(&a.payload);
            }
        }
    }
    out
}

/// Arbitrary plans (with arbitrary declared and bound bindings) through the host's plan
/// validation and grant check. It never panics; an accepted plan keeps the documented limits
/// (at most 500 steps, unique well-formed ids, every text field bounded), the grant check agrees
/// with an independent reading of the grant rules, the plan journals and reads back identically,
/// and its worst-case rollback restores data before any old version starts.
pub fn plan(data: &[u8]) {
    let Ok(input) = PlanInput::arbitrary(&mut Unstructured::new(data)) else {
        return;
    };
    let mut steps: Vec<wit::Step> = input
        .steps
        .into_iter()
        .map(|s| wit::Step {
            id: s.id.0,
            title: s.title.0,
            action: s.action.action(),
        })
        .collect();
    let filler = input
        .filler
        .map_or(0, |n| MAX_PLAN_STEPS - 8 + usize::from(n % 16));
    steps.extend((0..filler).map(|i| wit::Step {
        id: format!("fill-{i}"),
        title: String::new(),
        action: wit::Action::ServiceStop("app".into()),
    }));
    let p = wit::Plan {
        from_version: input.from_version.0,
        to_version: input.to_version.0,
        steps,
        notes: input.notes.into_iter().map(|t| t.0).collect(),
    };
    for s in &p.steps {
        let _ = plan::describe_action(&s.action);
    }

    // The grants, as a manifest (unique names) and a fleet file (one per name and kind) give them.
    let mut requests: Vec<BindingRequest> = Vec::new();
    for r in input.requests {
        if requests.iter().all(|o| o.name != r.name.0) {
            requests.push(BindingRequest {
                name: r.name.0,
                kind: r.kind.kind(),
                access: access_of(r.access),
                purpose: String::new(),
                optional: r.optional,
            });
        }
    }
    let mut bound: Vec<BoundName> = Vec::new();
    for b in input.bound {
        let kind = b.kind.kind();
        if bound.iter().all(|o| o.name != b.name.0 || o.kind != kind) {
            bound.push(BoundName {
                name: b.name.0,
                kind,
                access: b.narrowing.map(access_of),
            });
        }
    }
    let resolved = GrantSet::resolve("fuzz", &requests, &bound);
    assert_eq!(
        resolved.is_ok(),
        resolves(&requests, &bound),
        "grant resolution disagrees with the rules: {resolved:?}"
    );

    let valid = plan::validate(&p);
    if let Err(e) = &valid {
        assert!(!e.is_empty(), "an empty error");
    }
    if let Ok(grants) = &resolved {
        let checked = plan::check_grants(&p, grants, "fuzz");
        let expected = p.steps.iter().all(|s| match plan::action_grant(&s.action) {
            None => true,
            Some((kind, name, access)) => granted(&requests, &bound, kind, name, access),
        });
        assert_eq!(
            checked.is_ok(),
            expected,
            "the grant check disagrees with the rules: {checked:?}"
        );
    }
    if valid.is_err() {
        return;
    }

    assert!(
        p.steps.len() <= MAX_PLAN_STEPS,
        "{} steps accepted",
        p.steps.len()
    );
    for (i, s) in p.steps.iter().enumerate() {
        assert!(
            !s.id.is_empty()
                && s.id.len() <= 64
                && s.id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "step id `{}` accepted",
            s.id
        );
        assert!(
            p.steps[..i].iter().all(|o| o.id != s.id),
            "step id `{}` accepted twice",
            s.id
        );
    }
    for s in &p.steps {
        if let wit::Action::ServiceSwitch(a) = &s.action {
            assert!(
                upshift::model::version::is_valid(&a.version),
                "switch to `{}` accepted: not a product version",
                a.version.escape_debug()
            );
        }
    }
    assert!(
        upshift::model::version::is_valid(&p.to_version),
        "to-version `{}` accepted",
        p.to_version.escape_debug()
    );
    for t in plan_texts(&p) {
        assert!(
            t.len() <= MAX_TEXT,
            "a plan text field of {} bytes accepted (limit {MAX_TEXT})",
            t.len()
        );
    }

    let json = serde_json::to_string(&p).unwrap_or_else(|e| panic!("cannot journal it: {e}"));
    let back: wit::Plan =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("cannot read it back: {e}"));
    assert_eq!(
        serde_json::to_string(&back).ok().as_deref(),
        Some(json.as_str()),
        "journaled and read back, it differs"
    );

    let mut prior = Prior::default();
    for (name, running, version) in input.prior {
        prior.services.insert(
            name.0,
            PriorService {
                running,
                version,
                detail: String::new(),
            },
        );
    }
    rollback_is_ordered(&p, &prior);
}

/// Whether [`GrantSet::resolve`] should succeed, read straight from docs/contract.md: every
/// bound name is declared with that kind, every required binding is bound, and a narrowing
/// only narrows.
fn resolves(requests: &[BindingRequest], bound: &[BoundName]) -> bool {
    bound.iter().all(|b| {
        requests.iter().any(|r| {
            r.name == b.name
                && r.kind == b.kind
                && b.access.iter().flatten().all(|a| r.access.contains(a))
        })
    }) && requests
        .iter()
        .all(|r| r.optional || bound.iter().any(|b| b.name == r.name))
}

/// Whether a binding is granted an access: declared with that kind and access, bound with that
/// kind, and not narrowed away.
fn granted(
    requests: &[BindingRequest],
    bound: &[BoundName],
    kind: BindingKind,
    name: &str,
    access: Access,
) -> bool {
    requests
        .iter()
        .any(|r| r.name == name && r.kind == kind && r.access.contains(&access))
        && bound.iter().any(|b| {
            b.name == name
                && b.kind == kind
                && b.access.as_ref().is_none_or(|n| n.contains(&access))
        })
}

fn rollback_is_ordered(p: &wit::Plan, prior: &Prior) {
    let rb = plan::worst_case_rollback(p, prior);
    let phase = |a: &RollbackAction| match a {
        RollbackAction::Stop { .. } => 0,
        RollbackAction::Restore { .. } | RollbackAction::RestoreFiles { .. } => 1,
        RollbackAction::Switch { .. } => 2,
        RollbackAction::Start { .. } | RollbackAction::WaitHealthy { .. } => 3,
    };
    for w in rb.windows(2) {
        assert!(
            phase(&w[0]) <= phase(&w[1]),
            "rollback out of order (stop, restore, switch back, start): {rb:?}"
        );
    }
    for a in &rb {
        let _ = (a.id(), a.describe());
        match a {
            RollbackAction::Restore {
                binding, from_step, ..
            } => assert!(
                p.steps.iter().any(|s| &s.id == from_step
                    && matches!(&s.action, wit::Action::DbBackup(b)
                        if &b.binding == binding && b.restore_on_rollback)),
                "restore of `{binding}` from `{from_step}`, which took no such backup"
            ),
            RollbackAction::RestoreFiles {
                binding, from_step, ..
            } => assert!(
                p.steps.iter().any(|s| &s.id == from_step
                    && matches!(&s.action, wit::Action::FilesSnapshot(b) if b == binding)),
                "files restore of `{binding}` from `{from_step}`, which took no snapshot"
            ),
            RollbackAction::Switch { binding, version } => assert!(
                prior
                    .services
                    .get(binding)
                    .is_some_and(|s| &s.version == version),
                "switch of `{binding}` back to {version}, which it did not run"
            ),
            RollbackAction::Start { binding } => assert!(
                prior.services.get(binding).is_some_and(|s| s.running),
                "start of `{binding}`, which did not run before"
            ),
            RollbackAction::Stop { .. } | RollbackAction::WaitHealthy { .. } => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// snapshot_path

/// What every file inside the fixture's bound directory holds.
const INSIDE: &[u8] = b"inside";
/// What every file outside it holds.
const OUTSIDE: &[u8] = b"OUTSIDE";
/// The only name used outside the bound directory.
const OUTSIDE_NAME: &str = "outside-only";

/// A bound directory with symlinks leading out of it, built once per process.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("fixture: {e}"));
        let outer = dir.path().to_path_buf();
        let root = outer.join("root");
        let made = (|| -> std::io::Result<()> {
            use std::os::unix::fs::symlink;
            std::fs::create_dir_all(root.join("sub/deeper"))?;
            std::fs::create_dir_all(outer.join(OUTSIDE_NAME))?;
            std::fs::write(outer.join(OUTSIDE_NAME).join(OUTSIDE_NAME), OUTSIDE)?;
            std::fs::write(outer.join("secret"), OUTSIDE)?;
            std::fs::write(root.join("a.txt"), INSIDE)?;
            std::fs::write(root.join("sub/b.txt"), INSIDE)?;
            std::fs::write(root.join("sub/deeper/c.txt"), INSIDE)?;
            symlink("../a.txt", root.join("sub/up"))?; // stays inside
            symlink("sub", root.join("sublink"))?; // stays inside
            symlink("../secret", root.join("esc"))?;
            symlink(outer.join("secret"), root.join("abs"))?;
            symlink(format!("../{OUTSIDE_NAME}"), root.join("escdir"))?;
            symlink("../../../secret", root.join("sub/deeper/far"))?;
            symlink("/", root.join("slash"))?;
            symlink("loop", root.join("loop"))?;
            Ok(())
        })();
        made.unwrap_or_else(|e| panic!("fixture: {e}"));
        Fixture { _dir: dir, root }
    })
}

/// The path a fuzz input spells: its text, or (when the first byte is odd) a sequence of
/// components picked from the fixture's names and the tricky ones.
fn path_of(data: &[u8]) -> String {
    const PARTS: &[&str] = &[
        "..",
        ".",
        "",
        "/",
        "sub",
        "deeper",
        "a.txt",
        "b.txt",
        "c.txt",
        "up",
        "sublink",
        "esc",
        "abs",
        "escdir",
        "far",
        "slash",
        "loop",
        OUTSIDE_NAME,
        "secret",
        "root",
        "\0",
        "//",
    ];
    match data.split_first() {
        Some((first, rest)) if first % 2 == 1 => rest
            .iter()
            .map(|b| PARTS[usize::from(*b) % PARTS.len()])
            .collect::<Vec<_>>()
            .join("/"),
        Some((_, rest)) => String::from_utf8_lossy(rest).into_owned(),
        None => String::new(),
    }
}

/// Arbitrary relative paths through the files capability's confinement (against a real
/// directory with symlinks that lead out) and through the snapshot entry-path check. It never
/// panics; nothing read or listed comes from outside the bound directory; and a path the
/// snapshot check accepts is a plain relative path that stays inside any root.
pub fn snapshot_path(data: &[u8]) {
    let path = path_of(data);
    let fx = fixture();
    let files = FilesBackend::new(&fx.root);
    if let Ok((bytes, _)) = files.read(&path) {
        assert_eq!(
            bytes, INSIDE,
            "`{path}` read a file from outside the bound directory"
        );
    }
    if let Ok((entries, _)) = files.list(&path) {
        assert!(
            entries.iter().all(|e| e.name != OUTSIDE_NAME),
            "`{path}` listed a directory outside the bound directory"
        );
    }
    if let Ok((file, _)) = files.open(&path) {
        use std::io::Read;
        let mut head = Vec::new();
        let _ = file.take(16).read_to_end(&mut head);
        assert!(
            head != OUTSIDE,
            "`{path}` opened a file outside the bound directory"
        );
    }
    let _ = files.exists(&path);

    let entries: Vec<snapshot::Entry> = path
        .split('\n')
        .enumerate()
        .map(|(i, p)| snapshot::Entry {
            path: p.to_string(),
            kind: match i % 3 {
                0 => snapshot::EntryKind::Dir,
                1 => snapshot::EntryKind::Symlink {
                    target: "../..".into(),
                },
                _ => snapshot::EntryKind::File {
                    size: 0,
                    sha256: String::new(),
                },
            },
            mode: 0o644,
            mtime_ns: 0,
            owner: None,
        })
        .collect();
    for e in &entries {
        if let Ok(p) = snapshot::entry_path(&e.path) {
            assert!(
                p.components().all(|c| matches!(c, Component::Normal(_))),
                "snapshot entry `{}` accepted with a non-plain component",
                e.path
            );
            assert!(
                fx.root.join(p).starts_with(&fx.root) && p.components().count() > 0,
                "snapshot entry `{}` leaves the root",
                e.path
            );
        }
    }
    if snapshot::check_entries(&entries).is_ok() {
        for (i, e) in entries.iter().enumerate() {
            assert!(
                snapshot::entry_path(&e.path).is_ok(),
                "`{}` accepted",
                e.path
            );
            let p = Path::new(&e.path);
            for ancestor in p.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
                assert!(
                    entries[..i]
                        .iter()
                        .any(|o| Path::new(&o.path) == ancestor
                            && o.kind == snapshot::EntryKind::Dir),
                    "entry `{}` accepted without its directory `{}` before it",
                    e.path,
                    ancestor.display()
                );
            }
            assert!(
                entries[..i].iter().all(|o| o.path != e.path),
                "entry `{}` accepted twice",
                e.path
            );
        }
    }
}
