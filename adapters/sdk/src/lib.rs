//! Guest-side SDK for Upshift adapters.
//!
//! It generates the `upshift:adapter` bindings once, re-exports them, and does the plumbing every
//! adapter shares, so that an adapter crate is its product's rules, detection queries and steps:
//!
//! - a product implements [`Product`]: how to detect it, its refusal table and stepping stones
//!   ([`rules::Rule`], [`rules::Stone`]), its plans, verification and restore;
//! - [`facts!`] declares the typed facts its rules read back from a detection;
//! - [`export_product!`] turns it into the component's exports ([`exports`] does the parsing,
//!   judging, `preflight` and offline note the same way for every product);
//! - [`manifest!`] declares who the adapter is and what it may touch;
//! - [`live`], [`steps`], [`versions`] and [`rules`] hold the helpers for reading an instance,
//!   building steps and judging versions.

use semver::Version;

/// The generated `upshift:adapter` bindings.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "upshift:adapter/adapter",
        pub_export_macro: true,
        export_macro_name: "export_adapter",
        default_bindings_module: "upshift_adapter_sdk::bindings",
    });
}

pub mod live;
pub mod manifest;
pub mod rules;
pub mod steps;
pub mod versions;

pub use bindings::upshift::adapter::types::*;
pub use bindings::upshift::adapter::{db, files, http, log, progress, service};
pub use bindings::{Guest, export_adapter};

use rules::{Jump, Rule, Stone};
use steps::CustomStep;

/// The prefix of the facts the host adds for the operator (not detected): e.g.
/// [`ALLOW_UNKNOWN_RELEASE`].
pub const OPERATOR_FACTS: &str = "operator.";

/// The fact (`true`) the host adds to the detection handed to `plan` when the operator passed
/// `--allow-unknown`: a target release the adapter's catalog does not know may be planned.
pub const ALLOW_UNKNOWN_RELEASE: &str = "operator.allow-unknown-release";

/// The `upshift:adapter` API version this SDK is generated from.
pub const HOST_API: &str = __host_api_literal!();

/// One product's adapter: how to read a live instance, the rules as tables, and the plans.
///
/// [`export_product!`] exports it as the component; the SDK parses versions, judges the upgrade
/// by [`Product::REFUSALS`] and [`Product::STONES`], runs the `preflight` step and notes offline
/// plans the same way for every product.
pub trait Product: Sized + 'static {
    /// The product's name in messages (`Bytebase`).
    const NAME: &'static str;
    /// A version as the product writes it, shown when a version does not parse (`3.11.1`).
    const EXAMPLE: &'static str;
    /// The newest major this adapter knows ([`Rule::UNKNOWN_MAJOR`] refuses newer targets).
    const NEWEST_MAJOR: u64;
    /// The refusal table, read in order: the first rule that applies refuses the upgrade.
    const REFUSALS: &'static [Rule<Self>];
    /// Versions an upgrade must stop at on its way; the upgrade is refused with the path through
    /// them. None by default.
    const STONES: &'static [Stone<Self>] = &[];
    /// The note added to a plan made without a live instance (no facts): which checks the
    /// `preflight` step repeats. None by default.
    const OFFLINE_NOTE: Option<&'static str> = None;
    /// The custom steps the adapter runs itself, besides `preflight` (which the SDK runs).
    /// None by default.
    const CUSTOM_STEPS: &'static [CustomStep] = &[];

    /// What the rules know of a live instance, read back from a detection's facts (declare it
    /// with [`facts!`]; `()` for a product whose rules read none).
    type Facts: FromFacts;

    /// Read the live instance: its version and the facts the rules need.
    fn detect() -> Result<Detection, AdapterError>;

    /// The plan of an upgrade the rules allow.
    fn upgrade(from: &Version, to: &Version) -> Plan;

    /// The plan of an upgrade the rules allow, given the live facts: for a product whose plan
    /// depends on how the instance is deployed (where its data lives). [`Product::upgrade`] by
    /// default.
    fn upgrade_for(jump: &Jump<Self>) -> Plan {
        Self::upgrade(jump.from, jump.to)
    }

    /// Checks after an upgrade to `expected`; failing checks are returned, not errors.
    fn verify(expected: &str) -> Result<Vec<Check>, AdapterError>;

    /// The plan of `upshift restore`, or the refusal when the backup cannot be restored so.
    fn restore(request: &RestoreRequest) -> Result<Plan, Refusal>;

    /// The facts `preflight` judges the upgrade to `target` by, given the instance detected
    /// again: the detection's own facts unless the product reads more for the target.
    fn recheck(live: &Detection, _target: &Version) -> Result<Self::Facts, AdapterError> {
        Ok(Self::Facts::from_facts(live))
    }

    /// Notes a plan the rules allow carries besides its steps (e.g. that the target is outside
    /// the adapter's release catalog). None by default.
    fn notes(_jump: &Jump<Self>) -> Vec<String> {
        Vec::new()
    }

    /// The summary of a `preflight` that allows the upgrade.
    fn allowed(jump: &Jump<Self>, _live: &Detection) -> String {
        format!("{} → {} allowed", jump.from, jump.to)
    }
}

