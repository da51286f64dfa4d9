//! Reading the SNI name from a TLS ClientHello (Envoy's tls_inspector). The bytes read are
//! handed back with the stream ([`super::Prefixed`]), so the connection still starts with the
//! untouched ClientHello, whether it is then terminated or passed through.

use tokio::io::{AsyncRead, AsyncReadExt};

/// What the first bytes of a connection say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A TLS ClientHello, with its SNI name if it has one.
    Tls { sni: Option<String> },
    /// Not TLS.
    NotTls,
}

enum Parse {
    Done(Hello),
    NeedMore,
}

/// A TLS record carries at most 16 KiB; a ClientHello larger than this is refused as not TLS.
const MAX_HELLO: usize = 5 + 16 * 1024;

/// Reads until the ClientHello's first record is complete (or the bytes are clearly not TLS).
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Hello> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Parse::Done(hello) = parse(buf) {
            return Ok(hello);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Hello::NotTls);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse(buf: &[u8]) -> Parse {
    if buf.is_empty() {
        return Parse::NeedMore;
    }
    if buf[0] != 0x16 {
        return Parse::Done(Hello::NotTls);
    }
    if buf.len() < 5 {
        return Parse::NeedMore;
    }
    let record_len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if buf[1] != 3 || 5 + record_len > MAX_HELLO {
        return Parse::Done(Hello::NotTls);
    }
    if buf.len() < 5 + record_len {
        return Parse::NeedMore;
    }
    Parse::Done(Hello::Tls {
        sni: sni_of(&buf[5..5 + record_len]),
    })
}

/// A cursor over a byte slice that fails (`None`) instead of panicking on short input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}

/// The host_name of the server_name extension of a handshake message holding a ClientHello.
fn sni_of(handshake: &[u8]) -> Option<String> {
    let mut r = Reader(handshake);
    if r.u8()? != 1 {
        return None;
    }
    let len = r.u24()?;
    // A ClientHello split over several records is cut short here: the SNI is nearly always in
    // the first one; read what there is.
    let body = r.take(len.min(r.0.len()))?;
    let mut r = Reader(body);
    r.take(2 + 32)?; // version, random
    let session = r.u8()?;
    r.take(session)?;
    let suites = r.u16()?;
    r.take(suites)?;
    let compression = r.u8()?;
    r.take(compression)?;
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len.min(r.0.len()))?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if kind == 0 {
            let mut names = Reader(data);
            let list_len = names.u16()?;
            let mut list = Reader(names.take(list_len)?);
            while !list.0.is_empty() {
                let name_type = list.u8()?;
                let name_len = list.u16()?;
                let name = list.take(name_len)?;
                if name_type == 0 {
                    return std::str::from_utf8(name)
                        .ok()
                        .map(|s| s.to_ascii_lowercase());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello from rustls for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(std::iter::empty());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(config), name.to_string().try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn reads_the_sni_of_a_client_hello_arriving_in_pieces() {
        let hello = client_hello("api.0.zone-1.default.mesh");
        let (mut client, mut server) = tokio::io::duplex(64);
        let sent = hello.clone();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in sent.chunks(7) {
                client.write_all(piece).await.unwrap();
            }
            client
        });
        let mut buf = Vec::new();
        let got = read_client_hello(&mut server, &mut buf).await.unwrap();
        assert_eq!(
            got,
            Hello::Tls {
                sni: Some("api.0.zone-1.default.mesh".into())
            }
        );
        assert!(
            hello.starts_with(&buf) || buf.starts_with(&hello),
            "the bytes read are kept"
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn plaintext_is_not_tls() {
        let mut input: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        let mut buf = Vec::new();
        assert_eq!(
            read_client_hello(&mut input, &mut buf).await.unwrap(),
            Hello::NotTls
        );
        assert_eq!(buf, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn truncated_hellos_never_panic() {
        let hello = client_hello("web");
        for cut in 0..hello.len() {
            let _ = sni_of(&hello[5..cut.max(5)]);
        }
    }
}
