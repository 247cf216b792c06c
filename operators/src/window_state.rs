//! The open windows of a window's worker or merger, kept so that a checkpoint costs the rows
//! since the previous one, not the whole state.
//!
//! A window is *frozen* partial states (Arrow arrays: what the last checkpoint or live copy
//! took, a restored checkpoint, the workers' hand-overs at the merger) and the live groups
//! (a DataFusion key table and accumulators) of the rows aggregated since. A snapshot
//! freezes the live groups (their keys and states are emitted once, and their hash table is
//! freed) and returns clones of the frozen arrays, which share their buffers. A key updated
//! after a freeze has a row in several frozen parts: they are partial states like those of
//! several workers, merged at the window's end (or in a copy, for SQL). So that the repeats
//! stay bounded, a freeze compacts (merges every part into one) once the frozen rows exceed
//! twice those of the last compaction: at most 3 rows per key, and a compaction costs about
//! as much as the freezes since the previous one.

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use weir_engine::job::PartialWindow;
use weir_engine::EngineError;

use crate::window::{into_partial, Groups, WindowConfig};

/// Rows of a partial window.
fn rows(p: &PartialWindow) -> usize {
    p.keys.first().or(p.states.first()).map_or(0, |k| k.len())
}

/// One open window.
pub(crate) struct Window {
    /// Partial states taken out of groups, in arrival order.
    frozen: Vec<PartialWindow>,
    frozen_rows: usize,
    /// Rows of the frozen parts after the last compaction (one per key).
    compacted_rows: usize,
    /// The groups of the rows aggregated since the last freeze.
    pub(crate) groups: Groups,
}

impl Window {
    fn new(config: &WindowConfig, key_schema: &SchemaRef) -> Result<Self, EngineError> {
        Ok(Window {
            frozen: Vec::new(),
            frozen_rows: 0,
            compacted_rows: 0,
            groups: Groups::new(&config.name, &config.aggregates, key_schema)?,
        })
    }

    fn push(&mut self, partial: PartialWindow) {
        let n = rows(&partial);
        if n == 0 {
            return;
        }
        self.frozen_rows += n;
        self.frozen.push(partial);
        if self.frozen.len() == 1 {
            self.compacted_rows = self.frozen_rows;
        }
    }

    /// Moves the live groups to the frozen parts.
    fn freeze(
        &mut self,
        start: i64,
        config: &WindowConfig,
        key_schema: &SchemaRef,
    ) -> Result<(), EngineError> {
        if self.groups.values.is_empty() {
            return Ok(());
        }
        let fresh = Groups::new(&config.name, &config.aggregates, key_schema)?;
        let live = std::mem::replace(&mut self.groups, fresh);
        self.push(into_partial(start, live, &config.name)?);
        Ok(())
    }

    /// Merges every frozen part into one when they hold more than twice the rows of the
    /// last compaction.
    fn maybe_compact(
        &mut self,
        start: i64,
        config: &WindowConfig,
        key_schema: &SchemaRef,
        state_lens: &[usize],
        group_ids: &mut Vec<usize>,
    ) -> Result<(), EngineError> {
        if self.frozen.len() < 2 || self.frozen_rows <= 2 * self.compacted_rows {
            return Ok(());
        }
        let mut g = Groups::new(&config.name, &config.aggregates, key_schema)?;
        for p in std::mem::take(&mut self.frozen) {
            g.merge(&p.keys, &p.states, state_lens, group_ids, &config.name)?;
        }
        self.frozen_rows = 0;
        self.push(into_partial(start, g, &config.name)?);
        Ok(())
    }

    /// The window's groups: the frozen parts merged into the live groups.
    pub(crate) fn into_groups(
        mut self,
        config: &WindowConfig,
        state_lens: &[usize],
        group_ids: &mut Vec<usize>,
    ) -> Result<Groups, EngineError> {
        for p in std::mem::take(&mut self.frozen) {
            self.groups
                .merge(&p.keys, &p.states, state_lens, group_ids, &config.name)?;
        }
        Ok(self.groups)
    }

    /// The window's partial states, taken out: the frozen parts and the live groups.
    pub(crate) fn into_partials(
        mut self,
        start: i64,
        config: &WindowConfig,
        key_schema: &SchemaRef,
    ) -> Result<Vec<PartialWindow>, EngineError> {
        self.freeze(start, config, key_schema)?;
        Ok(self.frozen)
    }
}

