//! The keyed tumbling-window aggregate.
//!
//! Every worker keeps, per open window, one DataFusion `GroupValues` table (key → group id)
//! and one `GroupsAccumulator` per aggregate, so state is one accumulator row per (key,
//! window), never raw events. When a window can no longer receive on-time rows, each worker
//! hands over its accumulators' partial state; the [`WindowMerger`] merges the partials of
//! every worker and emits the final rows, sorted by key, once all workers have handed the
//! window over.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, TimestampMillisecondArray, UInt32Array};
use arrow::compute::{lexsort_to_indices, take_record_batch, SortColumn, SortOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::group_values::{new_group_values, GroupValues};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use weir_engine::dead_letter::PartitionInfo;
use weir_engine::job::{MergeOperator, PartialWindow, PartitionFlush, WorkerOperator};
use weir_engine::time::{now_ms, window_start};
use weir_engine::{DeadLetter, EngineError, ErrorInfo, EventBatch, Reason};

use crate::compile::CompiledAggregate;
use crate::isolate::{evaluate, process_isolating, BatchError, RowExprs};
use crate::window_state::{OpenWindows, Window};

/// Which clock windows follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeMode {
    /// The events' own time, with watermarks.
    Event,
    /// The clock when the worker handles the event.
    Processing,
}

/// A windowed aggregation, shared by its workers and its merger.
#[derive(Debug, Clone)]
pub struct WindowConfig {
    pub name: String,
    /// Schema of the decoded events it reads.
    pub input_schema: SchemaRef,
    pub predicate: Option<Arc<dyn PhysicalExpr>>,
    /// Key column names (in the input schema).
    pub keys: Vec<String>,
    pub size_ms: i64,
    pub allowed_lateness_ms: i64,
    pub time: TimeMode,
    pub aggregates: Vec<CompiledAggregate>,
    /// The source is partitioned by (a subset of) the key: every (key, window) gets its rows
    /// from one partition, so event-time windows close per partition (see
    /// [`Self::closes_per_partition`]).
    pub key_partitioned: bool,
    /// Keys the state by source partition as well (a worker pool): every group carries its
    /// partition's id as a hidden first key column ([`PARTITION_COLUMN`]), so that one
    /// partition's state can be checkpointed and moved to another worker alone. Needs
    /// `key_partitioned`, so that a key's rows all come from one partition.
    pub partition_state: bool,
}

pub use weir_engine::checkpoint::PARTITION_COLUMN;
use weir_engine::checkpoint::{NO_PARTITION, UNKNOWN_PARTITION};