/// The exports every product shares, generic over the product; [`export_product!`] wires them
/// to the component.
pub mod exports {
    use super::{
        AdapterError, Detection, FromFacts, Jump, OPERATOR_FACTS, Plan, Product, Refusal,
        StepOutput, error, rules, steps,
    };

    /// `plan`: parse both versions, judge the upgrade by the rules and the detection's facts,
    /// and build its plan, noting when it was made without a live instance.
    pub fn plan<P: Product>(current: &Detection, target: &str) -> Result<Plan, Refusal> {
        let (from, to) = rules::parse_pair(P::NAME, &current.version, target, P::EXAMPLE)?;
        let facts = P::Facts::from_facts(current);
        let jump = Jump::<P>::new(&from, &to, &facts);
        jump.check()?;
        let mut plan = P::upgrade_for(&jump);
        plan.notes.extend(P::notes(&jump));
        // Offline: nothing detected (the operator's own `operator.*` facts are not detection).
        if let Some(note) = P::OFFLINE_NOTE
            && current
                .facts
                .iter()
                .all(|f| f.key.starts_with(OPERATOR_FACTS))
        {
            plan.notes.push(note.to_string());
        }
        Ok(plan)
    }

    /// `run-step`: the SDK runs `preflight`; the other steps are the product's
    /// [`Product::CUSTOM_STEPS`].
    pub fn run_step<P: Product>(name: &str, payload: &str) -> Result<StepOutput, AdapterError> {
        if name == steps::PREFLIGHT {
            return preflight::<P>(payload);
        }
        match P::CUSTOM_STEPS.iter().find(|step| step.name == name) {
            Some(step) => (step.run)(payload),
            None => Err(error(format!("unknown step `{name}`"))),
        }
    }

    /// The `preflight` step: detect the instance again and judge the upgrade to `target` by
    /// the rules and the facts [`Product::recheck`] gives, before anything changes.
    pub fn preflight<P: Product>(target: &str) -> Result<StepOutput, AdapterError> {
        let live = P::detect()?;
        let (from, to) = rules::parse_pair(P::NAME, &live.version, target, P::EXAMPLE)
            .map_err(|r| error(r.reason))?;
        let facts = P::recheck(&live, &to)?;
        let jump = Jump::<P>::new(&from, &to, &facts);
        jump.check()
            .map_err(|r| error(format!("refused by rule `{}`: {}", r.rule, r.reason)))?;
        Ok(StepOutput {
            summary: P::allowed(&jump, &live),
        })
    }
}

/// Export a [`Product`] as the adapter component: `describe` returns the `manifest()` that
/// [`manifest!`] declares beside it, and the other exports are the SDK's [`exports`] and the
/// product's own functions.
///
/// ```text
/// upshift_adapter_sdk::manifest! { product: "acme", … }
/// pub struct Acme;
/// impl upshift_adapter_sdk::Product for Acme { … }
/// upshift_adapter_sdk::export_product!(Acme);
/// ```
#[macro_export]
macro_rules! export_product {
    ($product:ty) => {
        /// The component's exports, made by `export_product!`.
        struct __UpshiftExports;

        impl $crate::Guest for __UpshiftExports {
            fn describe() -> $crate::AdapterInfo {
                manifest()
            }

            fn detect() -> Result<$crate::Detection, $crate::AdapterError> {
                <$product as $crate::Product>::detect()
            }

            fn plan(
                current: $crate::Detection,
                target: String,
            ) -> Result<$crate::Plan, $crate::Refusal> {
                $crate::exports::plan::<$product>(&current, &target)
            }

            fn run_step(
                name: String,
                payload: String,
            ) -> Result<$crate::StepOutput, $crate::AdapterError> {
                $crate::exports::run_step::<$product>(&name, &payload)
            }

            fn verify(expected: String) -> Result<Vec<$crate::Check>, $crate::AdapterError> {
                <$product as $crate::Product>::verify(&expected)
            }

            fn plan_restore(
                request: $crate::RestoreRequest,
            ) -> Result<$crate::Plan, $crate::Refusal> {
                <$product as $crate::Product>::restore(&request)
            }
        }

        $crate::export_adapter!(__UpshiftExports);
    };
}

