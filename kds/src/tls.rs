//! TLS for KDS. The global serves KDS over TLS with either a certificate given by flags
//! ([`KdsServerTls::from_files`]) or one it generates at first start
//! ([`KdsServerTls::load_or_generate`]): a self-signed CA and a server certificate signed by it,
//! kept in a directory it owns (`ca.crt`, `ca.key`, `server.crt`, `server.key`; keys mode 0600)
//! and reused on later starts. Zones verify the global against a CA file
//! ([`load_ca_file`], [`client_tls_config`]): with a generated certificate that file is the
//! global's `ca.crt`. The server certificate is reissued by the same CA when a start asks for a
//! name it does not cover or when it is within [`RENEW_BEFORE_DAYS`] of expiry, so zones keep
//! trusting it.

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{Datelike as _, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::client::danger::ServerCertVerifier as _;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// File name of the generated CA certificate (the file zones are given).
pub const CA_CERT_FILE: &str = "ca.crt";
/// File name of the generated CA's private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the server certificate.
pub const SERVER_CERT_FILE: &str = "server.crt";
/// File name of the server's private key.
pub const SERVER_KEY_FILE: &str = "server.key";
/// A generated server certificate is reissued at start when it expires within this many days.
pub const RENEW_BEFORE_DAYS: u64 = 90;

/// Common name of the generated CA. Fixed: reissuing a server certificate relies on it.
const CA_COMMON_NAME: &str = "Meridian KDS CA";
const CA_VALIDITY_YEARS: i32 = 20;
const SERVER_VALIDITY_YEARS: i32 = 5;

/// Why TLS material could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading, writing or creating a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file does not hold what it should.
    #[error("{path}: {reason}")]
    InvalidPem { path: PathBuf, reason: String },
    /// Some generated files are present and others missing: refusing to guess.
    #[error("incomplete KDS TLS directory {dir}: {missing} is missing (remove the directory to generate new material, which zones will then need as their CA)")]
    Incomplete { dir: PathBuf, missing: &'static str },
    /// The existing server certificate no longer fits and there is no CA key to reissue it.
    #[error("{path} cannot be used ({reason}) and {ca_key} is absent, so it cannot be reissued")]
    CannotReissue {
        path: PathBuf,
        reason: String,
        ca_key: PathBuf,
    },
    /// A host name cannot go into a certificate.
    #[error("invalid KDS server name {0:?}")]
    InvalidHostname(String),
    /// Certificate generation failed.
    #[error("generating KDS certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TlsError + 'a {
    move |source| TlsError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The global's KDS server identity: certificate chain and key (PEM), and where generated, the CA
/// zones must trust.
#[derive(Clone)]
pub struct KdsServerTls {
    cert_pem: String,
    key_pem: String,
    ca: Option<(PathBuf, String)>,
}

impl std::fmt::Debug for KdsServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("KdsServerTls")
            .field("ca_path", &self.ca_path())
            .finish_non_exhaustive()
    }
}