/// The schema of operator `name`'s key columns (nullable: a null key is a group).
pub(crate) fn key_schema(
    name: &str,
    input: &SchemaRef,
    keys: &[String],
) -> Result<SchemaRef, EngineError> {
    let fields = keys
        .iter()
        .map(|k| {
            input
                .field_with_name(k)
                .map(|f| f.clone().with_nullable(true))
                .map_err(|e| EngineError::operator_caused(name, "", e))
        })
        .collect::<Result<Vec<Field>, _>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

impl WindowConfig {
    fn key_schema(&self) -> Result<SchemaRef, EngineError> {
        key_schema(&self.name, &self.input_schema, &self.keys)
    }

    /// The key columns of the state: the keys, after the partition column when the state
    /// is kept per partition.
    fn state_key_schema(&self) -> Result<SchemaRef, EngineError> {
        let keys = self.key_schema()?;
        if !self.keeps_partition() {
            return Ok(keys);
        }
        let mut fields = vec![Field::new(PARTITION_COLUMN, DataType::UInt32, false)];
        fields.extend(keys.fields().iter().map(|f| f.as_ref().clone()));
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The names of the state's key columns in an input batch (see [`Self::with_partition`]).
    fn state_keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(self.keys.len() + 1);
        if self.keeps_partition() {
            keys.push(PARTITION_COLUMN.to_string());
        }
        keys.extend(self.keys.iter().cloned());
        keys
    }

    /// `batch` with the partition column appended when the state is kept per partition
    /// (appended last, so that the compiled expressions' column indexes stay valid).
    fn with_partition<'a>(
        &self,
        batch: &'a RecordBatch,
        partition: u32,
    ) -> Result<std::borrow::Cow<'a, RecordBatch>, EngineError> {
        if !self.keeps_partition() {
            return Ok(std::borrow::Cow::Borrowed(batch));
        }
        let mut fields: Vec<Field> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(PARTITION_COLUMN, DataType::UInt32, false));
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(UInt32Array::from_value(
            partition,
            batch.num_rows(),
        )));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map(std::borrow::Cow::Owned)
            .map_err(|e| self.err(e))
    }

    /// The schema of result rows: keys, `window_start`, `window_end`, aggregates.
    pub fn output_schema(&self) -> Result<SchemaRef, EngineError> {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let mut fields: Vec<Field> = self
            .key_schema()?
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("window_start", ts.clone(), false));
        fields.push(Field::new("window_end", ts, false));
        fields.extend(
            self.aggregates
                .iter()
                .map(|a| a.output_field().as_ref().clone()),
        );
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Whether windows close per source partition: event-time windows keyed by what the
    /// source is partitioned by. Every (key, window) then gets its rows from one partition,
    /// so it is complete once that partition's watermark passed it: a partition that lags
    /// (assigned late, claimed from another worker) fills its windows and has them emitted
    /// once, whole, when it passes them.
    pub fn closes_per_partition(&self) -> bool {
        self.key_partitioned && self.time == TimeMode::Event
    }

    /// Whether its state keeps each row's partition (a hidden first key column,
    /// [`PARTITION_COLUMN`]): in a worker pool, and where windows close per partition (a
    /// checkpoint then restores each partition's windows to it).
    pub fn keeps_partition(&self) -> bool {
        self.partition_state || self.closes_per_partition()
    }

    /// Whether a window starting at `start` is closed at `watermark`.
    #[inline]
    fn closed(&self, start: i64, watermark: i64) -> bool {
        start
            .saturating_add(self.size_ms)
            .saturating_add(self.allowed_lateness_ms)
            <= watermark
    }

    /// The largest window start closed at `watermark`.
    pub(crate) fn last_closed_start(&self, watermark: i64) -> i64 {
        watermark
            .saturating_sub(self.size_ms)
            .saturating_sub(self.allowed_lateness_ms)
    }

    fn err(&self, e: impl Into<weir_engine::error::Cause>) -> EngineError {
        EngineError::operator_caused(&self.name, "", e)
    }
}

/// A batch's key columns and aggregate inputs, evaluated (see [`Groups::evaluate`]).
pub(crate) struct Evaluated {
    keys: Vec<ArrayRef>,
    /// Per aggregate, its arguments (then ORDER BY values).
    inputs: Vec<Vec<ArrayRef>>,
    /// Per aggregate, its `FILTER`.
    filters: Vec<Option<ArrayRef>>,
}

/// The accumulators of one window (or view): a key table and one accumulator per aggregate.
pub(crate) struct Groups {
    pub values: Box<dyn GroupValues>,
    pub accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

impl Groups {
    /// Empty groups of operator `name`.
    pub fn new(
        name: &str,
        aggregates: &[CompiledAggregate],
        key_schema: &SchemaRef,
    ) -> Result<Self, EngineError> {
        let err = |e| EngineError::operator_caused(name, "", e);
        let values = new_group_values(key_schema.clone(), &GroupOrdering::None).map_err(err)?;
        let accumulators = aggregates
            .iter()
            .map(|a| a.accumulator().map_err(err))
            .collect::<Result<_, _>>()?;
        Ok(Groups {
            values,
            accumulators,
        })
    }

