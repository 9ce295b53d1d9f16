//! The server-side half of the function check: on a read grant, every function a statement may
//! call ([`FunctionRef`], resolved by [`super::sql`]) is looked up in `pg_proc`, in the
//! statement's own transaction right before it runs, and the statement is refused if any
//! function of that name on its schema (or on the search path, when unqualified) is marked
//! volatile. The server's own marking decides — `pg_terminate_backend`, `nextval`, `set_config`,
//! `lo_*`, `pg_notify`, `pg_advisory_*`, `pg_read_file`, `pg_sleep` are volatile — so no list is
//! kept by hand. Overloads are not told apart: one volatile overload is enough to refuse.

use tokio_postgres::GenericClient;

use super::pg::pg_message;
use super::sql::FunctionRef;
use crate::CapError;

/// Volatile functions named like any of `names`, with their schema, argument count and whether
/// their schema is on the current search path (`pg_catalog` always is).
const VOLATILE: &str = "SELECT n.nspname::text, p.proname::text, p.pronargs::int4, \
     n.nspname = ANY (current_schemas(true)) \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.provolatile = 'v' AND p.proname = ANY ($1::text[])";

/// Refuse (as [`CapError::Denied`]) when any of `functions` resolves to a volatile function.
/// Runs on `client`, which should be the statement's own transaction. Nothing to check, no query.
pub async fn refuse_volatile(
    client: &impl GenericClient,
    functions: &[FunctionRef],
) -> Result<(), CapError> {
    if functions.is_empty() {
        return Ok(());
    }
    let mut names: Vec<String> = functions.iter().map(|f| f.name.clone()).collect();
    names.sort();
    names.dedup();
    let rows = client.query(VOLATILE, &[&names]).await.map_err(|e| {
        CapError::Failed(format!(
            "cannot look up the functions the statement calls (nothing was run): {}",
            pg_message(&e)
        ))
    })?;
    let unreadable = |e: tokio_postgres::Error| {
        CapError::Failed(format!(
            "cannot read the function lookup (nothing was run): {e}"
        ))
    };
    for row in rows {
        let schema: String = row.try_get(0).map_err(unreadable)?;
        let name: String = row.try_get(1).map_err(unreadable)?;
        let args: i32 = row.try_get(2).map_err(unreadable)?;
        // NULL (no search path to compare with) counts as on the path.
        let on_path = row
            .try_get::<_, Option<bool>>(3)
            .map_err(unreadable)?
            .unwrap_or(true);
        let hit = functions.iter().find(|f| {
            f.name == name
                && match &f.schema {
                    Some(s) => *s == schema,
                    None => on_path && (!f.attribute || args == 1),
                }
        });
        if let Some(f) = hit {
            return Err(CapError::Denied(format!(
                "function `{f}` ({schema}.{name}) is volatile: it can change state or act outside the query, and a read grant allows only functions the server marks immutable or stable"
            )));
        }
    }
    Ok(())
}