impl KdsServerTls {
    /// Uses a certificate (chain) and key given by flags. Both files must parse as PEM.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read_string(cert, "read KDS certificate")?;
        certs_from_pem(cert, cert_pem.as_bytes())?;
        let key_pem = read_string(key, "read KDS private key")?;
        parse_private_key(key, key_pem.as_bytes())?;
        Ok(KdsServerTls {
            cert_pem,
            key_pem,
            ca: None,
        })
    }

    /// Loads the generated material from `dir`, generating it on first start: a CA and a server
    /// certificate for `hostnames` plus [`default_hostnames`] (DNS names or IP addresses). On
    /// later starts the server certificate is reissued by the same CA if it does not cover every
    /// requested name or expires within [`RENEW_BEFORE_DAYS`] days.
    pub fn load_or_generate(dir: &Path, hostnames: &[String]) -> Result<Self, TlsError> {
        let names = server_names(hostnames)?;
        // What an existing certificate must cover: everything but this machine's own hostname.
        // Nodes of a Raft global share one KDS directory, and each has its own hostname (a
        // container's is its id): requiring it made every node reissue the shared certificate
        // at start, racing each other's writes. Zones dial the names given with
        // `--kds-hostname`; the machine's name is only added when a certificate is issued.
        let machine = machine_hostname().filter(|host| {
            !hostnames
                .iter()
                .any(|h| h.trim().eq_ignore_ascii_case(host))
        });
        let required: Vec<String> = names
            .iter()
            .filter(|name| Some(*name) != machine.as_ref())
            .cloned()
            .collect();
        create_private_dir(dir)?;
        let ca_cert_path = dir.join(CA_CERT_FILE);
        let ca_key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(SERVER_CERT_FILE);
        let key_path = dir.join(SERVER_KEY_FILE);

        if !ca_cert_path.exists() {
            if [&ca_key_path, &cert_path, &key_path]
                .iter()
                .any(|path| path.exists())
            {
                return Err(TlsError::Incomplete {
                    dir: dir.to_path_buf(),
                    missing: CA_CERT_FILE,
                });
            }
            let ca_key = KeyPair::generate()?;
            let ca_cert = ca_params()?.self_signed(&ca_key)?;
            write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), true)?;
            write_file(&ca_cert_path, ca_cert.pem().as_bytes(), false)?;
            let (cert_pem, key_pem) = issue_server(&ca_key, &names)?;
            write_file(&key_path, key_pem.as_bytes(), true)?;
            write_file(&cert_path, cert_pem.as_bytes(), false)?;
            tracing::info!(dir = %dir.display(), names = ?names, "generated KDS CA and server certificate");
            return Ok(KdsServerTls {
                cert_pem,
                key_pem,
                ca: Some((ca_cert_path, ca_cert.pem())),
            });
        }

        let ca_pem = read_string(&ca_cert_path, "read KDS CA certificate")?;
        let ca_certs = certs_from_pem(&ca_cert_path, ca_pem.as_bytes())?;
        let existing = if cert_path.exists() && key_path.exists() {
            let cert_pem = read_string(&cert_path, "read KDS certificate")?;
            let key_pem = read_string(&key_path, "read KDS private key")?;
            let certs = certs_from_pem(&cert_path, cert_pem.as_bytes())?;
            parse_private_key(&key_path, key_pem.as_bytes())?;
            let renew_at = SystemTime::now() + Duration::from_secs(RENEW_BEFORE_DAYS * 86_400);
            match check_covers(&ca_certs, &certs, &required, renew_at) {
                Ok(()) => {
                    return Ok(KdsServerTls {
                        cert_pem,
                        key_pem,
                        ca: Some((ca_cert_path, ca_pem)),
                    })
                }
                Err(reason) => Some(reason),
            }
        } else {
            None
        };

        // Server certificate missing or unfit: reissue it with the CA key.
        if !ca_key_path.exists() {
            return Err(TlsError::CannotReissue {
                path: cert_path,
                reason: existing.unwrap_or_else(|| "server certificate or key missing".into()),
                ca_key: ca_key_path,
            });
        }
        let ca_key_pem = read_string(&ca_key_path, "read KDS CA key")?;
        let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::InvalidPem {
            path: ca_key_path.clone(),
            reason: format!("not a usable private key: {e}"),
        })?;
        let (cert_pem, key_pem) = issue_server(&ca_key, &names)?;
        // Check before installing: a CA key that does not match ca.crt must not replace a
        // working certificate with one nobody trusts.
        let new_certs = certs_from_pem(&cert_path, cert_pem.as_bytes())?;
        if let Err(reason) = check_covers(&ca_certs, &new_certs, &names, SystemTime::now()) {
            return Err(TlsError::InvalidPem {
                path: ca_key_path,
                reason: format!("does not match {CA_CERT_FILE}: {reason}"),
            });
        }
        write_file(&key_path, key_pem.as_bytes(), true)?;
        write_file(&cert_path, cert_pem.as_bytes(), false)?;
        tracing::info!(
            path = %cert_path.display(),
            reason = existing.as_deref().unwrap_or("missing"),
            names = ?names,
            "reissued KDS server certificate"
        );
        Ok(KdsServerTls {
            cert_pem,
            key_pem,
            ca: Some((ca_cert_path, ca_pem)),
        })
    }

    /// TLS configuration for tonic's `Server::builder().tls_config(..)`.
    pub fn server_tls_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// The server certificate chain, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Path of the CA certificate zones must trust, when generated (`None` with
    /// [`from_files`](Self::from_files): the operator knows their CA).
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca.as_ref().map(|(path, _)| path.as_path())
    }

    /// The generated CA certificate, PEM (same content as [`ca_path`](Self::ca_path)).
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca.as_ref().map(|(_, pem)| pem.as_str())
    }
}

/// Client TLS configuration for a zone dialling the global: trust only `ca_pem` and expect the
/// server certificate to be valid for `server_name` (DNS name or IP address).
pub fn client_tls_config(ca_pem: &[u8], server_name: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(server_name)
}

/// Reads a CA file (PEM, one or more certificates) for [`client_tls_config`]; errors name the
/// path.
pub fn load_ca_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let pem = std::fs::read(path).map_err(io_err("read KDS CA file", path))?;
    certs_from_pem(path, &pem)?;
    Ok(pem)
}

/// Names the generated server certificate always covers: `localhost`, `127.0.0.1`, `::1` and
/// the machine's host name when it can be read.
pub fn default_hostnames() -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(host) = machine_hostname() {
        names.push(host);
    }
    names
}

