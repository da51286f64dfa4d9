//! Where a builtin CA lives: two Secrets in its mesh, named as Kuma names them, holding the PEM
//! certificate and key. They are `sync: GlobalToZone`, so KDS brings them to every zone.

use mesh_api::core::mesh::MeshSpec;
use mesh_api::core::secret::SecretSpec;
use mesh_api::{Resource, ResourceKey, ResourceType, Spec};
use mesh_store::ResourceStore;

use crate::{CaError, MeshCa, BUILTIN};

/// `<mesh>.ca-builtin-cert-<backend>`: the CA certificate's Secret.
pub fn cert_secret_name(mesh: &str, backend: &str) -> String {
    format!("{mesh}.ca-builtin-cert-{backend}")
}

/// `<mesh>.ca-builtin-key-<backend>`: the CA key's Secret.
pub fn key_secret_name(mesh: &str, backend: &str) -> String {
    format!("{mesh}.ca-builtin-key-{backend}")
}

impl MeshCa {
    /// The Secret holding this CA's certificate (PEM), in its mesh.
    pub fn cert_secret(&self) -> Resource {
        secret(
            self.mesh(),
            cert_secret_name(self.mesh(), self.backend()),
            self.cert_pem(),
        )
    }

    /// The Secret holding this CA's key (PEM), in its mesh.
    pub fn key_secret(&self) -> Resource {
        secret(
            self.mesh(),
            key_secret_name(self.mesh(), self.backend()),
            self.key_pem(),
        )
    }
}

fn secret(mesh: &str, name: String, pem: &str) -> Resource {
    Resource::new(
        name,
        Some(mesh),
        Spec::Secret(SecretSpec::from_bytes(pem.as_bytes())),
    )
}

/// The text of Secret `name` in `mesh`, `None` when it does not exist; an error naming it when
/// it is not valid base64 or not UTF-8 text.
pub async fn read_pem_secret(
    store: &dyn ResourceStore,
    mesh: &str,
    name: &str,
) -> Result<Option<String>, CaError> {
    let key = ResourceKey::new(ResourceType::Secret, Some(mesh), name);
    let Some(resource) = store.get(&key).await? else {
        return Ok(None);
    };
    let bad = |reason: &str| CaError::BadSecret {
        mesh: mesh.to_owned(),
        name: format!("secret {name:?}"),
        reason: reason.to_owned(),
    };
    let Spec::Secret(spec) = resource.spec else {
        return Err(bad("not a Secret"));
    };
    let bytes = spec
        .bytes()
        .ok_or_else(|| bad("data is not valid base64"))?;
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| bad("data is not PEM text"))
}

/// The builtin CA of mesh `mesh` (whose spec is `spec`), read from its two Secrets. `None` when
/// the mesh has no enabled mTLS backend or it is not `builtin` (a `provided` CA is not loaded
/// here). An error naming the Secret when one is missing (e.g. not synced to this zone yet),
/// undecodable, not a CA, or when the key is not the certificate's.
pub async fn load_mesh_ca(
    store: &dyn ResourceStore,
    mesh: &str,
    spec: &MeshSpec,
) -> Result<Option<MeshCa>, CaError> {
    let Some(backend) = spec.enabled_mtls_backend() else {
        return Ok(None);
    };
    if backend.backend_type != BUILTIN {
        return Ok(None);
    }
    let cert_name = cert_secret_name(mesh, &backend.name);
    let key_name = key_secret_name(mesh, &backend.name);
    let missing = |name: &str| CaError::MissingSecret {
        mesh: mesh.to_owned(),
        name: name.to_owned(),
    };
    let cert_pem = read_pem_secret(store, mesh, &cert_name)
        .await?
        .ok_or_else(|| missing(&cert_name))?;
    let key_pem = read_pem_secret(store, mesh, &key_name)
        .await?
        .ok_or_else(|| missing(&key_name))?;
    MeshCa::from_named_pem(
        mesh,
        &backend.name,
        (&format!("secret {cert_name:?}"), &cert_pem),
        (&format!("secret {key_name:?}"), &key_pem),
    )
    .map(Some)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mesh_api::core::mesh::{CaBackend, Mtls};
    use mesh_store::SledStore;
    use serde_json::json;

    use super::*;
    use crate::test_util::{builtin, shared_ca, shared_ca_time, verify};
    use crate::WorkloadIdentity;

    fn mesh_with(backend: CaBackend) -> MeshSpec {
        MeshSpec {
            mtls: Some(Mtls {
                enabled_backend: backend.name.clone(),
                backends: vec![backend],
                skip_validation: false,
            }),
            ..MeshSpec::default()
        }
    }

    #[test]
    fn secrets_are_named_as_kuma_names_them() {
        let ca = shared_ca();
        let cert = ca.cert_secret();
        assert_eq!(cert.meta.name, "demo.ca-builtin-cert-ca-1");
        assert_eq!(cert.meta.mesh.as_deref(), Some("demo"));
        let key = ca.key_secret();
        assert_eq!(key.meta.name, "demo.ca-builtin-key-ca-1");
        let Spec::Secret(spec) = &key.spec else {
            panic!("not a Secret")
        };
        assert_eq!(spec.bytes().unwrap(), ca.key_pem().as_bytes());
        assert!(cert.validate().is_ok() && key.validate().is_ok());
    }

    #[tokio::test]
    async fn load_mesh_ca_reads_the_two_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path().join("store")).unwrap();
        let ca = shared_ca();
        let mesh = mesh_with(builtin(json!({})));

        // No mTLS, or a provided CA: nothing to load.
        assert!(load_mesh_ca(&store, "demo", &MeshSpec::default())
            .await
            .unwrap()
            .is_none());
        let provided = CaBackend {
            backend_type: "provided".into(),
            ..builtin(json!({}))
        };
        assert!(load_mesh_ca(&store, "demo", &mesh_with(provided))
            .await
            .unwrap()
            .is_none());

        // Builtin but not there (yet): the error names the missing secret.
        let err = load_mesh_ca(&store, "demo", &mesh).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "mesh \"demo\": the CA secret \"demo.ca-builtin-cert-ca-1\" does not exist"
        );
        store.create(ca.cert_secret()).await.unwrap();
        let err = load_mesh_ca(&store, "demo", &mesh).await.unwrap_err();
        assert!(
            matches!(&err, CaError::MissingSecret { name, .. } if name == "demo.ca-builtin-key-ca-1"),
            "{err:?}"
        );
        store.create(ca.key_secret()).await.unwrap();
        let loaded = load_mesh_ca(&store, "demo", &mesh).await.unwrap().unwrap();
        let identity = WorkloadIdentity {
            services: vec!["web".into()],
            ..WorkloadIdentity::default()
        };
        let cert = loaded
            .issue(&identity, Duration::from_secs(60), shared_ca_time())
            .unwrap();
        verify(&cert.cert_chain_pem, ca.cert_pem(), shared_ca_time()).unwrap();

        // A damaged secret is named.
        let mut key = store.get(&ca.key_secret().key()).await.unwrap().unwrap();
        key.spec = Spec::Secret(SecretSpec::from_bytes(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ));
        store.update(key).await.unwrap();
        let err = load_mesh_ca(&store, "demo", &mesh).await.unwrap_err();
        assert!(
            err.to_string().starts_with(
                "mesh \"demo\": secret \"demo.ca-builtin-key-ca-1\": unusable PKCS#8 key"
            ),
            "{err}"
        );
    }
}
