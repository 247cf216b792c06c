//! The materialized view: a keyed aggregation without a window, updated by every event.
//!
//! Every worker aggregates the rows it decodes into a *delta* (one accumulator row per key it
//! saw since the last barrier) and hands the delta to the [`ViewMerger`] at every barrier
//! (live or checkpoint) and at the end of the input. The merger holds the view: one
//! `GroupValues` table and one `GroupsAccumulator` per aggregate over every key, into which
//! deltas merge. Since deltas arrive at barriers only, the view the merger holds at a barrier
//! reflects exactly the events before it on every partition: a consistent snapshot.
//!
//! A view has no window, so no event is late for it; its state lives in checkpoints, and it
//! does not hold back the offsets a Kafka source commits.

use std::sync::Arc;

use arrow::array::{new_empty_array, Array, ArrayRef, AsArray, StringArray, UInt32Array};
use arrow::compute::{filter_record_batch, interleave, take_record_batch};
use arrow::datatypes::{Field, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use weir_engine::clock::WATERMARK_END;
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::job::{MergeOperator, PartialWindow, WorkerOperator};
use weir_engine::live::KeyIndex;
use weir_engine::{DeadLetter, EngineError, EventBatch};

use crate::compile::CompiledAggregate;
use crate::isolate::{evaluate, process_isolating, BatchError, RowExprs};
use crate::window::{into_partial, key_schema, state_lens, to_output, Groups};

/// A materialized view, shared by its workers and its merger.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    pub name: String,
    /// Schema of the decoded events it reads.
    pub input_schema: SchemaRef,
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    /// Key column names (in the input schema).
    pub keys: Vec<String>,
    /// The view's aggregates, then (with `retain`) the hidden newest event time per key.
    pub aggregates: Vec<CompiledAggregate>,
    /// `retain`: a key whose newest event is this much older than the view's watermark
    /// leaves the view (see [`ViewConfig::with_retain`]).
    pub retain_ms: Option<i64>,
    /// The view has sinks: expired keys go to them as `op = 'delete'` rows.
    pub changelog: bool,
    /// Keeps each key's source partition in its state, as a hidden aggregate (a worker
    /// pool, see [`ViewConfig::with_partition_state`]).
    pub partition_state: bool,
}

/// The `window_start` a view's partial state travels under (views have no window).
const VIEW_WINDOW: i64 = 0;

/// The column of each event's time (ms) that views with `retain` aggregate, hidden.
pub const EVENT_TIME_COLUMN: &str = "__weir_event_time";

pub use weir_engine::checkpoint::PARTITION_COLUMN;
pub use weir_engine::KEYS_METADATA;

impl ViewConfig {
    /// Keys whose newest event time is `retain_ms` or more older than the view's watermark
    /// expire: they leave the view at the next barrier (its sinks get an `op = 'delete'` row
    /// with the key's last values), and an event for such a key later starts it afresh.
    /// Event time, not the wall clock, so that a restore or a replay expires the same keys.
    pub fn with_retain(
        mut self,
        retain_ms: i64,
        compiler: &crate::SqlCompiler,
    ) -> Result<Self, crate::CompileError> {
        self.retain_ms = Some(retain_ms);
        let newest = compiler.aggregate(
            EVENT_TIME_COLUMN,
            &format!("max({EVENT_TIME_COLUMN})"),
            &self.extended_schema(),
        )?;
        self.aggregates.push(newest);
        Ok(self)
    }

    /// Keeps each key's source partition in the state (a worker pool, whose partitions'
    /// state moves between workers): a hidden `max(partition)` aggregate after the visible
    /// ones (and before the hidden event time, which stays last). The source must be
    /// partitioned by the key, so that a key's events all come from one partition.
    pub fn with_partition_state(
        mut self,
        compiler: &crate::SqlCompiler,
    ) -> Result<Self, crate::CompileError> {
        if self.partition_state {
            return Ok(self);
        }
        let at = self.visible_len();
        self.partition_state = true;
        let partition = compiler.aggregate(
            PARTITION_COLUMN,
            &format!("max({PARTITION_COLUMN})"),
            &self.extended_schema(),
        )?;
        self.aggregates.insert(at, partition);
        Ok(self)
    }