/// A fact's text read back as the value a rule uses; `None` when it is not one.
pub trait FactValue: Sized {
    /// Parse the fact's text.
    fn from_fact(text: &str) -> Option<Self>;
}

macro_rules! fact_value_by_parse {
    ($($t:ty),*) => {$(
        impl FactValue for $t {
            fn from_fact(text: &str) -> Option<Self> {
                text.parse().ok()
            }
        }
    )*};
}

fact_value_by_parse!(u64, u32, bool, String);

/// A version fact is read by its numeric part (`v1.0.1@abc` is 1.0.1), see [`rules::numeric`].
impl FactValue for Version {
    fn from_fact(text: &str) -> Option<Self> {
        rules::numeric(text)
    }
}

/// Typed facts, read from a detection; every one is `None` when the detection lacks it (an
/// offline plan has no facts at all).
pub trait FromFacts {
    /// Read the facts from a detection.
    fn from_facts(detection: &Detection) -> Self;
}

/// No facts: for a product whose rules read only versions.
impl FromFacts for () {
    fn from_facts(_: &Detection) -> Self {}
}

/// Declare the typed facts a product's rules read, each field with the fact key it is read
/// from. The struct derives `Debug`, `Clone`, `Default`, `PartialEq` and `Eq` and implements
/// [`FromFacts`]; each field's type must implement [`FactValue`].
///
/// ```text
/// upshift_adapter_sdk::facts! {
///     /// What the rules know of the live instance.
///     pub struct Facts {
///         /// Jobs still running.
///         pub running_jobs: Option<u64> = "running-jobs",
///     }
/// }
/// ```
#[macro_export]
macro_rules! facts {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : Option<$ty:ty> = $key:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        $vis struct $name {
            $(
                $(#[$field_meta])*
                $field_vis $field: Option<$ty>,
            )*
        }

        impl $crate::FromFacts for $name {
            fn from_facts(detection: &$crate::Detection) -> Self {
                $name {
                    $( $field: detection.read($key), )*
                }
            }
        }
    };
}

impl Detection {
    /// The text of fact `key`, if the detection carries it.
    pub fn fact(&self, key: &str) -> Option<&str> {
        let found = self.facts.iter().find(|f| f.key == key)?;
        Some(found.value.as_str())
    }

    /// Fact `key` read as a `T`; `None` when it is missing or is not a `T`.
    pub fn read<T: FactValue>(&self, key: &str) -> Option<T> {
        self.fact(key).and_then(T::from_fact)
    }
}

impl RestoreRequest {
    /// The version the instance runs now, or `unknown` when it could not be detected.
    pub fn current(&self) -> String {
        self.current_version
            .clone()
            .unwrap_or_else(|| "unknown".into())
    }
}

/// A fact, for building a [`Detection`].
pub fn fact(key: &str, value: impl Into<String>) -> Fact {
    Fact {
        key: key.to_string(),
        value: value.into(),
    }
}

/// An [`AdapterError`] with this message.
pub fn error(message: impl Into<String>) -> AdapterError {
    AdapterError {
        message: message.into(),
    }
}

/// A [`Refusal`] naming the rule, the reason, the versions to pass through and the advice.
pub fn refuse(
    rule: &str,
    reason: impl Into<String>,
    path: &[String],
    advice: impl Into<String>,
) -> Refusal {
    Refusal {
        rule: rule.to_string(),
        reason: reason.into(),
        path: path.to_vec(),
        advice: advice.into(),
    }
}

/// A capability error as one line, for adapter error messages.
pub fn describe_cap_error(err: &CapError) -> String {
    match err {
        CapError::Denied(m) => format!("denied: {m}"),
        CapError::UnknownBinding(m) => format!("unknown binding: {m}"),
        CapError::Invalid(m) => format!("invalid request: {m}"),
        CapError::Failed(m) => format!("failed: {m}"),
    }
}

/// Write an info line to the run log.
pub fn info(message: &str) {
    log::write(log::Level::Info, message);
}

/// A value as text, for reading query results (`None` for SQL NULL).
pub fn value_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::Boolean(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Text(s) => Some(s.clone()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
    }
}
