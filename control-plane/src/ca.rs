//! The control plane that owns Meshes (the global, or a standalone zone control plane) creates
//! each mesh's builtin CA. For every Mesh whose enabled mTLS
//! backend is `builtin` and whose CA Secrets do not exist, it generates the CA (`mesh_ca`) and
//! creates the two Secrets, which KDS then syncs to every zone. It runs once over all meshes at
//! start and again after every change to a Mesh or a Secret (the store's ordered watch, through
//! [`crate::reconciler`]), so a new mesh, a mesh switching to a builtin backend, or deleted
//! CA Secrets get a CA. It never replaces a CA: an existing certificate is left alone, a create
//! that loses to a concurrent writer is fine, and the key is written before the certificate so
//! that a writer stopped between the two leaves a key that the next pass completes with a
//! certificate ([`mesh_ca::MeshCa::certify_key`]). A `provided` backend needs nothing created.

use std::sync::Arc;
use std::time::SystemTime;

use mesh_api::core::mesh::{CaBackend, MeshSpec};
use mesh_api::{Resource, ResourceKey, ResourceType, Spec};
use mesh_ca::{cert_secret_name, key_secret_name, read_pem_secret, CaError, MeshCa};
use mesh_store::{ListQuery, ResourceStore, StoreError};
use tokio::sync::watch;

/// What [`ensure_mesh_ca`] did for one mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// The mesh has no enabled builtin backend: nothing to do.
    NotBuiltin,
    /// Both Secrets exist (or a concurrent writer is creating them).
    Exists,
    /// A new CA was generated and stored.
    Created,
    /// The key existed without its certificate; a certificate for it was stored.
    Completed,
}

/// Keeps every mesh's builtin CA in existence until `shutdown` is set. Returns an error only
/// when the store fails to list or watch; a mesh whose CA cannot be made is logged and retried
/// on its next change.
pub async fn run(
    store: Arc<dyn ResourceStore>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let watched = [ResourceType::Mesh, ResourceType::Secret];
    let stop = shutdown.clone();
    crate::reconciler::run(store.clone(), shutdown, &watched, || {
        let (store, mut stop) = (store.clone(), stop.clone());
        async move {
            // Generating an RSA key takes a while: stopping does not wait for it. A pass cut
            // short between the key and the certificate is completed by the next one.
            tokio::select! {
                _ = stop.wait_for(|s| *s) => Ok(()),
                done = ensure_all(store.as_ref()) => done,
            }
        }
    })
    .await
}

/// One pass over every mesh.
async fn ensure_all(store: &dyn ResourceStore) -> Result<(), StoreError> {
    let meshes = store.list(&ListQuery::all(ResourceType::Mesh)).await?;
    for mesh in meshes.items {
        let Spec::Mesh(spec) = &mesh.spec else {
            continue;
        };
        let name = &mesh.meta.name;
        match ensure_mesh_ca(store, name, spec).await {
            Ok(Ensured::Created) => tracing::info!(mesh = %name, "created the mesh's builtin CA"),
            Ok(Ensured::Completed) => {
                tracing::info!(mesh = %name, "stored the certificate of the mesh's builtin CA key")
            }
            Ok(Ensured::NotBuiltin | Ensured::Exists) => {}
            Err(e) => {
                tracing::error!(mesh = %name, error = %e, "cannot create the mesh's builtin CA")
            }
        }
    }
    Ok(())
}

