//! Certificate authorities in every key format the field writes, certificates issued from them,
//! and independent checks of the output: x509-parser, and openssl where it is installed.

use std::{path::Path, process::Command, time::Duration};

use kubeconfig_authority_pki::{
    CertificateAuthority, CertificateRequest, Identity, KeyAlgorithm, Verification,
    inspect_certificate, parse_certificates, verify_against,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A self-signed CA made with rcgen from a PKCS#8 key of `alg`; returns (cert PEM, key PEM).
fn rust_ca(
    alg: KeyAlgorithm,
    from: OffsetDateTime,
    until: OffsetDateTime,
    is_ca: bool,
) -> (String, String) {
    let key_pem = alg.generate().unwrap().to_pem();
    let key = KeyPair::from_pem(&key_pem).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("test-ca-{alg}"));
    params.not_before = from;
    params.not_after = until;
    if is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    }
    (params.self_signed(&key).unwrap().pem(), key_pem)
}

fn valid_ca(alg: KeyAlgorithm) -> (String, String) {
    rust_ca(alg, now() - DAY, now() + 365 * DAY, true)
}

fn identity() -> Identity {
    Identity::new("susan", ["developers", "ops", "developers"])
        .unwrap()
        .with_kubeconfig_name("susan")
        .unwrap()
}

fn openssl() -> Option<&'static str> {
    Command::new("openssl")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| "openssl")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Checks an issued certificate with x509-parser and, where present, openssl.
fn check_issued(ca_pem: &str, cert_pem: &str, want: &Identity, dir: &Path) {
    let der = &parse_certificates(cert_pem).unwrap()[0];
    let info = inspect_certificate(der).unwrap();
    assert_eq!(&info.identity, want);
    assert!(!info.is_ca);
    assert!(
        info.serial.len() >= 16,
        "serial {} has at least 64 bits",
        info.serial
    );
    let bundle = parse_certificates(ca_pem).unwrap();
    assert!(matches!(
        verify_against(der, &bundle, now()).unwrap(),
        Verification::Verified { .. }
    ));

    let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && eku.other.is_empty());
    let ku = parsed.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let aki = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => Some(aki),
            _ => None,
        });
    assert!(
        aki.is_some_and(|a| a.key_identifier.is_some()),
        "an authority key identifier"
    );

    if let Some(openssl) = openssl() {
        let ca_file = dir.join("ca.pem");
        let cert_file = dir.join("cert.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        std::fs::write(&cert_file, cert_pem).unwrap();
        let verified = run(Command::new(openssl)
            .args(["verify", "-CAfile"])
            .arg(&ca_file)
            .arg(&cert_file));
        assert!(verified.contains(": OK"), "{verified}");
        let subject = run(Command::new(openssl)
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(&cert_file));
        // RFC 2253 order is the reverse of the encoding: CN first, then the O's last to first.
        let mut expected = vec![format!("CN={}", want.username)];
        expected.extend(want.groups.iter().rev().map(|g| format!("O={g}")));
        assert_eq!(subject.trim(), format!("subject={}", expected.join(",")));
    }
}

#[test]
fn every_ca_algorithm_issues_every_leaf_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    for ca_alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let (ca_pem, ca_key) = valid_ca(ca_alg);
        let ca = CertificateAuthority::from_pem(&ca_pem, &ca_key, now()).unwrap();
        for leaf_alg in KeyAlgorithm::ALL {
            if leaf_alg == KeyAlgorithm::Rsa4096 && ca_alg != KeyAlgorithm::EcdsaP256 {
                continue; // slow to generate; once is enough
            }
            let issued = ca.issue(&identity(), leaf_alg, DAY, now()).unwrap();
            check_issued(&ca_pem, &issued.certificate_pem, &identity(), dir.path());
            // The key belongs to the certificate.
            let key =
                kubeconfig_authority_pki::PrivateKey::from_pem(&issued.private_key_pem).unwrap();
            let der = parse_certificates(&issued.certificate_pem)
                .unwrap()
                .remove(0);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert_eq!(
                cert.public_key().subject_public_key.data.as_ref(),
                key.public_key_raw(),
                "{ca_alg}/{leaf_alg}"
            );
            let hex: String = issued
                .fingerprint
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(
                format!("X509SHA256={hex}"),
                kubeconfig_authority_pki::credential_id(&der),
                "{ca_alg}/{leaf_alg}"
            );
            let ku = cert.key_usage().unwrap().unwrap().value;
            assert_eq!(
                ku.key_encipherment(),
                leaf_alg.is_rsa(),
                "{ca_alg}/{leaf_alg}"
            );
        }
    }
}

