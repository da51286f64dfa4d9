//! temporary
use async_trait::async_trait;
use mesh_api::{Resource, ResourceKey};
use crate::{ListPage, ListQuery, ResourceStore, StoreError, Watch};
#[derive(Debug)]
pub struct SledStore {}
impl SledStore {
    pub fn open(_p: impl AsRef<std::path::Path>) -> Result<SledStore, StoreError> { Err(StoreError::Io("x".into())) }
}
#[async_trait]
impl ResourceStore for SledStore {
    async fn get(&self, _key: &ResourceKey) -> Result<Option<Resource>, StoreError> { unimplemented!() }
    async fn list(&self, _query: &ListQuery) -> Result<ListPage, StoreError> { unimplemented!() }
    async fn create(&self, _resource: Resource) -> Result<Resource, StoreError> { unimplemented!() }
    async fn update(&self, _resource: Resource) -> Result<Resource, StoreError> { unimplemented!() }
    async fn delete(&self, _key: &ResourceKey, _e: Option<u64>) -> Result<Resource, StoreError> { unimplemented!() }
    fn revision(&self) -> u64 { 0 }
    fn watch(&self, _f: u64) -> Result<Watch, StoreError> { unimplemented!() }
}
