//! `upshift:adapter/db`: queries, statements and transactions on a bound database.

use serde_json::json;

use super::{CapResult, HostState};
use crate::bindings::Value;
use crate::bindings::upshift::adapter::db;
use upshift_caps::Operation;

impl db::Host for HostState {
    async fn query(
        &mut self,
        binding: String,
        sql_text: String,
        params: Vec<Value>,
    ) -> CapResult<db::Rows> {
        let args =
            self.tap_args(|| json!({ "binding": binding, "sql": sql_text, "params": params }));
        self.taped("db", Operation::Query, &binding, args, async |caps| {
            let rows = caps.db().query(&binding, &sql_text, &params).await?;
            Ok(db::Rows {
                columns: rows.columns,
                rows: rows.rows,
            })
        })
        .await
    }

    async fn execute(
        &mut self,
        binding: String,
        sql_text: String,
        params: Vec<Value>,
    ) -> CapResult<u64> {
        let args =
            self.tap_args(|| json!({ "binding": binding, "sql": sql_text, "params": params }));
        self.taped("db", Operation::Execute, &binding, args, async |caps| {
            caps.db().execute(&binding, &sql_text, &params).await
        })
        .await
    }

    async fn transaction(
        &mut self,
        binding: String,
        statements: Vec<db::Statement>,
    ) -> CapResult<Vec<u64>> {
        let args = self.tap_args(|| json!({ "binding": binding, "statements": statements }));
        self.taped("db", Operation::Transaction, &binding, args, async |caps| {
            let list: Vec<(String, Vec<Value>)> =
                statements.into_iter().map(|s| (s.sql, s.params)).collect();
            caps.db().transaction(&binding, &list).await
        })
        .await
    }

    async fn table_exists(&mut self, binding: String, table: String) -> CapResult<bool> {
        let args = self.tap_args(|| json!({ "binding": binding, "table": table }));
        self.taped("db", Operation::TableExists, &binding, args, async |caps| {
            caps.db().table_exists(&binding, &table).await
        })
        .await
    }
}