/// Makes sure mesh `mesh` (spec `spec`) has its builtin CA Secrets, creating what is missing and
/// never replacing what exists. A certificate stored without its key is an error (the CA
/// cannot sign; replacing the certificate would change the mesh's trust root, so an operator
/// decides: delete the certificate Secret to get a new CA).
pub async fn ensure_mesh_ca(
    store: &dyn ResourceStore,
    mesh: &str,
    spec: &MeshSpec,
) -> Result<Ensured, CaError> {
    let Some(backend) = spec
        .enabled_mtls_backend()
        .filter(|b| b.backend_type == mesh_ca::BUILTIN)
    else {
        return Ok(Ensured::NotBuiltin);
    };
    let cert_name = cert_secret_name(mesh, &backend.name);
    let key_name = key_secret_name(mesh, &backend.name);
    let cert = read_pem_secret(store, mesh, &cert_name).await?;
    let key = read_pem_secret(store, mesh, &key_name).await?;
    match (cert, key) {
        (Some(_), Some(_)) => Ok(Ensured::Exists),
        (Some(_), None) => Err(CaError::MissingSecret {
            mesh: mesh.to_owned(),
            name: key_name,
        }),
        (None, Some(key_pem)) => {
            let ca = MeshCa::certify_key(mesh, backend, &key_pem, SystemTime::now())?;
            create(store, ca.cert_secret()).await?;
            Ok(Ensured::Completed)
        }
        (None, None) => {
            let ca = generate(mesh, backend).await?;
            // The mesh may have been deleted or changed while the key was made.
            if !still_wants(store, mesh, backend).await? {
                return Ok(Ensured::NotBuiltin);
            }
            if !create(store, ca.key_secret()).await? {
                // A concurrent writer got there first; its certificate follows (or the next
                // pass completes it from its key).
                return Ok(Ensured::Exists);
            }
            create(store, ca.cert_secret()).await?;
            Ok(Ensured::Created)
        }
    }
}

/// Generates the CA off the async runtime (RSA key generation is CPU-bound).
async fn generate(mesh: &str, backend: &CaBackend) -> Result<MeshCa, CaError> {
    let (mesh_name, backend_conf) = (mesh.to_owned(), backend.clone());
    tokio::task::spawn_blocking(move || MeshCa::generate(&mesh_name, &backend_conf))
        .await
        .map_err(|e| CaError::Crypto {
            mesh: mesh.to_owned(),
            what: "generating the CA",
            reason: e.to_string(),
        })?
}

/// Whether the stored mesh still enables this very backend.
async fn still_wants(
    store: &dyn ResourceStore,
    mesh: &str,
    backend: &CaBackend,
) -> Result<bool, StoreError> {
    let key = ResourceKey::new(ResourceType::Mesh, None, mesh);
    Ok(match store.get(&key).await? {
        Some(Resource {
            spec: Spec::Mesh(spec),
            ..
        }) => spec.enabled_mtls_backend() == Some(backend),
        _ => false,
    })
}

