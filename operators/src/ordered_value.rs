//! A vectorised `first_value(x ORDER BY t)` / `last_value(x ORDER BY t)` for string values.
//!
//! DataFusion 53 vectorises these two aggregates only for primitive values; for strings it
//! falls back to one row accumulator (and a `ScalarValue` per row) for every group, which
//! costs an allocation per event. This accumulator keeps, per group, the winning string in a
//! reused `String`, its ordering value as an `i64` and two flags, and picks each batch's
//! winner per group before touching the state, so a group's string is copied at most once
//! per batch.
//!
//! It keeps DataFusion's semantics and state layout exactly (`[value, ordering, is_set]`),
//! so its state merges with DataFusion's and checkpoints written by either read back:
//! - the order is the `ORDER BY`'s, with its `ASC`/`DESC` and `NULLS FIRST`/`LAST`;
//! - `first_value` keeps the smallest row in that order, `last_value` the greatest; on a
//!   tie the value decides, as if it were ordered last (`ORDER BY t, x`, the value ascending,
//!   nulls first): the row kept is then the same whatever order rows arrive in (DataFusion
//!   keeps the row seen first, which at parallelism 2, or across a checkpoint, depends on
//!   timing);
//! - `IGNORE NULLS` skips null values; `FILTER (WHERE …)` skips rows that do not pass.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow::array::{
    make_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, LargeStringBuilder,
    StringBuilder, StringViewBuilder,
};
use arrow::buffer::{BooleanBuffer, NullBuffer, ScalarBuffer};
use arrow::compute::SortOptions;
use arrow::datatypes::{
    DataType, Date64Type, DurationMicrosecondType, DurationMillisecondType, DurationNanosecondType,
    DurationSecondType, Int64Type, Time64MicrosecondType, Time64NanosecondType, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};

/// Which row of each group the aggregate keeps, and how rows are ordered.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedValueSpec {
    /// `true` for `last_value` (keep the greatest row), `false` for `first_value`.
    pub keep_last: bool,
    /// The `ORDER BY`'s direction and null placement.
    pub order: SortOptions,
    /// `IGNORE NULLS`.
    pub ignore_nulls: bool,
    /// The value type (a string type).
    pub value_type: DataType,
    /// The ordering type (one whose values are `i64`s: integers, timestamps, durations).
    pub ordering_type: DataType,
}

impl OrderedValueSpec {
    /// The spec when this accumulator can serve `function(value ORDER BY ordering)`.
    pub fn supported(
        function_name: &str,
        value_type: &DataType,
        ordering_type: &DataType,
        order: SortOptions,
        ignore_nulls: bool,
    ) -> Option<Self> {
        let keep_last = match function_name {
            "last_value" => true,
            "first_value" => false,
            _ => return None,
        };
        let strings = matches!(
            value_type,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        (strings && is_i64_type(ordering_type)).then(|| OrderedValueSpec {
            keep_last,
            order,
            ignore_nulls,
            value_type: value_type.clone(),
            ordering_type: ordering_type.clone(),
        })
    }
}

fn is_i64_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int64
            | DataType::Date64
            | DataType::Timestamp(_, _)
            | DataType::Duration(_)
            | DataType::Time64(_)
    )
}

/// The `i64` values of an ordering column.
fn i64_values(a: &dyn Array) -> Result<&[i64]> {
    use DataType::*;
    Ok(match a.data_type() {
        Int64 => a.as_primitive::<Int64Type>().values(),
        Date64 => a.as_primitive::<Date64Type>().values(),
        Timestamp(TimeUnit::Second, _) => a.as_primitive::<TimestampSecondType>().values(),
        Timestamp(TimeUnit::Millisecond, _) => {
            a.as_primitive::<TimestampMillisecondType>().values()
        }
        Timestamp(TimeUnit::Microsecond, _) => {
            a.as_primitive::<TimestampMicrosecondType>().values()
        }
        Timestamp(TimeUnit::Nanosecond, _) => a.as_primitive::<TimestampNanosecondType>().values(),
        Duration(TimeUnit::Second) => a.as_primitive::<DurationSecondType>().values(),
        Duration(TimeUnit::Millisecond) => a.as_primitive::<DurationMillisecondType>().values(),
        Duration(TimeUnit::Microsecond) => a.as_primitive::<DurationMicrosecondType>().values(),
        Duration(TimeUnit::Nanosecond) => a.as_primitive::<DurationNanosecondType>().values(),
        Time64(TimeUnit::Microsecond) => a.as_primitive::<Time64MicrosecondType>().values(),
        Time64(TimeUnit::Nanosecond) => a.as_primitive::<Time64NanosecondType>().values(),
        other => {
            return Err(DataFusionError::Internal(format!(
                "ordered value: the ordering column is {other}, not a 64-bit type"
            )))
        }
    })
    .map(|v| v.as_ref())
}