#[test]
fn validity_is_clamped_to_the_ca_and_backdated_for_skew() {
    let (ca_pem, ca_key) = rust_ca(KeyAlgorithm::EcdsaP256, now() - DAY, now() + 2 * DAY, true);
    let ca = CertificateAuthority::from_pem(&ca_pem, &ca_key, now()).unwrap();
    let t = now();
    let short = ca
        .issue(&identity(), KeyAlgorithm::EcdsaP256, DAY, t)
        .unwrap();
    assert!(!short.clamped_to_ca);
    assert_eq!(short.not_after.unix_timestamp(), (t + DAY).unix_timestamp());
    assert!(short.not_before < t && short.not_before >= t - Duration::from_secs(600));
    let long = ca
        .issue(&identity(), KeyAlgorithm::EcdsaP256, 30 * DAY, t)
        .unwrap();
    assert!(long.clamped_to_ca);
    let info = inspect_certificate(&parse_certificates(&long.certificate_pem).unwrap()[0]).unwrap();
    assert_eq!(
        info.not_after.unix_timestamp(),
        ca.not_after().unix_timestamp()
    );
    assert_ne!(short.serial, long.serial);
}

#[test]
fn bad_cas_are_refused_with_the_reason() {
    let (ca_pem, ca_key) = valid_ca(KeyAlgorithm::EcdsaP256);
    let (other_pem, _) = valid_ca(KeyAlgorithm::EcdsaP256);
    let err = |c: &str, k: &str| {
        CertificateAuthority::from_pem(c, k, now())
            .unwrap_err()
            .to_string()
    };

    assert!(err(&other_pem, &ca_key).contains("does not match"));
    let (leaf_pem, leaf_key) = rust_ca(KeyAlgorithm::EcdsaP256, now() - DAY, now() + DAY, false);
    assert!(err(&leaf_pem, &leaf_key).contains("not a CA"));
    let (old_pem, old_key) = rust_ca(KeyAlgorithm::EcdsaP256, now() - 3 * DAY, now() - DAY, true);
    assert!(err(&old_pem, &old_key).contains("expired"));
    assert!(
        err(&ca_key, &ca_key).contains("`PRIVATE KEY`"),
        "a key where the certificate should be"
    );
    assert!(
        err(&ca_pem, &ca_pem).contains("`CERTIFICATE`"),
        "a certificate where the key should be"
    );
    assert!(err("not pem", &ca_key).contains("no PEM block"));
    // A bundle with the right certificate second is fine.
    let bundle = format!("{other_pem}{ca_pem}");
    let ca = CertificateAuthority::from_pem(&bundle, &ca_key, now()).unwrap();
    assert_eq!(ca.certificate_pem().trim(), ca_pem.trim());
    // And the errors never contain key material.
    let key_body: String = ca_key.lines().nth(1).unwrap().to_string();
    for e in [
        err(&other_pem, &ca_key),
        err(&leaf_pem, &leaf_key),
        err(&ca_pem, &ca_pem),
    ] {
        assert!(!e.contains(&key_body));
    }
}

#[test]
fn openssl_keys_in_every_format_load() {
    let Some(openssl) = openssl() else {
        eprintln!("openssl is not installed; skipping the openssl-made CAs");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // (key generation arguments, the PEM header we expect it to write)
    let cases: [(&[&str], &str); 6] = [
        (&["genrsa", "-traditional", "2048"], "RSA PRIVATE KEY"),
        (
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            "PRIVATE KEY",
        ),
        (
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout"],
            "EC PRIVATE KEY",
        ),
        (
            &["ecparam", "-name", "secp384r1", "-genkey", "-noout"],
            "EC PRIVATE KEY",
        ),
        (
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ],
            "PRIVATE KEY",
        ),
        (&["genpkey", "-algorithm", "ed25519"], "PRIVATE KEY"),
    ];
    for (i, (args, header)) in cases.iter().enumerate() {
        let key_file = dir.path().join(format!("ca{i}.key"));
        let cert_file = dir.path().join(format!("ca{i}.crt"));
        let key_pem = run(Command::new(openssl).args(*args));
        assert!(
            key_pem.contains(&format!("BEGIN {header}")),
            "{args:?} wrote {key_pem:.40}"
        );
        std::fs::write(&key_file, &key_pem).unwrap();
        // As kubeadm makes its CA: self-signed, CA:TRUE, keyCertSign.
        run(Command::new(openssl)
            .args([
                "req",
                "-x509",
                "-new",
                "-days",
                "30",
                "-subj",
                "/CN=kubernetes",
                "-key",
            ])
            .arg(&key_file)
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,digitalSignature",
                "-out",
            ])
            .arg(&cert_file));
        let ca_pem = std::fs::read_to_string(&cert_file).unwrap();
        let ca = CertificateAuthority::from_pem(&ca_pem, &key_pem, now())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let issued = ca
            .issue(&identity(), KeyAlgorithm::EcdsaP256, DAY, now())
            .unwrap();
        check_issued(&ca_pem, &issued.certificate_pem, &identity(), dir.path());
    }
}