    /// Evaluates what [`Self::apply`] aggregates of `batch`: the key columns, and every
    /// aggregate's arguments and `FILTER`. Changes nothing, so a failure leaves the state as
    /// it was.
    pub fn evaluate(
        batch: &RecordBatch,
        keys: &[String],
        aggregates: &[CompiledAggregate],
        name: &str,
    ) -> Result<Evaluated, BatchError> {
        let keys: Vec<ArrayRef> = keys
            .iter()
            .map(|k| {
                batch
                    .column_by_name(k)
                    .cloned()
                    .ok_or_else(|| EngineError::operator(name, format!("no column {k}")))
            })
            .collect::<Result<_, _>>()?;
        let mut inputs = Vec::with_capacity(aggregates.len());
        let mut filters = Vec::with_capacity(aggregates.len());
        for agg in aggregates {
            inputs.push(
                agg.inputs
                    .iter()
                    .map(|e| evaluate(e, batch))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| BatchError::of(name, e))?,
            );
            filters.push(match &agg.filter {
                Some(f) => Some(evaluate(f, batch).map_err(|e| BatchError::of(name, e))?),
                None => None,
            });
        }
        Ok(Evaluated {
            keys,
            inputs,
            filters,
        })
    }

    /// Aggregates evaluated rows into their keys' groups.
    pub fn apply(
        &mut self,
        rows: &Evaluated,
        group_ids: &mut Vec<usize>,
        name: &str,
    ) -> Result<(), EngineError> {
        let err = |e: datafusion::error::DataFusionError| EngineError::operator_caused(name, "", e);
        self.values.intern(&rows.keys, group_ids).map_err(err)?;
        let total = self.values.len();
        for ((acc, inputs), filter) in self
            .accumulators
            .iter_mut()
            .zip(&rows.inputs)
            .zip(&rows.filters)
        {
            let filter = filter.as_ref().map(|f| f.as_boolean());
            acc.update_batch(inputs, group_ids, filter, total)
                .map_err(err)?;
        }
        Ok(())
    }

    /// Aggregates every row of `batch` into its key's group; the state is unchanged when
    /// an expression fails.
    pub fn update(
        &mut self,
        batch: &RecordBatch,
        keys: &[String],
        aggregates: &[CompiledAggregate],
        group_ids: &mut Vec<usize>,
        name: &str,
    ) -> Result<(), BatchError> {
        let rows = Self::evaluate(batch, keys, aggregates, name)?;
        Ok(self.apply(&rows, group_ids, name)?)
    }

    /// Merges a partial state (keys and accumulator states) into the groups.
    pub fn merge(
        &mut self,
        keys: &[ArrayRef],
        states: &[ArrayRef],
        state_lens: &[usize],
        group_ids: &mut Vec<usize>,
        name: &str,
    ) -> Result<(), EngineError> {
        let err = |e| EngineError::operator_caused(name, "", e);
        self.values.intern(keys, group_ids).map_err(err)?;
        let total = self.values.len();
        let mut at = 0;
        for (acc, &len) in self.accumulators.iter_mut().zip(state_lens) {
            acc.merge_batch(&states[at..at + len], group_ids, None, total)
                .map_err(err)?;
            at += len;
        }
        Ok(())
    }

    /// The key columns and the final value of every aggregate (cast to its output type),
    /// taking the state out.
    pub fn finish(
        &mut self,
        aggregates: &[CompiledAggregate],
        name: &str,
        count_overflows: bool,
    ) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>), EngineError> {
        let err = |e| EngineError::operator_caused(name, "", e);
        let keys = self.values.emit(EmitTo::All).map_err(err)?;
        let mut values = Vec::with_capacity(aggregates.len());
        for (acc, agg) in self.accumulators.iter_mut().zip(aggregates) {
            let v = acc.evaluate(EmitTo::All).map_err(err)?;
            values.push(to_output(v, agg, name, count_overflows)?);
        }
        Ok((keys, values))
    }
}

/// An aggregate's values in its output type. A widened integer sum (see
/// [`crate::compile::widen_integer_sum`]) that does not fit the output type becomes null,
/// never a wrapped number: counted in `overflows` of the aggregate and logged when `count`.
pub(crate) fn to_output(
    v: ArrayRef,
    agg: &CompiledAggregate,
    name: &str,
    count: bool,
) -> Result<ArrayRef, EngineError> {
    let want = agg.output_field();
    if v.data_type() == want.data_type() {
        return Ok(v);
    }
    let out = arrow::compute::cast(&v, want.data_type())
        .map_err(|e| EngineError::operator_caused(name, "", e))?;
    let overflowed = out.null_count().saturating_sub(v.null_count());
    if overflowed > 0 && count {
        agg.overflows
            .fetch_add(overflowed as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            operator = name,
            aggregate = agg.name.as_str(),
            values = overflowed,
            "a sum is outside its type's range: the value is null"
        );
    }
    Ok(out)
}