/// Read access to a string column of any of Arrow's three layouts.
enum Strings<'a> {
    Utf8(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
}

impl<'a> Strings<'a> {
    fn new(a: &'a dyn Array) -> Result<Self> {
        Ok(match a.data_type() {
            DataType::Utf8 => Strings::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => Strings::Large(a.as_string::<i64>()),
            DataType::Utf8View => Strings::View(a.as_string_view()),
            other => {
                return Err(DataFusionError::Internal(format!(
                    "ordered value: the value column is {other}, not a string"
                )))
            }
        })
    }

    fn is_null(&self, i: usize) -> bool {
        match self {
            Strings::Utf8(a) => a.is_null(i),
            Strings::Large(a) => a.is_null(i),
            Strings::View(a) => a.is_null(i),
        }
    }

    fn value(&self, i: usize) -> &'a str {
        match self {
            Strings::Utf8(a) => a.value(i),
            Strings::Large(a) => a.value(i),
            Strings::View(a) => a.value(i),
        }
    }
}

/// One group's candidate row, compared in the `ORDER BY`'s order.
#[derive(Clone, Copy)]
struct Key {
    value: i64,
    null: bool,
}

/// The first/last string value per group (see the module docs).
#[derive(Debug)]
pub struct OrderedValueAccumulator {
    spec: OrderedValueSpec,
    values: Vec<String>,
    value_valid: Vec<bool>,
    orderings: Vec<i64>,
    ordering_valid: Vec<bool>,
    is_set: Vec<bool>,
    /// Bytes held by `values` beyond the `String` headers.
    string_bytes: usize,
    /// Per-batch scratch: the best row index of each touched group, and the touched groups.
    best_row: Vec<u32>,
    touched: Vec<usize>,
}

const NO_ROW: u32 = u32::MAX;

impl OrderedValueAccumulator {
    /// An empty accumulator for `spec`.
    pub fn new(spec: OrderedValueSpec) -> Self {
        OrderedValueAccumulator {
            spec,
            values: Vec::new(),
            value_valid: Vec::new(),
            orderings: Vec::new(),
            ordering_valid: Vec::new(),
            is_set: Vec::new(),
            string_bytes: 0,
            best_row: Vec::new(),
            touched: Vec::new(),
        }
    }

    fn resize(&mut self, groups: usize) {
        if self.values.len() < groups {
            self.values.resize_with(groups, String::new);
            self.value_valid.resize(groups, false);
            self.orderings.resize(groups, 0);
            self.ordering_valid.resize(groups, false);
            self.is_set.resize(groups, false);
            self.best_row.resize(groups, NO_ROW);
        }
    }

