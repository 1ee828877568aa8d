//! RSA keys generated ahead: a prime search takes about a second per 4096-bit key, so a
//! bounded pool per RSA size keeps [`READY`] keys waiting, filled by one background thread per
//! size once that size is first asked for. A key is taken out of the pool (it serves one
//! certificate and is never handed out twice); an empty pool generates in place. Elliptic-curve
//! and Ed25519 keys take microseconds and are never pooled.

use std::{
    collections::HashMap,
    num::NonZero,
    sync::{Arc, Mutex},
};

use kubeconfig_authority_pki::{Error, KeyAlgorithm, PrivateKey};
use tokio::sync::{Semaphore, oneshot};

/// How many keys of each RSA size wait at most (a 4096-bit key is about 3 KiB).
pub const READY: usize = 4;

#[derive(Default)]
struct Size {
    keys: Vec<PrivateKey>,
    /// A thread is filling it.
    filling: bool,
}

pub struct KeyPool {
    sizes: Mutex<HashMap<KeyAlgorithm, Size>>,
    /// RSA keys generated in place at once: as many as the machine has cores. More only
    /// stretch each one (a batch of RSA Kubeconfigs ran 32 prime searches at once on 2 cores)
    /// and let a reconcile reach its timeout with its key half made, and lost.
    generating: Arc<Semaphore>,
}

impl Default for KeyPool {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZero::get);
        Self {
            sizes: Mutex::default(),
            generating: Arc::new(Semaphore::new(cores)),
        }
    }
}

impl KeyPool {
    /// A fresh key of `algorithm`: one from the pool when it holds one, else generated now on
    /// the blocking pool, once one of the [`Self::generating`] places is free. Either way the
    /// pool of that size is filled again in the background. Should the caller stop waiting (a
    /// reconcile cut by its timeout), the key it was getting goes to the pool, not to waste.
    pub async fn fresh(self: &Arc<Self>, algorithm: KeyAlgorithm) -> Result<PrivateKey, Error> {
        if !algorithm.is_rsa() {
            return algorithm.generate();
        }
        if let Some(key) = self.pooled(algorithm) {
            return Ok(key);
        }
        let stopped = || Error::Signing(format!("generating a {algorithm} key stopped"));
        let place = self
            .generating
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| stopped())?;
        // The background filling may have made one meanwhile.
        if let Some(key) = self.pooled(algorithm) {
            return Ok(key);
        }
        let (sender, receiver) = oneshot::channel();
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _place = place;
            if let Err(Ok(key)) = sender.send(algorithm.generate()) {
                pool.give_back(algorithm, key);
            }
        });
        receiver.await.map_err(|_| stopped())?
    }

    /// A key of the pool, if one waits; starts the filling of that size if none runs.
    fn pooled(self: &Arc<Self>, algorithm: KeyAlgorithm) -> Option<PrivateKey> {
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
        pooled
    }

    /// A key made for a caller that stopped waiting: kept for the next, within twice
    /// [`READY`].
    fn give_back(&self, algorithm: KeyAlgorithm, key: PrivateKey) {
        if let Ok(mut sizes) = self.sizes.lock() {
            let size = sizes.entry(algorithm).or_default();
            if size.keys.len() < 2 * READY {
                size.keys.push(key);
            }
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

    #[tokio::test]
    async fn pooled_keys_are_fresh_bounded_and_never_handed_out_twice() {
        let pool = Arc::new(KeyPool::default());
        // Not RSA: generated in place, nothing pooled.
        pool.fresh(KeyAlgorithm::EcdsaP256).await.unwrap();
        assert_eq!(pool.ready(KeyAlgorithm::EcdsaP256), 0);
        // RSA: the first take starts the filling, which stops at READY.
        let mut seen = std::collections::HashSet::new();
        seen.insert(pool.fresh(KeyAlgorithm::Rsa2048).await.unwrap().to_pem());
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.ready(KeyAlgorithm::Rsa2048) < READY {
            assert!(Instant::now() < deadline, "the pool did not fill");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(pool.ready(KeyAlgorithm::Rsa2048), READY, "bounded");
        // Taking drains it (and refills it); every key is a different one.
        for _ in 0..READY * 2 {
            assert!(seen.insert(pool.fresh(KeyAlgorithm::Rsa2048).await.unwrap().to_pem()));
        }
        assert!(pool.ready(KeyAlgorithm::Rsa2048) <= READY);
    }

    #[tokio::test]
    async fn a_key_whose_caller_stopped_waiting_goes_to_the_pool() {
        let pool = Arc::new(KeyPool::default());
        let algorithm = KeyAlgorithm::Rsa4096;
        // No filling thread (one counts as running), every place taken.
        if let Ok(mut sizes) = pool.sizes.lock() {
            sizes.entry(algorithm).or_default().filling = true;
        }
        let cores = pool.generating.available_permits() as u32;
        let places = pool
            .generating
            .clone()
            .acquire_many_owned(cores)
            .await
            .unwrap();
        let waiting = tokio::spawn({
            let pool = pool.clone();
            async move { pool.fresh(algorithm).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "it waits for a place");
        // A place frees: the key is being made (a 4096-bit prime search takes far longer than
        // 20 ms) when the caller gives up.
        drop(places);
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        assert_eq!(pool.ready(algorithm), 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        while pool.ready(algorithm) == 0 {
            assert!(Instant::now() < deadline, "the abandoned key was lost");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pool.ready(algorithm), 1);
    }
}