/// A window's keys and accumulator states, taken out of its groups.
pub(crate) fn into_partial(
    start: i64,
    mut g: Groups,
    name: &str,
) -> Result<PartialWindow, EngineError> {
    let err = |e| EngineError::operator_caused(name, "", e);
    let keys = g.values.emit(EmitTo::All).map_err(err)?;
    let mut states = Vec::new();
    for acc in g.accumulators.iter_mut() {
        states.extend(acc.state(EmitTo::All).map_err(err)?);
    }
    Ok(PartialWindow {
        window_start: start,
        keys,
        states,
    })
}

/// How many state columns each aggregate's accumulator has.
pub(crate) fn state_lens(
    name: &str,
    aggregates: &[CompiledAggregate],
) -> Result<Vec<usize>, EngineError> {
    aggregates
        .iter()
        .map(|a| {
            a.state_len()
                .map_err(|e| EngineError::operator_caused(name, "", e))
        })
        .collect()
}

/// The open windows of one source partition, when windows close per partition.
struct PartitionWindows {
    windows: OpenWindows,
    /// The partition's windows up to this watermark were handed over: its rows for them
    /// are late.
    closing: i64,
}

/// The per-worker part of a window: filters, checks lateness and aggregates partially.
pub struct WindowWorker {
    config: Arc<WindowConfig>,
    state_keys: Vec<String>,
    state_lens: Vec<usize>,
    /// The open windows (when windows close per partition: those restored from a checkpoint
    /// that kept no partition, closed with every partition).
    windows: OpenWindows,
    /// When windows close per partition (see [`WindowConfig::closes_per_partition`]): the
    /// open windows of each global partition.
    parts: std::collections::BTreeMap<usize, PartitionWindows>,
    /// When windows close per partition: restored windows of partitions the run does not
    /// have, closed with every partition (they take no new row).
    orphans: OpenWindows,
    /// Windows up to this watermark were handed over: rows for them are late (when windows
    /// close per partition: rows of windows restored without partitions, see `legacy_end`).
    flushed: i64,
    /// When windows close per partition: the closing watermark of a partition the restored
    /// checkpoint says nothing of (its `flushed`, when it recorded no partition's).
    floor: i64,
    /// When windows close per partition: the last start of a window restored from a
    /// checkpoint that kept no partition (rows up to it are also late by `flushed`).
    legacy_end: i64,
    group_ids: Vec<usize>,
    buckets: Vec<(i64, Vec<u32>)>,
}

impl WindowWorker {
    /// A worker instance of `config`.
    pub fn new(config: Arc<WindowConfig>) -> Result<Self, EngineError> {
        Ok(WindowWorker {
            windows: OpenWindows::new(config.state_key_schema()?),
            orphans: OpenWindows::new(config.state_key_schema()?),
            state_lens: state_lens(&config.name, &config.aggregates)?,
            state_keys: config.state_keys(),
            config,
            parts: std::collections::BTreeMap::new(),
            flushed: i64::MIN,
            floor: i64::MIN,
            legacy_end: i64::MIN,
            group_ids: Vec::new(),
            buckets: Vec::new(),
        })
    }

