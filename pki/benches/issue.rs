//! Issuance throughput: one client certificate (fresh leaf key, signed by the CA) per
//! iteration, for the CA and leaf key types the issue names. The baseline, measured in the same
//! run, is the irreducible work of a P-256 issuance done with ring alone: one key generation
//! and one signature.

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use kubeconfig_authority_pki::{CertificateAuthority, Identity, KeyAlgorithm};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair},
};
use time::OffsetDateTime;

fn ca(alg: KeyAlgorithm) -> CertificateAuthority {
    let key_pem = alg.generate().expect("CA key").to_pem();
    let key = KeyPair::from_pem(&key_pem).expect("CA key pair");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("bench-ca-{alg}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + Duration::from_secs(365 * 24 * 3600);
    let cert = params.self_signed(&key).expect("self-sign");
    CertificateAuthority::from_pem(&cert.pem(), &key_pem, now).expect("load CA")
}

fn issuance(c: &mut Criterion) {
    let identity = Identity::new("susan", ["developers"])
        .unwrap()
        .with_kubeconfig_name("susan")
        .unwrap();
    let day = Duration::from_secs(24 * 3600);
    let mut group = c.benchmark_group("issue");

    let rng = SystemRandom::new();
    let message = [7u8; 600]; // about the size of a client certificate's TBS
    // The CA's key is loaded once; each issuance generates a leaf key and signs once.
    let ca_key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .unwrap()
            .as_ref(),
        &rng,
    )
    .unwrap();
    group.bench_function("baseline: ring P-256 keygen + sign", |b| {
        b.iter(|| {
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            black_box(pkcs8);
            black_box(ca_key.sign(&rng, &message).unwrap());
        })
    });

    for (ca_alg, leaf_alg) in [
        (KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256),
        (KeyAlgorithm::Rsa2048, KeyAlgorithm::EcdsaP256),
        (KeyAlgorithm::Rsa4096, KeyAlgorithm::EcdsaP256),
        (KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519),
        (KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048),
    ] {
        let authority = ca(ca_alg);
        if leaf_alg.is_rsa() {
            // RSA key generation is slow and its time varies widely (prime search).
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(20));
        } else {
            group
                .sample_size(100)
                .measurement_time(Duration::from_secs(5));
        }
        group.bench_function(format!("{ca_alg} CA, {leaf_alg} leaf"), |b| {
            b.iter(|| {
                black_box(
                    authority
                        .issue(&identity, leaf_alg, day, OffsetDateTime::now_utc())
                        .unwrap(),
                )
            })
        });
    }
    group.finish();
}

/// RSA-4096 key generation, what kcp-operator's kubeconfigs use: ours (AWS-LC), the
/// RustCrypto `rsa` crate this project used before, and `openssl genpkey` (a process per key;
/// its start is a millisecond of the second a key takes), in the same run.
fn rsa_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("rsa-4096 keygen");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.bench_function("kubeconfig-authority (aws-lc-rs)", |b| {
        b.iter(|| black_box(KeyAlgorithm::Rsa4096.generate().unwrap()))
    });
    group.bench_function("rsa crate 0.9", |b| {
        b.iter(|| black_box(rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 4096).unwrap()))
    });
    let openssl = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if openssl {
        group.bench_function("openssl genpkey", |b| {
            b.iter(|| {
                let out = std::process::Command::new("openssl")
                    .args([
                        "genpkey",
                        "-algorithm",
                        "RSA",
                        "-pkeyopt",
                        "rsa_keygen_bits:4096",
                    ])
                    .output()
                    .unwrap();
                assert!(out.status.success());
                black_box(out.stdout.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, issuance, rsa_keys);
criterion_main!(benches);
