//! What differs between the fingerprint a checkpoint was written with and the current
//! pipeline's (a restore refuses a checkpoint whose fingerprint differs).

use std::collections::BTreeMap;

/// One difference between the fingerprint a checkpoint was written with and the current
/// pipeline's: a setting (`window w: tumbling`) and its values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FingerprintChange {
    #[error("{key} changed from `{was}` to `{now}`")]
    Changed {
        key: String,
        was: String,
        now: String,
    },
    #[error("{key} (`{was}`) was removed")]
    Removed { key: String, was: String },
    #[error("{key} (`{now}`) was added")]
    Added { key: String, now: String },
}

/// Every difference between two fingerprints, read as `a; b; c`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FingerprintChanges(pub Vec<FingerprintChange>);

impl std::fmt::Display for FingerprintChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            c.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for FingerprintChanges {}

/// Says what differs between the fingerprint a checkpoint was written with and the current
/// pipeline's; `Ok` when they are equal.
pub fn compatibility(
    stored: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Result<(), FingerprintChanges> {
    let mut changes = Vec::new();
    for (k, was) in stored {
        let (key, was) = (k.clone(), was.clone());
        match current.get(k) {
            Some(now) if *now == was => {}
            Some(now) => changes.push(FingerprintChange::Changed {
                key,
                was,
                now: now.clone(),
            }),
            None => changes.push(FingerprintChange::Removed { key, was }),
        }
    }
    for (k, now) in current {
        if !stored.contains_key(k) {
            changes.push(FingerprintChange::Added {
                key: k.clone(),
                now: now.clone(),
            });
        }
    }
    if changes.is_empty() {
        Ok(())
    } else {
        Err(FingerprintChanges(changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatibility_names_every_change() {
        let a: BTreeMap<String, String> = [
            ("window w: tumbling".to_string(), "60000".to_string()),
            ("window w: key".to_string(), "a".to_string()),
        ]
        .into();
        let mut b = a.clone();
        assert!(compatibility(&a, &b).is_ok());
        b.insert("window w: tumbling".into(), "120000".into());
        b.remove("window w: key");
        b.insert("window v: key".into(), "x".into());
        let e = compatibility(&a, &b).unwrap_err();
        assert_eq!(e.0.len(), 3);
        assert!(
            matches!(&e.0[0], FingerprintChange::Removed { key, .. } if key == "window w: key")
        );
        let e = e.to_string();
        assert!(
            e.contains("window w: tumbling changed from `60000` to `120000`"),
            "{e}"
        );
        assert!(e.contains("window w: key (`a`) was removed"), "{e}");
        assert!(e.contains("window v: key (`x`) was added"), "{e}");
    }
}