    /// Processes a batch, all or nothing: every expression is evaluated before any window
    /// changes, so that an expression error leaves the state as it was (see
    /// [`crate::isolate`]).
    // one index walks the event times, watermarks, offsets and filter together
    #[allow(clippy::needless_range_loop)]
    fn try_process(
        &mut self,
        partition: &Arc<PartitionInfo>,
        events: &EventBatch,
        row_watermarks: &[i64],
        dead: &mut Vec<DeadLetter>,
    ) -> Result<u64, BatchError> {
        let config = self.config.clone();
        let batch = config.with_partition(&events.batch, partition.state_id as u32)?;
        let batch = batch.as_ref();
        let n = batch.num_rows();
        let pass = match &config.predicate {
            Some(p) => Some(evaluate(p, batch).map_err(|e| BatchError::of(&config.name, e))?),
            None => None,
        };
        let pass = pass.as_ref().map(|a| a.as_boolean());
        let now = if config.time == TimeMode::Processing {
            now_ms()
        } else {
            0
        };
        for (_, idx) in self.buckets.iter_mut() {
            idx.clear();
        }
        let mut late = 0u64;
        let mut last = usize::MAX;
        let per_partition = config.closes_per_partition();
        // the partition's own closing watermark (windows closing per partition)
        let closing = self.closed_upto(per_partition.then_some(partition.id));
        for i in 0..n {
            if let Some(p) = pass {
                if !p.is_valid(i) || !p.value(i) {
                    continue;
                }
            }
            let t = match config.time {
                TimeMode::Event => events.event_time[i],
                TimeMode::Processing => now,
            };
            let start = window_start(t, config.size_ms);
            if config.time == TimeMode::Event {
                // Rows are late by their own partition's watermark, and by the windows
                // handed over (of their partition, when windows close per partition).
                let wm = if config.key_partitioned && !per_partition {
                    row_watermarks[i]
                } else if per_partition && start <= self.legacy_end {
                    row_watermarks[i].max(closing).max(self.flushed)
                } else {
                    row_watermarks[i].max(closing)
                };
                if config.closed(start, wm) {
                    late += 1;
                    dead.push(late_letter(&config, partition, events, i, (start, wm)));
                    continue;
                }
            }
            if last >= self.buckets.len() || self.buckets[last].0 != start {
                last = match self.buckets.iter().position(|(s, _)| *s == start) {
                    Some(p) => p,
                    None => {
                        self.buckets.push((start, Vec::new()));
                        self.buckets.len() - 1
                    }
                };
            }
            self.buckets[last].1.push(i as u32);
        }
        self.buckets.retain(|(_, idx)| !idx.is_empty());
        // evaluate every window's rows first, then change the windows
        let mut evaluated = Vec::with_capacity(self.buckets.len());
        for (start, idx) in self.buckets.iter() {
            let rows = if idx.len() == n {
                Groups::evaluate(batch, &self.state_keys, &config.aggregates, &config.name)?
            } else {
                let indices = UInt32Array::from(idx.clone());
                let subset = take_record_batch(batch, &indices).map_err(|e| config.err(e))?;
                Groups::evaluate(&subset, &self.state_keys, &config.aggregates, &config.name)?
            };
            evaluated.push((*start, rows));
        }
        if per_partition {
            self.part(partition.id)?;
        }
        for (start, rows) in evaluated {
            // a window restored without its partitions (see `restore_by_partition`) keeps
            // every row of its start, so that no key of it is emitted twice
            let windows = match self.parts.get_mut(&partition.id) {
                Some(p) if per_partition && !self.windows.contains(start) => &mut p.windows,
                _ => &mut self.windows,
            };
            let groups = windows.get_or_create(start, &config)?;
            groups.apply(&rows, &mut self.group_ids, &config.name)?;
        }
        Ok(late)
    }
}

impl WindowWorker {
    /// The open windows of global partition `id`, made empty when new.
    fn part(&mut self, id: usize) -> Result<&mut PartitionWindows, EngineError> {
        if !self.parts.contains_key(&id) {
            let windows = OpenWindows::new(self.config.state_key_schema()?);
            self.parts.insert(
                id,
                PartitionWindows {
                    windows,
                    closing: i64::MIN,
                },
            );
        }
        self.parts
            .get_mut(&id)
            .ok_or_else(|| EngineError::Internal("a partition's windows vanished".into()))
    }