    fn visible_len(&self) -> usize {
        let hidden = usize::from(self.retain_ms.is_some()) + usize::from(self.partition_state);
        self.aggregates.len().saturating_sub(hidden)
    }

    /// The aggregates that are columns of the view (not the hidden ones).
    pub fn visible(&self) -> &[CompiledAggregate] {
        &self.aggregates[..self.visible_len()]
    }

    /// Where the partition is among the state columns of a partial (see
    /// [`Self::with_partition_state`]).
    pub fn partition_state_column(&self) -> Result<Option<usize>, EngineError> {
        if !self.partition_state {
            return Ok(None);
        }
        let lens = state_lens(&self.name, &self.aggregates)?;
        Ok(Some(lens[..self.visible_len()].iter().sum()))
    }

    /// The input schema with the hidden columns its aggregates read: the event time (with
    /// `retain`), then the partition (with partition state).
    fn extended_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .input_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        if self.retain_ms.is_some() {
            fields.push(Field::new(
                EVENT_TIME_COLUMN,
                arrow::datatypes::DataType::Int64,
                false,
            ));
        }
        if self.partition_state {
            fields.push(Field::new(
                PARTITION_COLUMN,
                arrow::datatypes::DataType::UInt32,
                false,
            ));
        }
        Arc::new(Schema::new(fields))
    }

    fn key_schema(&self) -> Result<SchemaRef, EngineError> {
        key_schema(&self.name, &self.input_schema, &self.keys)
    }

    /// The schema of the view's rows: keys, then aggregates.
    pub fn output_schema(&self) -> Result<SchemaRef, EngineError> {
        let mut fields: Vec<Field> = self
            .key_schema()?
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(
            self.visible()
                .iter()
                .map(|a| a.output_field().as_ref().clone()),
        );
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The schema of the rows its sinks receive: the view's rows and `op` (`upsert` for a
    /// key that changed, `delete` for a key that expired under `retain`, `snapshot` for every
    /// key at the end of a bounded run), with the key
    /// column count in the metadata (`weir.keys`) so that sinks key messages by it.
    pub fn sink_schema(&self) -> Result<SchemaRef, EngineError> {
        let mut fields: Vec<Field> = self
            .output_schema()?
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("op", arrow::datatypes::DataType::Utf8, false));
        let metadata = [(KEYS_METADATA.to_string(), self.keys.len().to_string())].into();
        Ok(Arc::new(Schema::new_with_metadata(fields, metadata)))
    }

    fn groups(&self) -> Result<Groups, EngineError> {
        Groups::new(&self.name, &self.aggregates, &self.key_schema()?)
    }
}

/// Copies groups' state out as a partial, rebuilding the groups from the copy
/// (accumulators only give their state away).
fn copy_out(
    groups: &mut Groups,
    config: &ViewConfig,
    lens: &[usize],
    ids: &mut Vec<usize>,
) -> Result<PartialWindow, EngineError> {
    let taken = std::mem::replace(groups, config.groups()?);
    let partial = into_partial(VIEW_WINDOW, taken, &config.name)?;
    groups.merge(&partial.keys, &partial.states, lens, ids, &config.name)?;
    Ok(partial)
}

/// The per-worker part of a view: filters and aggregates into a delta.
pub struct ViewWorker {
    config: Arc<ViewConfig>,
    state_lens: Vec<usize>,
    delta: Option<Groups>,
    group_ids: Vec<usize>,
}

impl ViewWorker {
    /// A worker instance of `config`.
    pub fn new(config: Arc<ViewConfig>) -> Result<Self, EngineError> {
        Ok(ViewWorker {
            state_lens: state_lens(&config.name, &config.aggregates)?,
            config,
            delta: None,
            group_ids: Vec::new(),
        })
    }

    fn delta(&mut self) -> Result<&mut Groups, EngineError> {
        let groups = match self.delta.take() {
            Some(g) => g,
            None => self.config.groups()?,
        };
        Ok(self.delta.insert(groups))
    }

