//! The stores every store test runs against: SQLite in a temporary directory, and PostgreSQL
//! when `RASTERCAST_TEST_DATABASE_URL` names a server (each store in a schema of its own,
//! dropped afterwards).

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
        store: Store::open(&dir.path().join("db.sqlite")).expect("SQLite opens"),
        engine: "sqlite",
        _dir: Some(dir),
        schema: None,
    }];
    if let Ok(url) = std::env::var("RASTERCAST_TEST_DATABASE_URL") {
        let admin: postgres::Config = url.parse().expect("RASTERCAST_TEST_DATABASE_URL parses");
        let schema = format!("rc_test_{}", uuid::Uuid::new_v4().simple());
        admin
            .connect(postgres::NoTls)
            .and_then(|mut c| c.batch_execute(&format!("CREATE SCHEMA {schema}")))
            .expect("PostgreSQL at RASTERCAST_TEST_DATABASE_URL takes a new schema");
        let mut config = admin.clone();
        config.options(&format!("-c search_path={schema}"));
        stores.push(TestStore {
            store: Store::connect_with(&config).expect("PostgreSQL store opens"),
            engine: "postgres",
            _dir: None,
            schema: Some((admin, schema)),
        });
    }
    stores
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