    /// Restores partial windows of a checkpoint into their partitions' windows (windows
    /// closing per partition). A checkpoint written before windows closed per partition kept
    /// no partition column: its windows are restored as they were, closed with every
    /// partition and taking every row of their starts ([`NO_PARTITION`] in the column).
    /// Windows of a partition the run does not have ([`UNKNOWN_PARTITION`]) close with every
    /// partition too, and take no new row.
    fn restore_by_partition(&mut self, partials: Vec<PartialWindow>) -> Result<(), EngineError> {
        let config = self.config.clone();
        for mut p in partials {
            if p.keys.len() == config.keys.len() {
                let rows = p.keys.first().map_or(0, |k| k.len());
                p.keys
                    .insert(0, Arc::new(UInt32Array::from_value(NO_PARTITION, rows)));
                self.legacy_end = self.legacy_end.max(p.window_start);
                self.windows.merge(p, &config)?;
                continue;
            }
            let Some(ids) = p
                .keys
                .first()
                .and_then(|k| k.as_any().downcast_ref::<UInt32Array>())
            else {
                return Err(EngineError::operator(
                    &config.name,
                    "the checkpoint's windows have no partition column",
                ));
            };
            // the rows of each partition, in one pass
            let mut rows: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
            for (i, id) in ids.iter().enumerate() {
                rows.entry(id.unwrap_or(u32::MAX))
                    .or_default()
                    .push(i as u32);
            }
            let whole = rows.len() == 1;
            for (id, idx) in rows {
                let share = if whole {
                    p.clone()
                } else {
                    let idx = UInt32Array::from(idx);
                    let take = |a: &ArrayRef| {
                        arrow::compute::take(a.as_ref(), &idx, None).map_err(|e| config.err(e))
                    };
                    PartialWindow {
                        window_start: p.window_start,
                        keys: p.keys.iter().map(take).collect::<Result<_, _>>()?,
                        states: p.states.iter().map(take).collect::<Result<_, _>>()?,
                    }
                };
                match id {
                    NO_PARTITION => {
                        self.legacy_end = self.legacy_end.max(share.window_start);
                        self.windows.merge(share, &config)?
                    }
                    UNKNOWN_PARTITION => self.orphans.merge(share, &config)?,
                    id => self.part(id as usize)?.windows.merge(share, &config)?,
                }
            }
        }
        Ok(())
    }
}

/// The dead letter of row `i`, late for the window starting at `start` at watermark `wm`.
fn late_letter(
    config: &WindowConfig,
    partition: &Arc<PartitionInfo>,
    events: &EventBatch,
    i: usize,
    (start, wm): (i64, i64),
) -> DeadLetter {
    let t = events.event_time[i];
    DeadLetter {
        partition: partition.clone(),
        offset: events.offsets.get(i).copied(),
        trace: events.trace_of(i),
        reason: Reason::Late,
        error: ErrorInfo::new(
            "late_event",
            format!(
                "the event's window closed before it arrived ({})",
                config.name
            ),
        )
        .with("window", config.name.as_str())
        .with("event_time", t)
        .with("window_start", start)
        .with("window_end", start.saturating_add(config.size_ms))
        .with("allowed_lateness_ms", config.allowed_lateness_ms)
        .with("watermark", wm),
        raw: events.raw_row(i),
    }
}

impl WorkerOperator for WindowWorker {
    fn process(
        &mut self,
        partition: &Arc<PartitionInfo>,
        events: &EventBatch,
        row_watermarks: &[i64],
        dead: &mut Vec<DeadLetter>,
    ) -> Result<u64, EngineError> {
        let config = self.config.clone();
        process_isolating(
            &config.name,
            partition,
            (events, row_watermarks),
            dead,
            RowExprs {
                predicate: config.predicate.as_ref(),
                aggregates: &config.aggregates,
            },
            |ev| {
                config
                    .with_partition(&ev.batch, partition.state_id as u32)
                    .map(|b| b.into_owned())
            },
            |ev, wms, dead| self.try_process(partition, ev, wms, dead),
        )
    }