    /// Where `a` sorts relative to `b` in the `ORDER BY`'s order.
    fn compare(&self, a: Key, b: Key) -> Ordering {
        match (a.null, b.null) {
            (true, true) => Ordering::Equal,
            (true, false) if self.spec.order.nulls_first => Ordering::Less,
            (true, false) => Ordering::Greater,
            (false, true) if self.spec.order.nulls_first => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) if self.spec.order.descending => b.value.cmp(&a.value),
            (false, false) => a.value.cmp(&b.value),
        }
    }

    /// Whether the row (`candidate`, its value) replaces (`current`, its value): better in the
    /// `ORDER BY`'s order, or tied there and better by its value (ascending, nulls first).
    fn beats(
        &self,
        (candidate, value): (Key, Option<&str>),
        (current, current_value): (Key, Option<&str>),
    ) -> bool {
        let o = self
            .compare(candidate, current)
            .then_with(|| value.cmp(&current_value));
        if self.spec.keep_last {
            o == Ordering::Greater
        } else {
            o == Ordering::Less
        }
    }

    /// Folds rows (`values`, `ordering`) into their groups; `usable` says which rows count.
    fn fold(
        &mut self,
        values: &dyn Array,
        ordering: &dyn Array,
        group_indices: &[usize],
        usable: impl Fn(usize) -> bool,
        total_num_groups: usize,
    ) -> Result<()> {
        self.resize(total_num_groups);
        let strings = Strings::new(values)?;
        let keys = i64_values(ordering)?;
        let key_nulls = ordering.logical_nulls();
        let key = |row: usize| Key {
            value: keys[row],
            null: key_nulls.as_ref().is_some_and(|n| n.is_null(row)),
        };
        let value = |row: usize| (!strings.is_null(row)).then(|| strings.value(row));
        // The best row of this batch per group.
        let mut touched = std::mem::take(&mut self.touched);
        touched.clear();
        for (row, &group) in group_indices.iter().enumerate() {
            if !usable(row) || (self.spec.ignore_nulls && strings.is_null(row)) {
                continue;
            }
            let best = self.best_row[group];
            if best == NO_ROW {
                self.best_row[group] = row as u32;
                touched.push(group);
            } else if self.beats(
                (key(row), value(row)),
                (key(best as usize), value(best as usize)),
            ) {
                self.best_row[group] = row as u32;
            }
        }
        // Then against the state: one string copy per group at most.
        for &group in &touched {
            let row = self.best_row[group] as usize;
            self.best_row[group] = NO_ROW;
            let candidate = key(row);
            let current = Key {
                value: self.orderings[group],
                null: !self.ordering_valid[group],
            };
            let current_value = self.value_valid[group].then(|| self.values[group].as_str());
            if self.is_set[group] && !self.beats((candidate, value(row)), (current, current_value))
            {
                continue;
            }
            self.is_set[group] = true;
            self.orderings[group] = candidate.value;
            self.ordering_valid[group] = !candidate.null;
            let slot = &mut self.values[group];
            let before = slot.capacity();
            slot.clear();
            if strings.is_null(row) {
                self.value_valid[group] = false;
            } else {
                slot.push_str(strings.value(row));
                self.value_valid[group] = true;
            }
            self.string_bytes = self.string_bytes + slot.capacity() - before;
        }
        self.touched = touched;
        Ok(())
    }

    /// How many groups `emit_to` takes.
    fn emit_len(&self, emit_to: EmitTo) -> usize {
        match emit_to {
            EmitTo::All => self.values.len(),
            EmitTo::First(n) => n.min(self.values.len()),
        }
    }

    fn value_array(&self, n: usize) -> ArrayRef {
        let bytes: usize = self.values[..n].iter().map(String::len).sum();
        let valid = &self.value_valid[..n];
        let values = &self.values[..n];
        macro_rules! build {
            ($builder:expr) => {{
                let mut b = $builder;
                for (v, ok) in values.iter().zip(valid) {
                    if *ok {
                        b.append_value(v);
                    } else {
                        b.append_null();
                    }
                }
                Arc::new(b.finish()) as ArrayRef
            }};
        }
        match self.spec.value_type {
            DataType::LargeUtf8 => build!(LargeStringBuilder::with_capacity(n, bytes)),
            DataType::Utf8View => build!(StringViewBuilder::with_capacity(n)),
            _ => build!(StringBuilder::with_capacity(n, bytes)),
        }
    }

    fn ordering_array(&self, n: usize) -> Result<ArrayRef> {
        let nulls = NullBuffer::from(BooleanBuffer::from(&self.ordering_valid[..n]));
        let ints = Int64Array::new(
            ScalarBuffer::from(self.orderings[..n].to_vec()),
            Some(nulls),
        );
        let data = ints
            .into_data()
            .into_builder()
            .data_type(self.spec.ordering_type.clone())
            .build()?;
        Ok(make_array(data))
    }

    /// Drops the first `n` groups (emitted).
    fn drain(&mut self, n: usize) {
        if n == self.values.len() {
            self.values.clear();
            self.value_valid.clear();
            self.orderings.clear();
            self.ordering_valid.clear();
            self.is_set.clear();
            self.best_row.clear();
            self.string_bytes = 0;
            return;
        }
        let freed: usize = self.values[..n].iter().map(String::capacity).sum();
        self.string_bytes -= freed;
        self.values.drain(..n);
        self.value_valid.drain(..n);
        self.orderings.drain(..n);
        self.ordering_valid.drain(..n);
        self.is_set.drain(..n);
        self.best_row.drain(..n);
    }
}

