//! Schema of the scoring service's own database. Its tables arrive with the
//! scoring issue; until then the service only records the migration state.

use sea_orm_migration::prelude::*;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        Vec::new()
    }
}