    fn flush(&mut self, watermark: i64) -> Result<Vec<PartialWindow>, EngineError> {
        self.flushed = self.flushed.max(watermark);
        let config = self.config.clone();
        let mut out = Vec::new();
        for windows in [&mut self.windows, &mut self.orphans] {
            for (start, w) in windows.take_closed(&config, watermark) {
                out.extend(w.into_partials(start, &config, windows.key_schema())?);
            }
        }
        Ok(out)
    }

    fn snapshot(&mut self) -> Result<(Vec<PartialWindow>, i64), EngineError> {
        let mut partials =
            self.windows
                .snapshot(&self.config, &self.state_lens, &mut self.group_ids)?;
        partials.extend(self.orphans.snapshot(
            &self.config,
            &self.state_lens,
            &mut self.group_ids,
        )?);
        for part in self.parts.values_mut() {
            partials.extend(part.windows.snapshot(
                &self.config,
                &self.state_lens,
                &mut self.group_ids,
            )?);
        }
        Ok((partials, self.flushed))
    }

    fn restore(&mut self, partials: Vec<PartialWindow>, flushed: i64) -> Result<(), EngineError> {
        if self.config.closes_per_partition() {
            self.restore_by_partition(partials)?;
        } else {
            for p in partials {
                self.windows.merge(p, &self.config)?;
            }
        }
        self.flushed = self.flushed.max(flushed);
        self.floor = self.floor.max(flushed);
        Ok(())
    }

    fn processing_time(&self) -> bool {
        self.config.time == TimeMode::Processing
    }

    fn closes_per_partition(&self) -> bool {
        self.config.closes_per_partition()
    }

    fn restore_closed(&mut self, closed: &[(usize, i64)]) -> Result<(), EngineError> {
        if !closed.is_empty() {
            // the checkpoint says how far each partition's windows were emitted: no floor
            self.floor = i64::MIN;
        }
        for &(id, wm) in closed {
            let part = self.part(id)?;
            part.closing = part.closing.max(wm);
        }
        Ok(())
    }

    fn flush_partitions(
        &mut self,
        closing: &[(usize, i64)],
        upto: i64,
    ) -> Result<Vec<PartitionFlush>, EngineError> {
        self.flushed = self.flushed.max(upto);
        let config = self.config.clone();
        let mut out = Vec::with_capacity(closing.len());
        for &(id, wm) in closing {
            let floor = self.floor;
            let part = self.part(id)?;
            part.closing = part.closing.max(wm).max(floor);
            let upto = part.closing;
            let mut partials = Vec::new();
            for (start, w) in part.windows.take_closed(&config, upto) {
                partials.extend(w.into_partials(start, &config, part.windows.key_schema())?);
            }
            out.push(PartitionFlush {
                partition: id,
                upto,
                partials,
            });
        }
        Ok(out)
    }

    fn closed_upto(&self, partition: Option<usize>) -> i64 {
        match partition {
            None => self.flushed,
            Some(p) => self
                .parts
                .get(&p)
                .map_or(self.floor, |part| part.closing.max(self.floor)),
        }
    }

    fn closes_at(&self, event_time: i64) -> i64 {
        let t = match self.config.time {
            TimeMode::Event => event_time,
            TimeMode::Processing => now_ms(),
        };
        window_start(t, self.config.size_ms)
            .saturating_add(self.config.size_ms)
            .saturating_add(self.config.allowed_lateness_ms)
    }
}

/// Merges the workers' partial windows and emits final rows.
pub struct WindowMerger {
    config: Arc<WindowConfig>,
    output: SchemaRef,
    state_lens: Vec<usize>,
    windows: OpenWindows,
    /// When windows close per partition: the windows each partition's workers handed over,
    /// held until every worker closed them.
    parts: std::collections::BTreeMap<usize, OpenWindows>,
    group_ids: Vec<usize>,
}

impl WindowMerger {
    /// The merger of `config`.
    pub fn new(config: Arc<WindowConfig>) -> Result<Self, EngineError> {
        Ok(WindowMerger {
            output: config.output_schema()?,
            windows: OpenWindows::new(config.state_key_schema()?),
            state_lens: state_lens(&config.name, &config.aggregates)?,
            config,
            parts: std::collections::BTreeMap::new(),
            group_ids: Vec::new(),
        })
    }