impl GroupsAccumulator for OrderedValueAccumulator {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [value, ordering] = values else {
            return Err(DataFusionError::Internal(format!(
                "ordered value: update takes [value, ordering], got {} columns",
                values.len()
            )));
        };
        self.fold(
            value.as_ref(),
            ordering.as_ref(),
            group_indices,
            |row| opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)),
            total_num_groups,
        )
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        let [value, ordering, is_set] = values else {
            return Err(DataFusionError::Internal(format!(
                "ordered value: merge takes [value, ordering, is_set], got {} columns",
                values.len()
            )));
        };
        let is_set = is_set.as_boolean();
        self.fold(
            value.as_ref(),
            ordering.as_ref(),
            group_indices,
            |row| {
                is_set.is_valid(row)
                    && is_set.value(row)
                    && opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row))
            },
            total_num_groups,
        )
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let n = self.emit_len(emit_to);
        let out = self.value_array(n);
        self.drain(n);
        Ok(out)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let n = self.emit_len(emit_to);
        let value = self.value_array(n);
        let ordering = self.ordering_array(n)?;
        let is_set = Arc::new(BooleanArray::from(self.is_set[..n].to_vec())) as ArrayRef;
        self.drain(n);
        Ok(vec![value, ordering, is_set])
    }

    fn size(&self) -> usize {
        let groups = self.values.capacity();
        groups * std::mem::size_of::<String>()
            + self.string_bytes
            + self.orderings.capacity() * 8
            + self.best_row.capacity() * 4
            + self.touched.capacity() * std::mem::size_of::<usize>()
            + self.value_valid.capacity()
            + self.ordering_valid.capacity()
            + self.is_set.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{CompiledAggregate, SqlCompiler};
    use crate::test_rng::Rng;
    use arrow::array::{StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema, SchemaRef};
    use arrow::record_batch::RecordBatch;
    use datafusion::physical_expr::GroupsAccumulatorAdapter;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("status", DataType::Utf8, true),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]))
    }

    /// DataFusion's own (row-at-a-time) accumulator for the same call.
    fn reference(a: &CompiledAggregate) -> Box<dyn GroupsAccumulator> {
        let f = a.function.clone();
        Box::new(GroupsAccumulatorAdapter::new(move || {
            f.create_accumulator()
        }))
    }

    /// A batch of `n` rows with unique timestamps (ties are tested on their own below),
    /// some null values, and random groups among `groups`.
    fn batch(
        rng: &mut Rng,
        n: usize,
        groups: usize,
        ts: &mut Vec<i64>,
    ) -> (RecordBatch, Vec<usize>) {
        let statuses: StringArray = (0..n)
            .map(|_| match rng.below(5) {
                0 => None,
                k => Some(["HEALTHY", "DEGRADED", "a much longer status ✓", "x"][k as usize - 1]),
            })
            .collect();
        let times: TimestampMillisecondArray = (0..n)
            .map(|_| Some(ts.swap_remove(rng.below(ts.len() as u64) as usize)))
            .collect::<TimestampMillisecondArray>()
            .with_timezone("UTC");
        let groups = (0..n).map(|_| rng.below(groups as u64) as usize).collect();
        let batch =
            RecordBatch::try_new(schema(), vec![Arc::new(statuses), Arc::new(times)]).unwrap();
        (batch, groups)
    }

    fn inputs(a: &CompiledAggregate, b: &RecordBatch) -> Vec<ArrayRef> {
        a.inputs
            .iter()
            .map(|e| e.evaluate(b).unwrap().into_array(b.num_rows()).unwrap())
            .collect()
    }

    #[test]
    fn serves_string_first_and_last_value_only() {
        let c = SqlCompiler::new();
        let s = schema();
        for sql in [
            "last_value(status ORDER BY ts)",
            "first_value(status ORDER BY ts DESC NULLS LAST)",
        ] {
            assert!(
                c.aggregate("x", sql, &s).unwrap().ordered_value.is_some(),
                "{sql}"
            );
        }
        for sql in [
            "last_value(status)",
            "max(status)",
            "last_value(ts ORDER BY ts)",
        ] {
            assert!(
                c.aggregate("x", sql, &s).unwrap().ordered_value.is_none(),
                "{sql}"
            );
        }
    }

    /// Updates, states, merges (across implementations too) and results equal DataFusion's.
    #[test]
    fn equals_datafusion_on_random_input() {
        let c = SqlCompiler::new();
        let s = schema();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for sql in [
            "last_value(status ORDER BY ts)",
            "first_value(status ORDER BY ts)",
            "last_value(status ORDER BY ts DESC)",
            "first_value(status ORDER BY ts DESC NULLS LAST)",
            "last_value(status ORDER BY ts) FILTER (WHERE status <> 'x')",
        ] {
            let a = c.aggregate("x", sql, &s).unwrap();
            assert!(a.ordered_value.is_some(), "{sql}");
            let groups = 50;
            let mut ts: Vec<i64> = (0..100_000).map(|i| 1_700_000_000_000 + i * 7).collect();
            // two partial aggregations each, ours and DataFusion's
            let mut ours = [a.accumulator().unwrap(), a.accumulator().unwrap()];
            let mut theirs = [reference(&a), reference(&a)];
            for round in 0..40 {
                let rows = 1 + rng.below(300) as usize;
                let (b, g) = batch(&mut rng, rows, groups, &mut ts);
                let filter = a.filter.as_ref().map(|f| {
                    f.evaluate(&b)
                        .unwrap()
                        .into_array(b.num_rows())
                        .unwrap()
                        .as_boolean()
                        .clone()
                });
                let side = round % 2;
                let total = g.iter().max().unwrap() + 1;
                let total = total.max(if round == 0 { 0 } else { groups });
                let v = inputs(&a, &b);
                ours[side]
                    .update_batch(&v, &g, filter.as_ref(), total)
                    .unwrap();
                theirs[side]
                    .update_batch(&v, &g, filter.as_ref(), total)
                    .unwrap();
            }
            let ids: Vec<usize> = (0..groups).collect();
            let states: Vec<Vec<ArrayRef>> = ours
                .iter_mut()
                .chain(theirs.iter_mut())
                .map(|acc| acc.state(EmitTo::All).unwrap())
                .collect();
            // state layouts are the same
            for (o, t) in states[0].iter().zip(&states[2]) {
                assert_eq!(o.data_type(), t.data_type(), "{sql}");
            }
            // merge ours+theirs into ours, and theirs+ours into theirs
            let mut merged_ours = a.accumulator().unwrap();
            merged_ours
                .merge_batch(&states[0], &ids, None, groups)
                .unwrap();
            merged_ours
                .merge_batch(&states[3], &ids, None, groups)
                .unwrap();
            let mut merged_theirs = reference(&a);
            merged_theirs
                .merge_batch(&states[2], &ids, None, groups)
                .unwrap();
            merged_theirs
                .merge_batch(&states[1], &ids, None, groups)
                .unwrap();
            assert_eq!(
                merged_ours.evaluate(EmitTo::All).unwrap().as_ref(),
                merged_theirs.evaluate(EmitTo::All).unwrap().as_ref(),
                "{sql}"
            );
        }
    }

    fn spec(keep_last: bool, order: SortOptions, ignore_nulls: bool) -> OrderedValueSpec {
        OrderedValueSpec {
            keep_last,
            order,
            ignore_nulls,
            value_type: DataType::Utf8,
            ordering_type: DataType::Int64,
        }
    }

    fn run(spec: OrderedValueSpec, values: &[Option<&str>], order: &[Option<i64>]) -> ArrayRef {
        let mut acc = OrderedValueAccumulator::new(spec);
        let v: ArrayRef = Arc::new(StringArray::from(values.to_vec()));
        let o: ArrayRef = Arc::new(Int64Array::from(order.to_vec()));
        // one row per batch too: ties across batches behave as ties within one
        for row in 0..values.len() {
            acc.update_batch(&[v.slice(row, 1), o.slice(row, 1)], &[0], None, 1)
                .unwrap();
        }
        let mut whole = OrderedValueAccumulator::new(acc.spec.clone());
        whole
            .update_batch(&[v, o], &vec![0; values.len()], None, 1)
            .unwrap();
        let a = acc.evaluate(EmitTo::All).unwrap();
        assert_eq!(a.as_ref(), whole.evaluate(EmitTo::All).unwrap().as_ref());
        a
    }

    #[test]
    fn ties_are_decided_by_the_value_and_nulls_sort_as_declared() {
        let asc = SortOptions::default(); // ascending, nulls first
        let vals = [Some("a"), Some("b"), None, Some("c")];
        let ord = [Some(5), Some(5), Some(9), None];
        let nulls_last = SortOptions {
            descending: false,
            nulls_first: false,
        };
        let desc = SortOptions {
            descending: true,
            nulls_first: false,
        };
        // (last_value?, order, IGNORE NULLS, the value kept)
        let cases = [
            // nulls first: the null ordering is the smallest row
            (false, asc, false, Some("c")),
            (true, asc, false, None),
            // a tie at 5: the greater value, "b", is the last row
            (true, asc, true, Some("b")),
            (true, nulls_last, false, Some("c")),
            (false, nulls_last, false, Some("a")),
            (true, desc, true, Some("c")),
            (false, desc, false, None),
        ];
        for (keep_last, order, ignore_nulls, want) in cases {
            let got = run(spec(keep_last, order, ignore_nulls), &vals, &ord);
            let got = got.as_string::<i32>().iter().next().flatten();
            assert_eq!(got, want, "{keep_last} {order:?} {ignore_nulls}");
        }
    }

    /// The row kept on a tie does not depend on the order rows arrive in, nor on how they
    /// are split between partial aggregations merged in either order (parallelism 2, a
    /// checkpoint between them): at parallelism 1 and 2 the results are the same.
    #[test]
    fn a_tie_keeps_the_same_row_whatever_the_arrival_order() {
        let rows = [
            (Some("DEGRADED"), 5),
            (Some("HEALTHY"), 5),
            (None, 5),
            (Some("DOWN"), 5),
        ];
        for keep_last in [true, false] {
            let mut kept = std::collections::BTreeSet::new();
            for rotation in 0..rows.len() {
                let mut r = rows.to_vec();
                r.rotate_left(rotation);
                let (vals, ord): (Vec<_>, Vec<_>) = r.iter().map(|(v, t)| (*v, Some(*t))).unzip();
                let whole = run(spec(keep_last, SortOptions::default(), false), &vals, &ord);
                kept.insert(
                    whole
                        .as_string::<i32>()
                        .iter()
                        .next()
                        .flatten()
                        .map(String::from),
                );
                // split in two partial aggregations, merged one way and the other
                for first in [0usize, 1] {
                    let parts: Vec<_> = [&r[..2], &r[2..]]
                        .iter()
                        .map(|half| {
                            let mut acc = OrderedValueAccumulator::new(spec(
                                keep_last,
                                SortOptions::default(),
                                false,
                            ));
                            let v: ArrayRef = Arc::new(StringArray::from(
                                half.iter().map(|x| x.0).collect::<Vec<_>>(),
                            ));
                            let o: ArrayRef = Arc::new(Int64Array::from(
                                half.iter().map(|x| x.1).collect::<Vec<_>>(),
                            ));
                            acc.update_batch(&[v, o], &vec![0; half.len()], None, 1)
                                .unwrap();
                            acc.state(EmitTo::All).unwrap()
                        })
                        .collect();
                    let mut merged = OrderedValueAccumulator::new(spec(
                        keep_last,
                        SortOptions::default(),
                        false,
                    ));
                    for p in [&parts[first], &parts[1 - first]] {
                        merged.merge_batch(p, &[0], None, 1).unwrap();
                    }
                    let out = merged.evaluate(EmitTo::All).unwrap();
                    kept.insert(
                        out.as_string::<i32>()
                            .iter()
                            .next()
                            .flatten()
                            .map(String::from),
                    );
                }
            }
            let want = if keep_last {
                Some("HEALTHY".to_string())
            } else {
                None
            };
            assert_eq!(
                kept.into_iter().collect::<Vec<_>>(),
                vec![want],
                "last_value: {keep_last}"
            );
        }
    }

    #[test]
    fn emits_the_first_groups_and_keeps_the_rest() {
        let mut acc = OrderedValueAccumulator::new(spec(true, SortOptions::default(), false));
        let v: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c"]));
        let o: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        acc.update_batch(&[v, o], &[0, 1, 2], None, 3).unwrap();
        let size = acc.size();
        let first = acc.state(EmitTo::First(2)).unwrap();
        assert_eq!(first[0].as_string::<i32>().value(1), "b");
        assert!(acc.size() <= size);
        let rest = acc.evaluate(EmitTo::All).unwrap();
        assert_eq!(rest.as_string::<i32>().value(0), "c");
        assert_eq!(rest.len(), 1);
    }
}
