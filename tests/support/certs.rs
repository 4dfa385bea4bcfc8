//! Test certificates made with the `openssl` command: a CA, a server certificate for 127.0.0.1
//! and client certificates with SPIFFE URI SANs (as Istio issues them), for an Envoy listener
//! that requires mTLS. Used through `#[path]` by the test files that need it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of PEM files: `ca.pem`, `server.{pem,key}` and one `NAME.{pem,key}` per client.
pub struct Certs {
    pub dir: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (Debian: apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl Certs {
    /// Makes the CA, the server certificate and a client certificate for each `(name, uri_san)`.
    pub fn make(dir: &Path, clients: &[(&str, &str)]) -> Certs {
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let ca = [
            &["req", "-x509", "-new"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=meshguard test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat();
        openssl(dir, &ca);
        let leaf = |name: &str, serial: &str, ext: &str| {
            let (key, csr, pem, extfile) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
            std::fs::write(dir.join(&extfile), ext).expect("write extensions");
            openssl(
                dir,
                &[&["req", "-new"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]]
                    .concat(),
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-set_serial",
                    serial,
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &extfile,
                ],
            );
        };
        leaf("server", "1", "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        for (i, (name, uri)) in clients.iter().enumerate() {
            let serial = (i + 2).to_string();
            leaf(
                name,
                &serial,
                &format!("basicConstraints=CA:FALSE\nsubjectAltName=URI:{uri}\nextendedKeyUsage=clientAuth\n"),
            );
        }
        Certs { dir: dir.to_path_buf() }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The listener's `transport_socket`: TLS with the server certificate, client certificates
    /// required and checked against the CA. YAML for a filter chain item, indented by `indent`.
    pub fn downstream_tls(&self, indent: &str) -> String {
        let lines = [
            "transport_socket:".to_string(),
            "  name: envoy.transport_sockets.tls".to_string(),
            "  typed_config:".to_string(),
            "    \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
                .to_string(),
            "    require_client_certificate: true".to_string(),
            "    common_tls_context:".to_string(),
            "      tls_certificates:".to_string(),
            format!("        - certificate_chain: {{ filename: \"{}\" }}", self.file("server.pem")),
            format!("          private_key: {{ filename: \"{}\" }}", self.file("server.key")),
            "      validation_context:".to_string(),
            format!("        trusted_ca: {{ filename: \"{}\" }}", self.file("ca.pem")),
        ];
        lines.iter().map(|l| format!("{indent}{l}\n")).collect()
    }
}