    /// The result rows of a window; `emitted` when they are its final rows (overflowed sums
    /// are counted once, there).
    fn finish_window(
        &mut self,
        start: i64,
        w: Window,
        emitted: bool,
    ) -> Result<RecordBatch, EngineError> {
        let config = &self.config;
        let mut g = w.into_groups(config, &self.state_lens, &mut self.group_ids)?;
        let (mut keys, values) = g.finish(&config.aggregates, &config.name, emitted)?;
        if config.keeps_partition() && !keys.is_empty() {
            // the partition column is the state's, not the result's
            keys.remove(0);
        }
        let rows = keys.first().map_or(0, |k| k.len());
        let mut columns = keys;
        let tz: Arc<str> = "UTC".into();
        columns.push(Arc::new(
            TimestampMillisecondArray::from(vec![start; rows]).with_timezone(tz.clone()),
        ));
        columns.push(Arc::new(
            TimestampMillisecondArray::from(vec![start.saturating_add(config.size_ms); rows])
                .with_timezone(tz),
        ));
        columns.extend(values);
        let batch =
            RecordBatch::try_new(self.output.clone(), columns).map_err(|e| config.err(e))?;
        // Deterministic output: rows sorted by key.
        let sort: Vec<SortColumn> = (0..config.keys.len())
            .map(|i| SortColumn {
                values: batch.column(i).clone(),
                options: Some(SortOptions {
                    descending: false,
                    nulls_first: true,
                }),
            })
            .collect();
        if sort.is_empty() || rows < 2 {
            return Ok(batch);
        }
        let order = lexsort_to_indices(&sort, None).map_err(|e| config.err(e))?;
        take_record_batch(&batch, &order).map_err(|e| config.err(e))
    }

    /// The schema of the rows it emits.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }
}

impl MergeOperator for WindowMerger {
    fn merge(&mut self, partial: PartialWindow) -> Result<(), EngineError> {
        self.windows.merge(partial, &self.config)
    }

    fn snapshot(&mut self) -> Result<Vec<PartialWindow>, EngineError> {
        let mut held =
            self.windows
                .snapshot(&self.config, &self.state_lens, &mut self.group_ids)?;
        for part in self.parts.values_mut() {
            held.extend(part.snapshot(&self.config, &self.state_lens, &mut self.group_ids)?);
        }
        Ok(held)
    }

    fn emit(&mut self, watermark: i64) -> Result<Vec<RecordBatch>, EngineError> {
        let closed = self.windows.take_closed(&self.config, watermark);
        closed
            .into_iter()
            .map(|(start, w)| self.finish_window(start, w, true))
            .collect()
    }

    fn merge_partition(
        &mut self,
        partition: usize,
        partial: PartialWindow,
    ) -> Result<(), EngineError> {
        let part = match self.parts.entry(partition) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(OpenWindows::new(self.windows.key_schema().clone()))
            }
        };
        part.merge(partial, &self.config)
    }

    fn emit_partition(
        &mut self,
        partition: usize,
        watermark: i64,
    ) -> Result<Vec<RecordBatch>, EngineError> {
        let Some(part) = self.parts.get_mut(&partition) else {
            return Ok(Vec::new());
        };
        let closed = part.take_closed(&self.config, watermark);
        closed
            .into_iter()
            .map(|(start, w)| self.finish_window(start, w, true))
            .collect()
    }

    fn live(&mut self, workers: Vec<PartialWindow>) -> Result<Vec<RecordBatch>, EngineError> {
        // The held partials and the workers' copies, merged into windows of their own.
        let mut open = OpenWindows::new(self.windows.key_schema().clone());
        let mut held = self.snapshot()?;
        held.extend(workers);
        for p in held {
            open.merge(p, &self.config)?;
        }
        open.take_all()
            .into_iter()
            .map(|(start, w)| self.finish_window(start, w, false))
            .collect()
    }
}

#[cfg(test)]
#[path = "window_tests.rs"]
mod tests;