    fn take_delta(&mut self) -> Result<Vec<PartialWindow>, EngineError> {
        match self.delta.take() {
            Some(g) if !g.values.is_empty() => {
                Ok(vec![into_partial(VIEW_WINDOW, g, &self.config.name)?])
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// The events with the hidden columns a view's hidden aggregates read: each event's time
/// (with `retain`) and partition (with partition state).
fn with_hidden_columns(
    config: &ViewConfig,
    partition: &PartitionInfo,
    events: &EventBatch,
) -> Result<RecordBatch, EngineError> {
    let mut columns = events.batch.columns().to_vec();
    if config.retain_ms.is_some() {
        columns.push(Arc::new(arrow::array::Int64Array::from(
            events.event_time.clone(),
        )));
    }
    if config.partition_state {
        columns.push(Arc::new(arrow::array::UInt32Array::from_value(
            partition.state_id as u32,
            events.batch.num_rows(),
        )));
    }
    RecordBatch::try_new(config.extended_schema(), columns)
        .map_err(|e| EngineError::operator_caused(&config.name, "", e))
}

impl ViewWorker {
    /// Aggregates a batch into the delta, all or nothing (see [`crate::isolate`]).
    fn try_process(
        &mut self,
        partition: &PartitionInfo,
        events: &EventBatch,
    ) -> Result<u64, BatchError> {
        let config = self.config.clone();
        let n = events.batch.num_rows();
        if n == 0 {
            return Ok(0);
        }
        let extended;
        let batch = if config.retain_ms.is_some() || config.partition_state {
            extended = with_hidden_columns(&config, partition, events)?;
            &extended
        } else {
            &events.batch
        };
        let subset;
        let rows = match &config.predicate {
            Some(p) => {
                let pass = evaluate(p, batch).map_err(|e| BatchError::of(&config.name, e))?;
                // a null condition keeps no row, as in SQL
                let pass = pass.as_boolean();
                let kept = pass.true_count();
                if kept == 0 {
                    return Ok(0);
                }
                if kept == n && pass.null_count() == 0 {
                    batch
                } else {
                    subset = filter_record_batch(batch, pass)
                        .map_err(|e| EngineError::operator_caused(&config.name, "", e))?;
                    &subset
                }
            }
            None => batch,
        };
        let mut ids = std::mem::take(&mut self.group_ids);
        let done = self.delta()?.update(
            rows,
            &config.keys,
            &config.aggregates,
            &mut ids,
            &config.name,
        );
        self.group_ids = ids;
        done.map(|_| 0)
    }
}

impl WorkerOperator for ViewWorker {
    fn process(
        &mut self,
        partition: &Arc<PartitionInfo>,
        events: &EventBatch,
        row_watermarks: &[i64],
        dead: &mut Vec<DeadLetter>,
    ) -> Result<u64, EngineError> {
        let config = self.config.clone();
        let exprs = RowExprs {
            predicate: config.predicate.as_ref(),
            aggregates: &config.aggregates,
        };
        process_isolating(
            &config.name,
            partition,
            (events, row_watermarks),
            dead,
            exprs,
            |ev| with_hidden_columns(&config, partition, ev),
            |ev, _, _| self.try_process(partition, ev),
        )
    }

    fn flush(&mut self, watermark: i64) -> Result<Vec<PartialWindow>, EngineError> {
        // Deltas go to the merger at barriers; at the end of the input, the last one.
        if watermark == WATERMARK_END {
            self.take_delta()
        } else {
            Ok(Vec::new())
        }
    }

    fn barrier_handover(&mut self) -> Result<Vec<PartialWindow>, EngineError> {
        self.take_delta()
    }

    fn live(&mut self) -> Result<Vec<PartialWindow>, EngineError> {
        // handed over at the barrier just before
        Ok(Vec::new())
    }

    fn snapshot(&mut self) -> Result<(Vec<PartialWindow>, i64), EngineError> {
        let config = self.config.clone();
        let lens = self.state_lens.clone();
        let mut ids = std::mem::take(&mut self.group_ids);
        let out = match self.delta.as_mut() {
            Some(g) if !g.values.is_empty() => vec![copy_out(g, &config, &lens, &mut ids)?],
            _ => Vec::new(),
        };
        self.group_ids = ids;
        Ok((out, i64::MIN))
    }

    fn restore(&mut self, partials: Vec<PartialWindow>, _flushed: i64) -> Result<(), EngineError> {
        let config = self.config.clone();
        let lens = self.state_lens.clone();
        let mut ids = std::mem::take(&mut self.group_ids);
        for p in &partials {
            self.delta()?
                .merge(&p.keys, &p.states, &lens, &mut ids, &config.name)?;
        }
        self.group_ids = ids;
        Ok(())
    }

    fn processing_time(&self) -> bool {
        false
    }

    fn closes_at(&self, _event_time: i64) -> i64 {
        WATERMARK_END
    }
}

/// Holds a view over every key and evaluates it for readers, incrementally.
///
/// The view is kept as Arrow arrays in group order: the keys, the accumulators' state
/// columns and the evaluated results. Deltas merge into *pending* accumulators over only
/// the keys they touch; a fold (at a barrier, before anything reads the view) merges each
/// touched key's old state into them, evaluates just those keys, and splices the new state
/// and results in with `interleave`. Reading the view, or checkpointing it, then costs
/// `Arc` clones, and a fold costs the touched keys' accumulator work plus a copy of the
/// arrays.
pub struct ViewMerger {
    config: Arc<ViewConfig>,
    output: SchemaRef,
    sink_schema: SchemaRef,
    state_lens: Vec<usize>,
    /// Key → group id, over every key of the view.
    values: Box<dyn GroupValues>,
    /// Key columns of every group, in group order (and keys of new groups not folded yet).
    keys: Vec<ArrayRef>,
    new_keys: Vec<Vec<ArrayRef>>,
    /// State columns of every folded group, in group order.
    state: Vec<ArrayRef>,
    /// The aggregates' values of every folded group, in group order.
    results: Vec<ArrayRef>,
    /// Accumulators over the keys touched since the last fold (local ids).
    pending: Vec<Box<dyn GroupsAccumulator>>,
    /// Global group id → local id + 1 (0: not touched since the last fold).
    local_of: Vec<u32>,
    /// Global ids of the touched groups, by local id.
    touched: Vec<usize>,
    group_ids: Vec<usize>,
    local_ids: Vec<usize>,
    /// Per group: changed since the last barrier rows.
    dirty: Vec<bool>,
    changed: usize,
    /// The final snapshot was emitted.
    finished: bool,
    /// Key → row of the folded groups, for point queries.
    index: Arc<KeyIndex>,
    /// The view's watermark (the minimum over its partitions), for `retain`.
    watermark: i64,
    /// The watermark of the last expiry pass.
    expired_upto: i64,
    /// Expired keys' rows (`op = 'delete'`) for the sinks at the next barrier.
    deleted: Vec<RecordBatch>,
}

impl ViewMerger {
    /// The merger of `config`.
    pub fn new(config: Arc<ViewConfig>) -> Result<Self, EngineError> {
        let err = |e| EngineError::operator_caused(&config.name, "", e);
        let key_schema = config.key_schema()?;
        let values = new_group_values(key_schema.clone(), &GroupOrdering::None).map_err(err)?;
        let keys = key_schema
            .fields()
            .iter()
            .map(|f| new_empty_array(f.data_type()))
            .collect();
        let mut state = Vec::new();
        for a in &config.aggregates {
            for f in a.function.state_fields().map_err(err)? {
                state.push(new_empty_array(f.data_type()));
            }
        }
        let results = config
            .aggregates
            .iter()
            .map(|a| new_empty_array(a.output_field().data_type()))
            .collect();
        let key_types: Vec<_> = key_schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(ViewMerger {
            index: Arc::new(KeyIndex::new(&key_types)?),
            output: config.output_schema()?,
            sink_schema: config.sink_schema()?,
            state_lens: state_lens(&config.name, &config.aggregates)?,
            pending: accumulators(&config)?,
            values,
            keys,
            new_keys: Vec::new(),
            state,
            results,
            local_of: Vec::new(),
            touched: Vec::new(),
            group_ids: Vec::new(),
            local_ids: Vec::new(),
            dirty: Vec::new(),
            changed: 0,
            finished: false,
            watermark: i64::MIN,
            expired_upto: i64::MIN,
            deleted: Vec::new(),
            config,
        })
    }

    /// The schema of the view's rows.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    fn err(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::operator_caused(&self.config.name, "", e)
    }

    /// Folded groups.
    fn folded(&self) -> usize {
        self.keys.first().map_or(0, |k| k.len())
    }

    /// Merges a partial state into the pending accumulators.
    fn add(&mut self, partial: &PartialWindow) -> Result<(), EngineError> {
        let before = self.values.len();
        self.values
            .intern(&partial.keys, &mut self.group_ids)
            .map_err(|e| self.err(e))?;
        let total = self.values.len();
        if total > before {
            // keys of the new groups, in the order their ids were given
            let mut first_rows = Vec::with_capacity(total - before);
            let mut next = before;
            for (row, &g) in self.group_ids.iter().enumerate() {
                if g == next {
                    first_rows.push(row as u32);
                    next += 1;
                }
            }
            let rows = UInt32Array::from(first_rows);
            let taken = partial
                .keys
                .iter()
                .map(|k| arrow::compute::take(k, &rows, None).map_err(|e| self.err(e)))
                .collect::<Result<Vec<_>, _>>()?;
            self.new_keys.push(taken);
            self.local_of.resize(total, 0);
            self.dirty.resize(total, false);
        }
        self.local_ids.clear();
        for &g in &self.group_ids {
            let local = match self.local_of[g] {
                0 => {
                    self.touched.push(g);
                    self.local_of[g] = self.touched.len() as u32;
                    self.touched.len() - 1
                }
                l => l as usize - 1,
            };
            self.local_ids.push(local);
        }
        let k = self.touched.len();
        let mut at = 0;
        for (acc, &len) in self.pending.iter_mut().zip(&self.state_lens) {
            acc.merge_batch(&partial.states[at..at + len], &self.local_ids, None, k)
                .map_err(|e| EngineError::operator_caused(&self.config.name, "", e))?;
            at += len;
        }
        Ok(())
    }

    /// Folds the pending changes into the arrays, then expires keys under `retain`.
    fn fold(&mut self) -> Result<(), EngineError> {
        self.fold_pending()?;
        self.expire()
    }

    /// Drops the keys whose newest event is `retain` older than the watermark: one pass per
    /// watermark, a vectorised check, and a rebuild of the arrays and indexes only when some
    /// key expired.
    fn expire(&mut self) -> Result<(), EngineError> {
        let Some(retain) = self.config.retain_ms else {
            return Ok(());
        };
        if self.watermark <= self.expired_upto || self.folded() == 0 {
            return Ok(());
        }
        self.expired_upto = self.watermark;
        let cutoff = self.watermark.saturating_sub(retain);
        let Some(newest) = self.results.last() else {
            return Ok(());
        };
        let newest = arrow::compute::cast(newest, &arrow::datatypes::DataType::Int64)
            .map_err(|e| self.err(e))?;
        let cutoff = arrow::array::Int64Array::new_scalar(cutoff);
        // a key stays while its newest event is after the cutoff
        let keep = arrow::compute::kernels::cmp::gt(&newest, &cutoff).map_err(|e| self.err(e))?;
        let kept = keep.true_count();
        let total = self.folded();
        if kept == total {
            return Ok(());
        }
        if self.config.changelog {
            let gone = arrow::compute::not(&keep).map_err(|e| self.err(e))?;
            let rows = filter_record_batch(&self.rows()?, &gone).map_err(|e| self.err(e))?;
            self.deleted.push(self.sink_rows(&rows, "delete")?);
        }
        let filter = |a: &ArrayRef| arrow::compute::filter(a, &keep).map_err(|e| self.err(e));
        let keys = self
            .keys
            .iter()
            .map(filter)
            .collect::<Result<Vec<_>, _>>()?;
        let state = self
            .state
            .iter()
            .map(filter)
            .collect::<Result<Vec<_>, _>>()?;
        let results = self
            .results
            .iter()
            .map(filter)
            .collect::<Result<Vec<_>, _>>()?;
        let dirty: Vec<bool> = self
            .dirty
            .iter()
            .zip(keep.iter())
            .filter(|(_, k)| *k == Some(true))
            .map(|(d, _)| *d)
            .collect();
        // the kept keys get ids 0.. in their order again
        let key_schema = self.config.key_schema()?;
        let mut values =
            new_group_values(key_schema, &GroupOrdering::None).map_err(|e| self.err(e))?;
        values
            .intern(&keys, &mut self.group_ids)
            .map_err(|e| self.err(e))?;
        let types: Vec<_> = keys.iter().map(|k| k.data_type().clone()).collect();
        let index = KeyIndex::new(&types)?;
        index.extend(&keys, 0)?;
        tracing::debug!(
            view = %self.config.name,
            expired = total - kept,
            kept,
            "keys expired under retain"
        );
        self.values = values;
        self.keys = keys;
        self.state = state;
        self.results = results;
        self.changed = dirty.iter().filter(|d| **d).count();
        self.dirty = dirty;
        self.local_of = vec![0; kept];
        // readers of older snapshots keep the old index
        self.index = Arc::new(index);
        Ok(())
    }

    /// Folds the pending changes into the arrays.
    fn fold_pending(&mut self) -> Result<(), EngineError> {
        if self.touched.is_empty() {
            return Ok(());
        }
        let folded = self.folded();
        let k = self.touched.len();
        // the touched groups' old state joins their pending changes
        let (old_globals, old_locals): (Vec<u32>, Vec<usize>) = self
            .touched
            .iter()
            .enumerate()
            .filter(|(_, &g)| g < folded)
            .map(|(l, &g)| (g as u32, l))
            .unzip();
        if !old_globals.is_empty() {
            let rows = UInt32Array::from(old_globals);
            let old = self
                .state
                .iter()
                .map(|c| arrow::compute::take(c, &rows, None).map_err(|e| self.err(e)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut at = 0;
            for (acc, &len) in self.pending.iter_mut().zip(&self.state_lens) {
                acc.merge_batch(&old[at..at + len], &old_locals, None, k)
                    .map_err(|e| EngineError::operator_caused(&self.config.name, "", e))?;
                at += len;
            }
        }
        let mut pending = std::mem::replace(&mut self.pending, accumulators(&self.config)?);
        let mut new_state = Vec::with_capacity(self.state.len());
        for acc in pending.iter_mut() {
            new_state.extend(acc.state(EmitTo::All).map_err(|e| self.err(e))?);
        }
        // the touched groups' values, from a copy of their new state
        let locals: Vec<usize> = (0..k).collect();
        let mut values = Vec::with_capacity(self.results.len());
        let mut at = 0;
        for ((mut acc, &len), agg) in accumulators(&self.config)?
            .into_iter()
            .zip(&self.state_lens)
            .zip(&self.config.aggregates)
        {
            acc.merge_batch(&new_state[at..at + len], &locals, None, k)
                .map_err(|e| self.err(e))?;
            at += len;
            let v = acc.evaluate(EmitTo::All).map_err(|e| self.err(e))?;
            values.push(to_output(v, agg, &self.config.name, true)?);
        }
        // splice: group g comes from the new arrays when touched, else from the old ones
        let total = self.values.len();
        let picks: Vec<(usize, usize)> = (0..total)
            .map(|g| match self.local_of[g] {
                0 => (0, g),
                l => (1, l as usize - 1),
            })
            .collect();
        let splice = |old: &ArrayRef, new: &ArrayRef| -> Result<ArrayRef, EngineError> {
            interleave(&[old.as_ref(), new.as_ref()], &picks).map_err(|e| self.err(e))
        };
        let state = self
            .state
            .iter()
            .zip(&new_state)
            .map(|(o, n)| splice(o, n))
            .collect::<Result<Vec<_>, _>>()?;
        let results = self
            .results
            .iter()
            .zip(&values)
            .map(|(o, n)| splice(o, n))
            .collect::<Result<Vec<_>, _>>()?;
        self.state = state;
        self.results = results;
        if !self.new_keys.is_empty() {
            let mut first = folded;
            for chunk in &self.new_keys {
                self.index.extend(chunk, first)?;
                first += chunk.first().map_or(0, |c| c.len());
            }
            let mut keys = Vec::with_capacity(self.keys.len());
            for (i, k) in self.keys.iter().enumerate() {
                let mut parts: Vec<&dyn Array> = vec![k.as_ref()];
                parts.extend(self.new_keys.iter().map(|n| n[i].as_ref()));
                keys.push(arrow::compute::concat(&parts).map_err(|e| self.err(e))?);
            }
            self.keys = keys;
            self.new_keys.clear();
        }
        for g in std::mem::take(&mut self.touched) {
            self.local_of[g] = 0;
        }
        Ok(())
    }

    /// Every key's row, in group order.
    fn rows(&self) -> Result<RecordBatch, EngineError> {
        let mut columns = self.keys.clone();
        let visible = self.config.visible().len();
        columns.extend(self.results[..visible].iter().cloned());
        RecordBatch::try_new(self.output.clone(), columns).map_err(|e| self.err(e))
    }

    /// View rows as sink rows, with `op`.
    fn sink_rows(&self, rows: &RecordBatch, op: &str) -> Result<RecordBatch, EngineError> {
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        columns.push(Arc::new(StringArray::from(vec![op; rows.num_rows()])));
        RecordBatch::try_new(self.sink_schema.clone(), columns).map_err(|e| self.err(e))
    }

    fn clear_dirty(&mut self) {
        self.dirty.iter_mut().for_each(|d| *d = false);
        self.changed = 0;
    }
}

/// Fresh accumulators of a view's aggregates.
fn accumulators(config: &ViewConfig) -> Result<Vec<Box<dyn GroupsAccumulator>>, EngineError> {
    config
        .aggregates
        .iter()
        .map(|a| {
            a.accumulator()
                .map_err(|e| EngineError::operator_caused(&config.name, "", e))
        })
        .collect()
}

impl MergeOperator for ViewMerger {
    fn merge(&mut self, partial: PartialWindow) -> Result<(), EngineError> {
        self.add(&partial)?;
        for &g in &self.group_ids {
            if !self.dirty[g] {
                self.dirty[g] = true;
                self.changed += 1;
            }
        }
        Ok(())
    }

    fn emit(&mut self, watermark: i64) -> Result<Vec<RecordBatch>, EngineError> {
        if watermark != WATERMARK_END {
            // keys expire at the next barrier's fold
            self.watermark = self.watermark.max(watermark);
            return Ok(Vec::new());
        }
        // At the end of a bounded input: every key once, as the final snapshot (after the
        // deletes of keys that expired since the last barrier, or now: with the input
        // complete, keys expire against the newest event time).
        if self.finished {
            return Ok(Vec::new());
        }
        self.finished = true;
        self.fold_pending()?;
        if self.config.retain_ms.is_some() {
            // the input is complete: the view's clock is its newest event
            if let Some(newest) = self.results.last() {
                let newest = arrow::compute::cast(newest, &arrow::datatypes::DataType::Int64)
                    .map_err(|e| self.err(e))?;
                let newest = arrow::compute::max(newest.as_primitive::<Int64Type>());
                self.watermark = self.watermark.max(newest.unwrap_or(i64::MIN));
            }
        }
        self.expire()?;
        self.clear_dirty();
        let mut out = std::mem::take(&mut self.deleted);
        if self.folded() > 0 {
            out.push(self.sink_rows(&self.rows()?, "snapshot")?);
        }
        Ok(out)
    }

    fn barrier_rows(&mut self) -> Result<Vec<RecordBatch>, EngineError> {
        self.fold()?;
        // deletes first: a key that expired and came back ends as an upsert
        let mut out = std::mem::take(&mut self.deleted);
        if self.changed == 0 {
            return Ok(out);
        }
        let changed: Vec<u32> = self
            .dirty
            .iter()
            .enumerate()
            .filter(|(_, d)| **d)
            .map(|(i, _)| i as u32)
            .collect();
        self.clear_dirty();
        let rows = take_record_batch(&self.rows()?, &UInt32Array::from(changed))
            .map_err(|e| self.err(e))?;
        out.push(self.sink_rows(&rows, "upsert")?);
        Ok(out)
    }

    fn emits_windows(&self) -> bool {
        false
    }

    fn restore(&mut self, partials: &[PartialWindow]) -> Result<bool, EngineError> {
        // restored keys did not change: they are not sent to sinks again
        for p in partials {
            self.add(p)?;
        }
        self.fold()?;
        Ok(true)
    }

    fn snapshot(&mut self) -> Result<Vec<PartialWindow>, EngineError> {
        self.fold()?;
        if self.folded() == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![PartialWindow {
            window_start: VIEW_WINDOW,
            keys: self.keys.clone(),
            states: self.state.clone(),
        }])
    }

    fn live_index(&self) -> Option<Arc<KeyIndex>> {
        Some(self.index.clone())
    }

    fn live(&mut self, _workers: Vec<PartialWindow>) -> Result<Vec<RecordBatch>, EngineError> {
        // workers hand their deltas over at the barrier: the merger holds the whole view
        self.fold()?;
        if self.folded() == 0 {
            return Ok(Vec::new());
        }
        Ok(vec![self.rows()?])
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
