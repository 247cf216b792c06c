//! Deterministic `Nats-Msg-Id`s: the same row of the same output gets the same id in every
//! run and on every worker of a pool (nothing of the process goes in), so a JetStream
//! stream drops the repeats a restore publishes within its duplicate window.

use sha2::{Digest, Sha256};

/// A digest of `parts` (each length-prefixed, so that no two lists collide), 128 bits in hex.
fn digest(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A window row's id: the pipeline, the output, `salt` (a replay's range, else empty) and
/// the row's key (key columns and `window_start`, as JSON). A window is emitted once, with
/// the same values after a restore, so its key names it.
pub fn window_id(pipeline: &str, output: &str, salt: &str, key_json: &[u8]) -> String {
    let d = digest(&[
        b"window",
        pipeline.as_bytes(),
        output.as_bytes(),
        salt.as_bytes(),
        key_json,
    ]);
    format!("w-{d}")
}

/// A view row's id: as a window's with the view's key, plus `tag` (the checkpoint epoch the
/// change belongs to: one message per key and epoch) and the row itself. A restored run
/// publishes an epoch's change again under the same id when the key's row is the same (the
/// stream drops it), and as a new message when the run's barrier fell elsewhere and the row
/// differs (the key's last message is then the newer row).
pub fn view_id(
    pipeline: &str,
    output: &str,
    salt: &str,
    key_json: &[u8],
    tag: &str,
    row_json: &[u8],
) -> String {
    let d = digest(&[
        b"view",
        pipeline.as_bytes(),
        output.as_bytes(),
        salt.as_bytes(),
        key_json,
        tag.as_bytes(),
        row_json,
    ]);
    format!("v-{d}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_depend_on_the_row_only() {
        let a = window_id("p", "w", "", br#"{"k":"a","window_start":0}"#);
        assert_eq!(a, window_id("p", "w", "", br#"{"k":"a","window_start":0}"#));
        assert_ne!(
            a,
            window_id("p", "w", "", br#"{"k":"a","window_start":60000}"#)
        );
        assert_ne!(
            a,
            window_id("p", "w2", "", br#"{"k":"a","window_start":0}"#)
        );
        assert_ne!(
            a,
            window_id("p", "w", "replay-x", br#"{"k":"a","window_start":0}"#)
        );
        // length-prefixed parts: moving a byte from one part to the next changes the id
        assert_ne!(window_id("pw", "", "", b"k"), window_id("p", "w", "", b"k"));
        assert!(a.len() < 64, "ids stay short: {a}");
    }

    #[test]
    fn a_view_key_has_one_id_per_epoch_and_row() {
        let k = br#"{"k":"a"}"#;
        let v = view_id("p", "v", "", k, "e3", br#"{"k":"a","n":1}"#);
        assert_eq!(v, view_id("p", "v", "", k, "e3", br#"{"k":"a","n":1}"#));
        // the same row in a later epoch (a key back to an earlier value) is a new message
        assert_ne!(v, view_id("p", "v", "", k, "e4", br#"{"k":"a","n":1}"#));
        assert_ne!(v, view_id("p", "v", "", k, "e3", br#"{"k":"a","n":2}"#));
    }
}