/// The open windows of a worker or of the merger, by window start.
pub(crate) struct OpenWindows {
    key_schema: SchemaRef,
    windows: BTreeMap<i64, Window>,
}

impl OpenWindows {
    pub(crate) fn new(key_schema: SchemaRef) -> Self {
        OpenWindows {
            key_schema,
            windows: BTreeMap::new(),
        }
    }

    fn window(&mut self, start: i64, config: &WindowConfig) -> Result<&mut Window, EngineError> {
        Ok(match self.windows.entry(start) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Window::new(config, &self.key_schema)?)
            }
        })
    }

    /// The live groups of the window starting at `start`, created empty when new.
    pub(crate) fn get_or_create(
        &mut self,
        start: i64,
        config: &WindowConfig,
    ) -> Result<&mut Groups, EngineError> {
        Ok(&mut self.window(start, config)?.groups)
    }

    /// Adds a partial window (a worker's hand-over, or a checkpoint's) to its window, as a
    /// frozen part: its arrays are kept, not copied, and merged at the window's end.
    pub(crate) fn merge(
        &mut self,
        partial: PartialWindow,
        config: &WindowConfig,
    ) -> Result<(), EngineError> {
        self.window(partial.window_start, config)?.push(partial);
        Ok(())
    }

    /// The partial state of every open window, for a checkpoint or SQL, leaving it
    /// unchanged: the live groups are frozen (see the module's comment), and the frozen
    /// arrays cloned, sharing their buffers.
    pub(crate) fn snapshot(
        &mut self,
        config: &WindowConfig,
        state_lens: &[usize],
        group_ids: &mut Vec<usize>,
    ) -> Result<Vec<PartialWindow>, EngineError> {
        let mut out = Vec::new();
        for (&start, w) in self.windows.iter_mut() {
            w.freeze(start, config, &self.key_schema)?;
            w.maybe_compact(start, config, &self.key_schema, state_lens, group_ids)?;
            out.extend(w.frozen.iter().cloned());
        }
        Ok(out)
    }

    /// Removes and returns, in start order, every window closed at `watermark`.
    pub(crate) fn take_closed(
        &mut self,
        config: &WindowConfig,
        watermark: i64,
    ) -> BTreeMap<i64, Window> {
        let last = config.last_closed_start(watermark);
        let open = if last == i64::MAX {
            BTreeMap::new()
        } else {
            self.windows.split_off(&(last + 1))
        };
        std::mem::replace(&mut self.windows, open)
    }

    /// Whether the window starting at `start` is open.
    pub(crate) fn contains(&self, start: i64) -> bool {
        self.windows.contains_key(&start)
    }

    /// Removes every window.
    pub(crate) fn take_all(&mut self) -> BTreeMap<i64, Window> {
        std::mem::take(&mut self.windows)
    }

    pub(crate) fn key_schema(&self) -> &SchemaRef {
        &self.key_schema
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema, TimestampMillisecondType};
    use arrow::record_batch::RecordBatch;
    use weir_engine::dead_letter::PartitionInfo;
    use weir_engine::job::{MergeOperator, PartialWindow, WorkerOperator};
    use weir_engine::EventBatch;

    use crate::window::{TimeMode, WindowConfig, WindowMerger, WindowWorker};
    use crate::SqlCompiler;

    fn config() -> Arc<WindowConfig> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
        ]));
        let c = SqlCompiler::new();
        let aggregates = [
            ("n", "count(*)"),
            ("total", "sum(v)"),
            ("top", "max(v)"),
            ("mean", "avg(v)"),
            ("newest", "last_value(v ORDER BY v)"),
        ]
        .iter()
        .map(|(n, e)| c.aggregate(n, e, &schema).unwrap())
        .collect();
        Arc::new(WindowConfig {
            name: "w".into(),
            input_schema: schema,
            predicate: None,
            keys: vec!["k".into()],
            size_ms: 60_000,
            allowed_lateness_ms: 0,
            time: TimeMode::Event,
            aggregates,
            key_partitioned: false,
            partition_state: false,
        })
    }

    /// Batch `b` of the test input: keys `k0..k49` updated again and again, in two windows.
    fn batch(config: &WindowConfig, b: i64) -> EventBatch {
        let rows: Vec<(String, i64, i64)> = (0..40)
            .map(|i| {
                let key = (b * 7 + i * 3) % 50;
                let t = if i % 4 == 0 { 61_000 } else { 1_000 + b };
                (format!("k{key}"), b * 100 + i, t)
            })
            .collect();
        let batch = RecordBatch::try_new(
            config.input_schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        EventBatch {
            batch,
            event_time: rows.iter().map(|r| r.2).collect(),
            offsets: (0..rows.len() as u64).collect(),
            raw: None,
        }
    }

    fn partition() -> Arc<PartitionInfo> {
        Arc::new(PartitionInfo {
            source: "events".into(),
            id: 0,
            state_id: 0,
            number: 0,
            topic: None,
            file: None,
        })
    }

    fn process(w: &mut WindowWorker, ev: &EventBatch) {
        let n = ev.batch.num_rows();
        w.process(&partition(), ev, &vec![i64::MIN; n], &mut Vec::new())
            .unwrap();
    }

    /// The final rows of a worker's windows, as text.
    fn results(w: &mut WindowWorker, config: &Arc<WindowConfig>) -> Vec<String> {
        let mut m = WindowMerger::new(config.clone()).unwrap();
        for p in w.flush(i64::MAX).unwrap() {
            m.merge(p).unwrap();
        }
        let mut out = Vec::new();
        for b in m.emit(i64::MAX).unwrap() {
            let k = b.column(0).as_string::<i32>();
            let s = b.column(1).as_primitive::<TimestampMillisecondType>();
            for i in 0..b.num_rows() {
                let values: Vec<String> = (3..b.num_columns())
                    .map(|c| arrow::util::display::array_value_to_string(b.column(c), i).unwrap())
                    .collect();
                out.push(format!(
                    "{} {} {}",
                    k.value(i),
                    s.value(i),
                    values.join(" ")
                ));
            }
        }
        out
    }

    fn rows(partials: &[PartialWindow]) -> usize {
        partials.iter().map(|p| p.keys[0].len()).sum()
    }

    #[test]
    fn snapshots_between_batches_change_no_result_and_restore_equal() {
        let config = config();
        let mut oracle = WindowWorker::new(config.clone()).unwrap();
        let mut w = WindowWorker::new(config.clone()).unwrap();
        let mut restored = None;
        for b in 0..30 {
            let ev = batch(&config, b);
            process(&mut oracle, &ev);
            process(&mut w, &ev);
            if b % 3 == 0 {
                let (saved, flushed) = w.snapshot().unwrap();
                // at most 3 rows per (key, window): 50 keys in 2 windows
                assert!(rows(&saved) <= 3 * 100, "{} rows", rows(&saved));
                // the checkpoint goes through its file format and into a fresh worker
                let bytes = weir_engine::checkpoint::encode_partials(&saved).unwrap();
                let mut r = WindowWorker::new(config.clone()).unwrap();
                r.restore(
                    weir_engine::checkpoint::decode_partials(&bytes).unwrap(),
                    flushed,
                )
                .unwrap();
                restored = Some((r, b));
            }
        }
        let want = results(&mut oracle, &config);
        assert_eq!(want.len(), 100);
        assert_eq!(results(&mut w, &config), want);
        // the last restored worker, fed the batches after its checkpoint
        let (mut r, at) = restored.unwrap();
        for b in at + 1..30 {
            process(&mut r, &batch(&config, b));
        }
        assert_eq!(results(&mut r, &config), want);
    }

    #[test]
    fn a_snapshot_with_nothing_new_shares_the_arrays_of_the_last() {
        let config = config();
        let mut w = WindowWorker::new(config.clone()).unwrap();
        process(&mut w, &batch(&config, 0));
        let (a, _) = w.snapshot().unwrap();
        let (b, _) = w.snapshot().unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            for (c, d) in x
                .keys
                .iter()
                .chain(&x.states)
                .zip(y.keys.iter().chain(&y.states))
            {
                assert_eq!(
                    c.to_data().buffers()[0].as_ptr(),
                    d.to_data().buffers()[0].as_ptr()
                );
            }
        }
        // rows after it are frozen on their own, next to the shared part
        process(&mut w, &batch(&config, 1));
        let (c, _) = w.snapshot().unwrap();
        assert!(c.len() > a.len());
        let counts: i64 = c
            .iter()
            .map(|p| arrow::compute::sum(p.states[0].as_primitive::<Int64Type>()).unwrap())
            .sum();
        assert_eq!(counts, 80);
    }
}
