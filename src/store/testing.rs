//! The stores every store test runs against: SQLite in a temporary directory, and PostgreSQL
//! (`RASTERCAST_TEST_DATABASE_URL`, or the server `scripts/test-postgres.sh` finds or starts),
//! each PostgreSQL store in a schema of its own, dropped afterwards.

use super::Store;

pub struct TestStore {
    pub store: Store,
    pub engine: &'static str,
    _dir: Option<tempfile::TempDir>,
    schema: Option<(postgres::Config, String)>,
}

pub fn stores() -> Vec<TestStore> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut stores = vec![TestStore {
        store: Store::open(&dir.path().join("db.sqlite"), bus()).expect("SQLite opens"),
        engine: "sqlite",
        _dir: Some(dir),
        schema: None,
    }];
    {
        let url = test_database_url();
        let admin: postgres::Config = url.parse().expect("the test database URL parses");
        let schema = format!("rc_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .connect(postgres::NoTls)
            .and_then(|mut c| c.batch_execute(&format!("CREATE SCHEMA {schema}")))
            .expect("PostgreSQL at RASTERCAST_TEST_DATABASE_URL takes a new schema");
        let mut config = admin.clone();
        config.options(&format!("-c search_path={schema}"));
        stores.push(TestStore {
            store: Store::connect_with(&config, bus()).expect("PostgreSQL store opens"),
            engine: "postgres",
            _dir: None,
            schema: Some((admin, schema)),
        });
    }
    stores
}

impl TestStore {
    /// Another connection to the same database, as a second node has (PostgreSQL only).
    pub fn another_node(&self) -> Option<Store> {
        let config = self.postgres_config()?;
        Some(Store::connect_with(&config, bus()).expect("a second PostgreSQL store opens"))
    }

    /// The settings that reach this store's schema (PostgreSQL only).
    pub fn postgres_config(&self) -> Option<postgres::Config> {
        let (admin, schema) = self.schema.as_ref()?;
        let mut config = admin.clone();
        config.options(&format!("-c search_path={schema}"));
        Some(config)
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        if let Some((admin, schema)) = &self.schema {
            if let Ok(mut c) = admin.connect(postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA {schema} CASCADE"));
            }
        }
    }
}

fn bus() -> std::sync::Arc<dyn crate::domain::Announce> {
    std::sync::Arc::new(crate::bus::Bus::new(1 << 16, 1 << 16))
}

/// The script answers `RASTERCAST_TEST_DATABASE_URL` when it is set.
fn test_database_url() -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test-postgres.sh");
    let out = std::process::Command::new(script)
        .output()
        .expect("scripts/test-postgres.sh runs");
    assert!(
        out.status.success(),
        "scripts/test-postgres.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Waits until the database's clock is past the latest turn a claim recorded. Turns are kept
/// to the millisecond, and two claims within one tie: the queue then goes by who waited
/// longest, which a test that follows turns one by one must not leave to chance.
pub fn after_the_last_turn(db: &mut super::Db) -> anyhow::Result<()> {
    let passed = format!(
        "SELECT {} - COALESCE((SELECT MAX(served) FROM queue_turns), 0)",
        super::tasks::now_ms(db)
    );
    while db.query_one(&passed, &[])?.int(0)? <= 0 {
        std::hint::spin_loop();
    }
    Ok(())
}
