//! Who subscribed which port of the target, across this agent's sessions: at most one
//! stealer and any number of mirrors per port. Pure bookkeeping; the redirect rules follow
//! from it (a port's rules exist while it has any subscriber).

use std::collections::HashMap;
use std::sync::Arc;

use sctrace_protocol::IncomingMode;

/// Identifies one subscription in the agent: the session's number and the subscription's
/// stream id in that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriberKey {
    /// The session's number (counted from 1 since the agent started).
    pub session: u64,
    /// The subscription's stream id.
    pub subscription: u32,
}

/// Why a subscription cannot join a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port {port} is already stolen by another sctrace session ({holder}); only one session can steal a port at a time")]
pub struct Conflict {
    /// The port.
    pub port: u16,
    /// The session holding it, for the message.
    pub holder: String,
}

struct Entry<S> {
    key: SubscriberKey,
    who: String,
    value: Arc<S>,
}

/// The subscribers of one port.
pub struct PortSubscribers<S> {
    /// The one steal subscription, if any.
    pub stealer: Option<Arc<S>>,
    /// The mirror subscriptions.
    pub mirrors: Vec<Arc<S>>,
}

/// Subscriptions by port; `S` is what a connection needs to reach the subscriber.
pub struct Registry<S> {
    ports: HashMap<u16, Port<S>>,
}

struct Port<S> {
    stealer: Option<Entry<S>>,
    mirrors: Vec<Entry<S>>,
}

impl<S> Default for Registry<S> {
    fn default() -> Self {
        Registry {
            ports: HashMap::new(),
        }
    }
}

impl<S> Registry<S> {
    /// Whether `mode` may join `port` (a second stealer may not).
    pub fn check(&self, port: u16, mode: IncomingMode) -> Result<(), Conflict> {
        match (mode, self.ports.get(&port).and_then(|p| p.stealer.as_ref())) {
            (IncomingMode::Steal, Some(holder)) => Err(Conflict {
                port,
                holder: holder.who.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Whether `port` has any subscriber (so its redirect rules exist).
    #[cfg(test)]
    pub fn has(&self, port: u16) -> bool {
        self.ports.contains_key(&port)
    }

    /// Adds a subscriber (after [`Registry::check`]); `who` names its session in messages.
    pub fn insert(
        &mut self,
        port: u16,
        mode: IncomingMode,
        key: SubscriberKey,
        who: String,
        value: Arc<S>,
    ) -> Result<(), Conflict> {
        self.check(port, mode)?;
        let entry = Entry { key, who, value };
        let p = self.ports.entry(port).or_insert_with(|| Port {
            stealer: None,
            mirrors: Vec::new(),
        });
        match mode {
            IncomingMode::Steal => p.stealer = Some(entry),
            IncomingMode::Mirror => p.mirrors.push(entry),
        }
        Ok(())
    }

    /// Removes a subscriber; returns true when `port` has none left (its rules can go).
    pub fn remove(&mut self, port: u16, key: SubscriberKey) -> bool {
        let Some(p) = self.ports.get_mut(&port) else {
            return false;
        };
        if p.stealer.as_ref().is_some_and(|e| e.key == key) {
            p.stealer = None;
        }
        p.mirrors.retain(|e| e.key != key);
        if p.stealer.is_none() && p.mirrors.is_empty() {
            self.ports.remove(&port);
            return true;
        }
        false
    }

    /// The subscribers a new connection to `port` goes to.
    pub fn subscribers(&self, port: u16) -> PortSubscribers<S> {
        match self.ports.get(&port) {
            Some(p) => PortSubscribers {
                stealer: p.stealer.as_ref().map(|e| e.value.clone()),
                mirrors: p.mirrors.iter().map(|e| e.value.clone()).collect(),
            },
            None => PortSubscribers {
                stealer: None,
                mirrors: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(session: u64, subscription: u32) -> SubscriberKey {
        SubscriberKey {
            session,
            subscription,
        }
    }

    #[test]
    fn one_stealer_many_mirrors() {
        let mut r: Registry<&str> = Registry::default();
        assert!(!r.has(80));
        r.insert(
            80,
            IncomingMode::Mirror,
            key(1, 1),
            "session 1".into(),
            Arc::new("m1"),
        )
        .unwrap();
        r.insert(
            80,
            IncomingMode::Mirror,
            key(2, 1),
            "session 2".into(),
            Arc::new("m2"),
        )
        .unwrap();
        r.insert(
            80,
            IncomingMode::Steal,
            key(3, 1),
            "session 3".into(),
            Arc::new("s3"),
        )
        .unwrap();
        let err = r
            .insert(
                80,
                IncomingMode::Steal,
                key(4, 1),
                "session 4".into(),
                Arc::new("s4"),
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "port 80 is already stolen by another sctrace session (session 3); only one session can steal a port at a time"
        );
        assert!(r.check(80, IncomingMode::Mirror).is_ok());
        assert!(r.check(81, IncomingMode::Steal).is_ok());
        let subs = r.subscribers(80);
        assert_eq!(subs.stealer.as_deref(), Some(&"s3"));
        assert_eq!(subs.mirrors.len(), 2);
        assert!(r.subscribers(81).stealer.is_none());

        assert!(!r.remove(80, key(3, 1)));
        assert!(r.check(80, IncomingMode::Steal).is_ok());
        assert!(!r.remove(80, key(9, 9)), "unknown keys change nothing");
        assert!(!r.remove(80, key(1, 1)));
        assert!(r.remove(80, key(2, 1)), "the last subscriber leaves");
        assert!(!r.has(80));
        assert!(!r.remove(80, key(2, 1)));
    }
}
