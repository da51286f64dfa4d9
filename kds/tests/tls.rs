//! KDS TLS end to end: a real tonic server with the generated certificate, a client trusting the
//! generated CA (succeeds) and clients trusting another CA or expecting another name (fail).

mod auth_tls_support;

use std::time::Duration;

use auth_tls_support::{call_echo, serve_echo};
use kds::tls::{client_tls_config, load_ca_file, KdsServerTls};
use tonic::transport::Endpoint;

async fn connect(
    addr: std::net::SocketAddr,
    ca_pem: &[u8],
    server_name: &str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .tls_config(client_tls_config(ca_pem, server_name))
        .unwrap()
        .connect()
        .await
}

#[tokio::test]
async fn client_trusting_the_ca_connects_and_others_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let tls = KdsServerTls::load_or_generate(&dir.path().join("global"), &[]).unwrap();
    let (addr, shutdown) = serve_echo(Some(tls.server_tls_config()), None).await;

    // Trusting the generated CA, read back from its file as a zone would.
    let ca = load_ca_file(tls.ca_path().unwrap()).unwrap();
    for name in ["localhost", "127.0.0.1"] {
        let channel = connect(addr, &ca, name).await.unwrap();
        let reply = call_echo(channel, "hello", None).await.unwrap();
        assert_eq!(reply, "echo hello");
    }

    // Trusting another global's CA.
    let other = KdsServerTls::load_or_generate(&dir.path().join("other"), &[]).unwrap();
    let other_ca = other.ca_pem().unwrap().as_bytes().to_vec();
    let refused = match connect(addr, &other_ca, "localhost").await {
        Err(e) => {
            // Refused by certificate verification, not by anything else.
            assert!(format!("{e:?}").contains("InvalidCertificate"), "{e:?}");
            true
        }
        Ok(channel) => call_echo(channel, "hello", None).await.is_err(),
    };
    assert!(refused, "a client trusting another CA must not get through");

    // Right CA, name the certificate does not cover.
    let refused = match connect(addr, &ca, "not-the-global.example").await {
        Err(e) => {
            // Refused by certificate verification, not by anything else.
            assert!(format!("{e:?}").contains("InvalidCertificate"), "{e:?}");
            true
        }
        Ok(channel) => call_echo(channel, "hello", None).await.is_err(),
    };
    assert!(
        refused,
        "a client expecting another name must not get through"
    );

    let _ = shutdown.send(());
}

#[tokio::test]
async fn certificate_given_by_flags_is_served() {
    let dir = tempfile::tempdir().unwrap();
    // Material from elsewhere (here: generated in another directory), passed as files.
    let generated = KdsServerTls::load_or_generate(dir.path(), &["global.example".into()]).unwrap();
    let tls = KdsServerTls::from_files(
        &dir.path().join(kds::tls::SERVER_CERT_FILE),
        &dir.path().join(kds::tls::SERVER_KEY_FILE),
    )
    .unwrap();
    let (addr, shutdown) = serve_echo(Some(tls.server_tls_config()), None).await;
    let ca = generated.ca_pem().unwrap().as_bytes().to_vec();
    let channel = connect(addr, &ca, "global.example").await.unwrap();
    assert_eq!(
        call_echo(channel, "x", None).await.unwrap(),
        "echo x".to_string()
    );
    let _ = shutdown.send(());
}