#[test]
fn certificate_requests_are_signed_with_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, ca_key) = valid_ca(KeyAlgorithm::EcdsaP256);
    let ca = CertificateAuthority::from_pem(&ca_pem, &ca_key, now()).unwrap();

    // A request made with rcgen (one O, as rcgen allows).
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "bob");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "qa");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let request = CertificateRequest::from_pem(&csr).unwrap();
    assert_eq!(request.identity, Identity::new("bob", ["qa"]).unwrap());
    let signed = ca.sign_request(&request, DAY, now()).unwrap();
    assert!(signed.private_key_pem.is_empty());
    check_issued(
        &ca_pem,
        &signed.certificate_pem,
        &request.identity,
        dir.path(),
    );

    // A request made by openssl with several O's keeps them all.
    if let Some(openssl) = openssl() {
        let csr = run(Command::new(openssl).args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/O=dev/O=ops/CN=carol",
        ]));
        let request = CertificateRequest::from_pem(&csr).unwrap();
        assert_eq!(
            request.identity,
            Identity::new("carol", ["dev", "ops"]).unwrap()
        );
        let signed = ca.sign_request(&request, DAY, now()).unwrap();
        check_issued(
            &ca_pem,
            &signed.certificate_pem,
            &request.identity,
            dir.path(),
        );
    }

    // A tampered request is refused.
    let mut der = pem::parse(&csr).unwrap().contents().to_vec();
    let n = der.len();
    der[n - 5] ^= 0xff;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    let err = CertificateRequest::from_pem(&tampered)
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate signing request"), "{err}");
}

#[test]
fn verification_names_why_it_failed() {
    let (ca_pem, ca_key) = valid_ca(KeyAlgorithm::EcdsaP256);
    let (other_pem, _) = valid_ca(KeyAlgorithm::EcdsaP256);
    let ca = CertificateAuthority::from_pem(&ca_pem, &ca_key, now()).unwrap();
    let issued = ca
        .issue(&identity(), KeyAlgorithm::EcdsaP256, DAY, now())
        .unwrap();
    let der = &parse_certificates(&issued.certificate_pem).unwrap()[0];
    // Same subject name (test-ca-ecdsa-p256), other key: the signature check fails.
    match verify_against(der, &parse_certificates(&other_pem).unwrap(), now()).unwrap() {
        Verification::NotVerified { reason } => assert!(reason.contains("signature"), "{reason}"),
        v => panic!("{v:?}"),
    }
    let info = inspect_certificate(der).unwrap();
    assert!(info.is_valid_at(now()));
    assert!(!info.is_valid_at(now() + 2 * DAY));
    assert_eq!(info.time_left(now() + 2 * DAY), Duration::ZERO);
}

#[test]
fn a_request_made_with_a_given_key_requests_that_key_and_returns_it() {
    for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let key = algorithm.generate().unwrap();
        let (pem, public) = (key.to_pem(), key.public_key_raw().to_vec());
        let new = CertificateRequest::create_with_key(&identity(), key).unwrap();
        assert_eq!(new.private_key_pem, pem, "{algorithm:?}");
        use x509_parser::prelude::FromDer;
        let der = pem::parse(&new.request_pem).unwrap();
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.contents())
                .unwrap();
        let requested = &request.certification_request_info.subject_pki;
        assert_eq!(
            requested.subject_public_key.data.as_ref(),
            public.as_slice(),
            "{algorithm:?}"
        );
        assert_eq!(
            CertificateRequest::from_pem(&new.request_pem)
                .unwrap()
                .identity,
            identity()
        );
    }
}

#[test]
fn new_requests_carry_every_group_and_verify() {
    for algorithm in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let new = CertificateRequest::create(&identity(), algorithm).unwrap();
        assert!(
            new.request_pem
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        assert!(
            !format!("{new:?}").contains("PRIVATE"),
            "Debug hides the key"
        );
        // Parsing checks the self-signature over the replaced subject.
        let parsed = CertificateRequest::from_pem(&new.request_pem).unwrap();
        assert_eq!(parsed.identity, identity(), "{algorithm:?}");
        if let Some(openssl) = openssl() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("req.pem");
            std::fs::write(&path, &new.request_pem).unwrap();
            // Fails (and `run` panics) when the signature does not verify.
            run(Command::new(openssl)
                .args(["req", "-verify", "-noout", "-in"])
                .arg(&path));
        }
    }
}
