//! `colony certs` makes a CA and node certificates that a standard TLS stack accepts:
//! checked with `openssl` as an operator would, and the keys are private to their owner.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

fn openssl(args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn certs_makes_a_ca_and_node_certificates_with_ip_sans_and_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tls");
    let made = common::colony_command()
        .args(["certs", "--out", out.to_str().unwrap()])
        .args([
            "--node",
            "coordinator:198.18.77.10",
            "--node",
            "backend1:198.18.77.11",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let ca = out.join("ca.pem");
    for (name, ip) in [
        ("coordinator", "198.18.77.10"),
        ("backend1", "198.18.77.11"),
    ] {
        let cert = out.join(format!("{name}.pem"));
        let key = out.join(format!("{name}-key.pem"));
        let verified = openssl(&[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
        ]);
        assert!(verified.contains("OK"), "{verified}");
        let text = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-text"]);
        assert!(text.contains(&format!("IP Address:{ip}")), "{text}");
        assert!(text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        // The key belongs to the certificate.
        let from_cert = openssl(&["x509", "-in", cert.to_str().unwrap(), "-noout", "-pubkey"]);
        let from_key = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"]);
        assert_eq!(from_cert, from_key);
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    let mode = std::fs::metadata(out.join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    // A second run into the same directory would make a CA the nodes do not trust.
    let again = common::colony_command()
        .args([
            "certs",
            "--out",
            out.to_str().unwrap(),
            "--node",
            "x:127.0.0.1",
        ])
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("ca.pem exists"));
}
