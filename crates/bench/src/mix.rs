//! Which events go where: the accounts and event types of a run, which event each webhook
//! carries and which clients must receive it.
//!
//! Events are numbered `n = 0, 1, 2, ...` in the order they are sent. Event `n` belongs to
//! account `n % A` and type `(n / A) % T`, so every (account, type) group gets its share in turn.
//! Client `i` sees account `i % A` (its token allows only that one) and `types_per_client`
//! consecutive types starting at `(i / A) % T`. Both sides compute the same answers from the
//! same [`Mix`], so no per-event bookkeeping crosses process boundaries.

use serde::{Deserialize, Serialize};

/// Accounts and event types of a run, and how clients subscribe to them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mix {
    pub accounts: Vec<String>,
    pub types: Vec<String>,
    /// How many of the types each client subscribes to (1 to all).
    pub types_per_client: usize,
}

impl Mix {
    /// `accounts` accounts named `bench_acct_<k>`, the given types; `types_per_client` is
    /// clamped to 1..=types.
    pub fn new(accounts: usize, types: Vec<String>, types_per_client: usize) -> Self {
        let types = if types.is_empty() {
            vec!["comments".to_owned()]
        } else {
            types
        };
        Mix {
            accounts: (0..accounts.max(1))
                .map(|a| format!("bench_acct_{a}"))
                .collect(),
            types_per_client: types_per_client.clamp(1, types.len()),
            types,
        }
    }

    fn a(&self) -> u64 {
        self.accounts.len() as u64
    }

    fn t(&self) -> u64 {
        self.types.len() as u64
    }

    /// Number of (account, type) groups.
    pub fn groups(&self) -> usize {
        self.accounts.len() * self.types.len()
    }

    /// The group of event `n`: `account + A * type`, which is `n % (A * T)`.
    pub fn group(&self, n: u64) -> usize {
        (n % (self.a() * self.t())) as usize
    }

    pub fn event_account(&self, n: u64) -> usize {
        (n % self.a()) as usize
    }

    pub fn event_type(&self, n: u64) -> usize {
        ((n / self.a()) % self.t()) as usize
    }

    pub fn client_account(&self, i: usize) -> usize {
        i % self.accounts.len()
    }

    fn first_type(&self, i: usize) -> usize {
        (i / self.accounts.len()) % self.types.len()
    }

    /// The type indices client `i` subscribes to.
    pub fn client_types(&self, i: usize) -> Vec<usize> {
        let first = self.first_type(i);
        (0..self.types_per_client)
            .map(|d| (first + d) % self.types.len())
            .collect()
    }

    pub fn client_has_type(&self, i: usize, t: usize) -> bool {
        let first = self.first_type(i);
        let t_len = self.types.len();
        (t + t_len - first) % t_len < self.types_per_client
    }

    /// Whether client `i` must receive event `n`.
    pub fn client_expects(&self, i: usize, n: u64) -> bool {
        self.event_account(n) == self.client_account(i)
            && self.client_has_type(i, self.event_type(n))
    }

    /// For each group, how many of clients `0..clients` must receive its events.
    pub fn receivers(&self, clients: usize) -> Vec<u64> {
        let mut per_group = vec![0u64; self.groups()];
        for i in 0..clients {
            let a = self.client_account(i);
            for t in self.client_types(i) {
                per_group[a + self.accounts.len() * t] += 1;
            }
        }
        per_group
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_reaches_exactly_the_clients_of_its_group() {
        let mix = Mix::new(3, vec!["comments".into(), "messages".into()], 1);
        let receivers = mix.receivers(12);
        for n in 0..24u64 {
            let count = (0..12).filter(|&i| mix.client_expects(i, n)).count() as u64;
            assert_eq!(count, receivers[mix.group(n)], "event {n}");
            assert_eq!(mix.group(n), mix.event_account(n) + 3 * mix.event_type(n));
        }
        assert_eq!(receivers.iter().sum::<u64>(), 12);
    }

    #[test]
    fn all_types_per_client() {
        let mix = Mix::new(2, vec!["a".into(), "b".into(), "c".into()], 9);
        assert_eq!(mix.types_per_client, 3);
        assert!((0..3).all(|t| mix.client_has_type(5, t)));
        assert_eq!(mix.receivers(4), vec![2, 2, 2, 2, 2, 2]);
    }
}