fn machine_hostname() -> Option<String> {
    let from_file = |p: &str| std::fs::read_to_string(p).ok();
    let host = from_file("/proc/sys/kernel/hostname")
        .or_else(|| from_file("/etc/hostname"))
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let host = host.trim().to_ascii_lowercase();
    is_dns_name(&host).then_some(host)
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Requested names plus the defaults, deduplicated, each a DNS name (a leading `*.` allowed) or
/// an IP address.
fn server_names(requested: &[String]) -> Result<Vec<String>, TlsError> {
    let mut names: Vec<String> = Vec::new();
    for name in requested.iter().cloned().chain(default_hostnames()) {
        let name = name.trim().to_ascii_lowercase();
        let valid =
            name.parse::<IpAddr>().is_ok() || is_dns_name(name.strip_prefix("*.").unwrap_or(&name));
        if !valid {
            return Err(TlsError::InvalidHostname(name));
        }
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Parameters of the generated CA. Reissuing relies on them being the same every time (the
/// subject names the issuer in server certificates).
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, "Meridian");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY_YEARS);
    Ok(params)
}

/// A fresh key and a server certificate for `names`, signed by the CA; PEM (cert, key).
fn issue_server(ca_key: &KeyPair, names: &[String]) -> Result<(String, String), TlsError> {
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Meridian KDS server");
    dn.push(DnType::OrganizationName, "Meridian");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, SERVER_VALIDITY_YEARS);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Valid from yesterday (clock skew) for `years` years, with a random serial number.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let start = Utc::now() - chrono::Duration::days(1);
    // Day 28 exists in every month, so both dates are valid.
    let day = start.day().min(28) as u8;
    let month = start.month() as u8;
    params.not_before = rcgen::date_time_ymd(start.year(), month, day);
    params.not_after = rcgen::date_time_ymd(start.year() + years, month, day);
    let mut serial = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut serial);
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

/// Whether `chain` verifies against `ca` for every name in `names` at `at`; why not otherwise.
fn check_covers(
    ca: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    names: &[String],
    at: SystemTime,
) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| format!("CA certificate unusable: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("CA certificate unusable: {e}"))?;
    let (end_entity, intermediates) = chain
        .split_first()
        .ok_or_else(|| "no certificate".to_string())?;
    let at = UnixTime::since_unix_epoch(
        at.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default(),
    );
    for name in names {
        // A wildcard entry is checked through a name it matches.
        let probe = match name.strip_prefix("*.") {
            Some(rest) => format!("wildcard-probe.{rest}"),
            None => name.clone(),
        };
        let server_name =
            ServerName::try_from(probe).map_err(|_| format!("invalid server name {name:?}"))?;
        verifier
            .verify_server_cert(end_entity, intermediates, &server_name, &[], at)
            .map_err(|e| format!("not valid for {name} (or expiring soon): {e}"))?;
    }
    Ok(())
}

fn read_string(path: &Path, action: &'static str) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(io_err(action, path))
}

