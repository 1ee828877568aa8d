//! RSA keys generated ahead: a prime search takes about a second per 4096-bit key, so a
//! bounded pool per RSA size keeps [`READY`] keys waiting, filled by one background thread per
//! size once that size is first asked for. A key is taken out of the pool (it serves one
//! certificate and is never handed out twice); an empty pool generates in place. Elliptic-curve
//! and Ed25519 keys take microseconds and are never pooled.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kubeconfig_authority_pki::{KeyAlgorithm, PrivateKey};

/// How many keys of each RSA size wait at most (a 4096-bit key is about 3 KiB).
pub const READY: usize = 4;

#[derive(Default)]
struct Size {
    keys: Vec<PrivateKey>,
    /// A thread is filling it.
    filling: bool,
}

#[derive(Default)]
pub struct KeyPool {
    sizes: Mutex<HashMap<KeyAlgorithm, Size>>,
}

impl KeyPool {
    /// A fresh key of `algorithm`: one from the pool when it holds one, else generated now.
    /// Either way the pool of that size is filled again in the background.
    pub fn take(
        self: &Arc<Self>,
        algorithm: KeyAlgorithm,
    ) -> kubeconfig_authority_pki::Result<PrivateKey> {
        if !algorithm.is_rsa() {
            return algorithm.generate();
        }
        let (pooled, start) = match self.sizes.lock() {
            Ok(mut sizes) => {
                let size = sizes.entry(algorithm).or_default();
                let pooled = size.keys.pop();
                let start = !size.filling;
                size.filling = true;
                (pooled, start)
            }
            Err(_) => (None, false),
        };
        if start {
            let pool = self.clone();
            std::thread::spawn(move || pool.fill(algorithm));
        }
        match pooled {
            Some(key) => Ok(key),
            None => algorithm.generate(),
        }
    }

    /// Generates keys of one size until [`READY`] wait, then stops.
    fn fill(&self, algorithm: KeyAlgorithm) {
        loop {
            let full = self
                .sizes
                .lock()
                .map(|mut sizes| {
                    let size = sizes.entry(algorithm).or_default();
                    let full = size.keys.len() >= READY;
                    if full {
                        size.filling = false;
                    }
                    full
                })
                .unwrap_or(true);
            if full {
                return;
            }
            let Ok(key) = algorithm.generate() else {
                if let Ok(mut sizes) = self.sizes.lock() {
                    sizes.entry(algorithm).or_default().filling = false;
                }
                return;
            };
            if let Ok(mut sizes) = self.sizes.lock() {
                sizes.entry(algorithm).or_default().keys.push(key);
            }
        }
    }

    /// How many keys of `algorithm` wait now.
    pub fn ready(&self, algorithm: KeyAlgorithm) -> usize {
        self.sizes
            .lock()
            .map(|sizes| sizes.get(&algorithm).map_or(0, |s| s.keys.len()))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn pooled_keys_are_fresh_bounded_and_never_handed_out_twice() {
        let pool = Arc::new(KeyPool::default());
        // Not RSA: generated in place, nothing pooled.
        pool.take(KeyAlgorithm::EcdsaP256).unwrap();
        assert_eq!(pool.ready(KeyAlgorithm::EcdsaP256), 0);
        // RSA: the first take starts the filling, which stops at READY.
        let mut seen = std::collections::HashSet::new();
        seen.insert(pool.take(KeyAlgorithm::Rsa2048).unwrap().to_pem());
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.ready(KeyAlgorithm::Rsa2048) < READY {
            assert!(Instant::now() < deadline, "the pool did not fill");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(pool.ready(KeyAlgorithm::Rsa2048), READY, "bounded");
        // Taking drains it (and refills it); every key is a different one.
        for _ in 0..READY * 2 {
            assert!(seen.insert(pool.take(KeyAlgorithm::Rsa2048).unwrap().to_pem()));
        }
        assert!(pool.ready(KeyAlgorithm::Rsa2048) <= READY);
    }
}