/// Creates `secret`; `false` when it already exists (another writer made it).
async fn create(store: &dyn ResourceStore, secret: Resource) -> Result<bool, StoreError> {
    match store.create(secret).await {
        Ok(_) => Ok(true),
        Err(StoreError::AlreadyExists(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_store::SledStore;

    fn mesh(yaml: &str) -> Resource {
        let resource = mesh_api::parse_documents(yaml).remove(0).unwrap().resource;
        resource.validate().unwrap();
        resource
    }

    fn spec(resource: &Resource) -> &MeshSpec {
        match &resource.spec {
            Spec::Mesh(spec) => spec,
            _ => panic!("not a Mesh"),
        }
    }

    const BUILTIN: &str = "type: Mesh\nname: m\nmtls:\n  enabledBackend: ca-1\n  backends:\n  - name: ca-1\n    type: builtin\n";

    async fn secret(store: &dyn ResourceStore, name: &str) -> Option<String> {
        read_pem_secret(store, "m", name).await.unwrap()
    }

    #[tokio::test]
    async fn creates_once_never_replaces_and_completes_a_lone_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path().join("store")).unwrap();
        let m = mesh(BUILTIN);
        store.create(m.clone()).await.unwrap();
        let (cert, key) = ("m.ca-builtin-cert-ca-1", "m.ca-builtin-key-ca-1");

        assert_eq!(
            ensure_mesh_ca(&store, "m", spec(&m)).await.unwrap(),
            Ensured::Created
        );
        let (cert_pem, key_pem) = (
            secret(&store, cert).await.unwrap(),
            secret(&store, key).await.unwrap(),
        );
        let loaded = mesh_ca::load_mesh_ca(&store, "m", spec(&m))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded.cert_pem(), cert_pem);

        // Idempotent: nothing changes.
        assert_eq!(
            ensure_mesh_ca(&store, "m", spec(&m)).await.unwrap(),
            Ensured::Exists
        );
        assert_eq!(secret(&store, cert).await.unwrap(), cert_pem);
        assert_eq!(secret(&store, key).await.unwrap(), key_pem);

        // The certificate lost (a writer stopped after the key): completed from the key.
        store
            .delete(
                &ResourceKey::new(ResourceType::Secret, Some("m"), cert),
                None,
            )
            .await
            .unwrap();
        assert_eq!(
            ensure_mesh_ca(&store, "m", spec(&m)).await.unwrap(),
            Ensured::Completed
        );
        assert_eq!(secret(&store, key).await.unwrap(), key_pem);
        assert!(mesh_ca::load_mesh_ca(&store, "m", spec(&m))
            .await
            .unwrap()
            .is_some());

        // The key lost: an error naming it, and the certificate is left alone.
        let cert_now = secret(&store, cert).await.unwrap();
        store
            .delete(
                &ResourceKey::new(ResourceType::Secret, Some("m"), key),
                None,
            )
            .await
            .unwrap();
        let err = ensure_mesh_ca(&store, "m", spec(&m)).await.unwrap_err();
        assert!(err.to_string().contains(key), "{err}");
        assert_eq!(secret(&store, cert).await.unwrap(), cert_now);
    }

    #[tokio::test]
    async fn other_meshes_get_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path().join("store")).unwrap();
        for yaml in [
            "type: Mesh\nname: m\n",
            "type: Mesh\nname: m\nmtls:\n  backends:\n  - name: ca-1\n    type: builtin\n",
            "type: Mesh\nname: m\nmtls:\n  enabledBackend: p\n  backends:\n  - name: p\n    type: provided\n    conf:\n      cert:\n        secret: c\n      key:\n        secret: k\n",
        ] {
            let m = mesh(yaml);
            assert_eq!(
                ensure_mesh_ca(&store, "m", spec(&m)).await.unwrap(),
                Ensured::NotBuiltin,
                "{yaml}"
            );
        }
        let secrets = store
            .list(&ListQuery::all(ResourceType::Secret))
            .await
            .unwrap();
        assert_eq!(secrets.total, 0);
    }

    #[tokio::test]
    async fn a_mesh_deleted_while_its_key_was_made_gets_no_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path().join("store")).unwrap();
        let m = mesh(BUILTIN);
        // Never stored: as if deleted before the key was ready.
        assert_eq!(
            ensure_mesh_ca(&store, "m", spec(&m)).await.unwrap(),
            Ensured::NotBuiltin
        );
        let secrets = store
            .list(&ListQuery::all(ResourceType::Secret))
            .await
            .unwrap();
        assert_eq!(secrets.total, 0);
    }

    #[tokio::test]
    async fn the_loop_creates_cas_for_meshes_present_at_start_and_added_later() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ResourceStore> =
            Arc::new(SledStore::open(dir.path().join("store")).unwrap());
        store.create(mesh(BUILTIN)).await.unwrap();
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(store.clone(), stop_rx));

        let exists = |mesh: &'static str| {
            let store = store.clone();
            move || {
                let store = store.clone();
                async move {
                    let name = cert_secret_name(mesh, "ca-1");
                    read_pem_secret(store.as_ref(), mesh, &name).await.unwrap()
                }
            }
        };
        let deadline = std::time::Duration::from_secs(30);
        test_support::eventually("m's CA", deadline, exists("m"))
            .await
            .unwrap();
        store
            .create(mesh(&BUILTIN.replace("name: m\n", "name: other\n")))
            .await
            .unwrap();
        test_support::eventually("other's CA", deadline, exists("other"))
            .await
            .unwrap();
        stop_tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap()
            .unwrap();
    }
}