fn certs_from_pem(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::InvalidPem {
            path: path.to_path_buf(),
            reason: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::InvalidPem {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

fn parse_private_key(path: &Path, pem: &[u8]) -> Result<(), TlsError> {
    match rustls_pemfile::private_key(&mut &pem[..]) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(TlsError::InvalidPem {
            path: path.to_path_buf(),
            reason: "no PRIVATE KEY block found".into(),
        }),
        Err(e) => Err(TlsError::InvalidPem {
            path: path.to_path_buf(),
            reason: format!("not valid PEM: {e}"),
        }),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .map_err(io_err("create KDS TLS directory", dir))
}

/// Writes `contents` atomically (temporary file, fsync, rename); `private` files get mode 0600.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // One per write: nodes (or threads) sharing a directory must not rename each other's
    // half-written file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = path.with_file_name(format!(
        ".{file_name}.{}.{}.tmp",
        std::process::id(),
        WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(if private { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err("install", path))?;
    if let Some(parent) = path.parent() {
        #[cfg(unix)]
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", parent))?;
        #[cfg(not(unix))]
        let _ = parent;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_then_reloads_the_same_material() {
        let dir = tempfile::tempdir().unwrap();
        let tls_dir = dir.path().join("kds-tls");
        let first = KdsServerTls::load_or_generate(&tls_dir, &["global.example".into()]).unwrap();
        let second = KdsServerTls::load_or_generate(&tls_dir, &["global.example".into()]).unwrap();
        assert_eq!(first.cert_pem(), second.cert_pem());
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(first.ca_path(), Some(tls_dir.join(CA_CERT_FILE).as_path()));
        let ca = certs_from_pem(Path::new("ca"), first.ca_pem().unwrap().as_bytes()).unwrap();
        let chain = certs_from_pem(Path::new("cert"), first.cert_pem().as_bytes()).unwrap();
        let names = server_names(&["global.example".into()]).unwrap();
        assert!(names.contains(&"localhost".to_string()));
        assert!(names.contains(&"127.0.0.1".to_string()));
        check_covers(&ca, &chain, &names, SystemTime::now()).unwrap();
        assert!(check_covers(&ca, &chain, &["other.example".into()], SystemTime::now()).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |f: &str| {
                std::fs::metadata(tls_dir.join(f))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(mode(SERVER_KEY_FILE), 0o600);
            assert_eq!(mode(CA_KEY_FILE), 0o600);
        }
        assert!(!format!("{first:?}").contains("PRIVATE"));
    }

    #[test]
    fn reissues_for_a_new_name_with_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = KdsServerTls::load_or_generate(dir.path(), &[]).unwrap();
        let second = KdsServerTls::load_or_generate(dir.path(), &["10.1.2.3".into()]).unwrap();
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_ne!(first.cert_pem(), second.cert_pem());
        let ca = certs_from_pem(Path::new("ca"), second.ca_pem().unwrap().as_bytes()).unwrap();
        let chain = certs_from_pem(Path::new("cert"), second.cert_pem().as_bytes()).unwrap();
        check_covers(&ca, &chain, &["10.1.2.3".into()], SystemTime::now()).unwrap();
        // Without the CA key it cannot be reissued: a clear error.
        std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = KdsServerTls::load_or_generate(dir.path(), &["10.9.9.9".into()]).unwrap_err();
        assert!(matches!(err, TlsError::CannotReissue { .. }), "{err}");
        // A name already covered still loads.
        KdsServerTls::load_or_generate(dir.path(), &["10.1.2.3".into()]).unwrap();
    }

    #[test]
    fn a_shared_directory_is_not_reissued_for_this_machine_and_concurrent_starts_are_safe() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = ["global-1".to_string(), "global-2".into(), "global-3".into()];
        let first = KdsServerTls::load_or_generate(dir.path(), &nodes).unwrap();
        // A certificate issued elsewhere (another node or `meshctl generate compose`): it covers
        // the requested names but not this machine's hostname. It is used as it is.
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap())
                .unwrap();
        let names: Vec<String> = nodes
            .iter()
            .cloned()
            .chain(["localhost".into(), "127.0.0.1".into(), "::1".into()])
            .collect();
        let (cert_pem, key_pem) = issue_server(&ca_key, &names).unwrap();
        write_file(&dir.path().join(SERVER_KEY_FILE), key_pem.as_bytes(), true).unwrap();
        write_file(
            &dir.path().join(SERVER_CERT_FILE),
            cert_pem.as_bytes(),
            false,
        )
        .unwrap();
        let loaded = KdsServerTls::load_or_generate(dir.path(), &nodes).unwrap();
        assert_eq!(loaded.cert_pem(), cert_pem);
        assert_eq!(loaded.ca_pem(), first.ca_pem());
        // Three nodes starting at once, all reissuing for a new name: none fails.
        let starts: Vec<_> = (0..3)
            .map(|_| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || {
                    KdsServerTls::load_or_generate(&dir, &["kds.example.com".into()])
                })
            })
            .collect();
        for start in starts {
            start.join().unwrap().unwrap();
        }
    }

    #[test]
    fn incomplete_directory_and_bad_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        KdsServerTls::load_or_generate(dir.path(), &[]).unwrap();
        std::fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let err = KdsServerTls::load_or_generate(dir.path(), &[]).unwrap_err();
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");

        let other = tempfile::tempdir().unwrap();
        for bad in ["bad name", "-x.example", "a..b"] {
            assert!(matches!(
                KdsServerTls::load_or_generate(other.path(), &[bad.into()]),
                Err(TlsError::InvalidHostname(_))
            ));
        }
    }

    #[test]
    fn file_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.crt");
        let err = load_ca_file(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.crt"), "{err}");
        let garbage = dir.path().join("garbage.crt");
        std::fs::write(&garbage, "hello").unwrap();
        let err = load_ca_file(&garbage).unwrap_err();
        assert!(err.to_string().contains("garbage.crt"), "{err}");

        let generated = KdsServerTls::load_or_generate(&dir.path().join("tls"), &[]).unwrap();
        let pem = load_ca_file(generated.ca_path().unwrap()).unwrap();
        assert_eq!(pem, generated.ca_pem().unwrap().as_bytes());
        let err = KdsServerTls::from_files(&garbage, &dir.path().join("tls").join(SERVER_KEY_FILE))
            .unwrap_err();
        assert!(err.to_string().contains("garbage.crt"), "{err}");
        let from_files = KdsServerTls::from_files(
            &dir.path().join("tls").join(SERVER_CERT_FILE),
            &dir.path().join("tls").join(SERVER_KEY_FILE),
        )
        .unwrap();
        assert_eq!(from_files.cert_pem(), generated.cert_pem());
        assert!(from_files.ca_path().is_none());
    }
}
