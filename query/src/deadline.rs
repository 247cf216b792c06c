//! Stops a query's operators once its time limit has passed.
//!
//! A query that runs out of time is cancelled by dropping its task, which takes effect at the
//! next point where the task yields to tokio. DataFusion's operators yield rarely when their
//! input is in memory: an aggregate pulls batches from a nested-loop join in a loop, and the
//! join computes a whole batch of pairs per pull, so a cancelled cross join could run on for
//! tens of seconds, holding its turn. Every node of a planned query is wrapped in
//! [`DeadlineExec`], whose stream fails as soon as the deadline has passed, so the query stops
//! within one batch of its slowest operator.

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result, Statistics};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

/// Wraps every node of `plan` so that its output stops at `deadline`.
pub fn with_deadline(
    plan: Arc<dyn ExecutionPlan>,
    deadline: Instant,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let wrapped: Arc<dyn ExecutionPlan> = Arc::new(DeadlineExec {
            input: node,
            deadline,
        });
        Ok(Transformed::yes(wrapped))
    })
    .map(|t| t.data)
}

/// A node whose output fails once the deadline has passed; otherwise its input, unchanged.
#[derive(Debug)]
pub struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    deadline: Instant,
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DeadlineExec")
    }
}

impl ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "DeadlineExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([input]) => Ok(Arc::new(DeadlineExec {
                input,
                deadline: self.deadline,
            })),
            Err(_) => Err(DataFusionError::Internal(
                "DeadlineExec takes one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(Box::pin(DeadlineStream {
            input: self.input.execute(partition, context)?,
            deadline: self.deadline,
        }))
    }

    fn partition_statistics(&self, partition: Option<usize>) -> Result<Statistics> {
        self.input.partition_statistics(partition)
    }
}

struct DeadlineStream {
    input: SendableRecordBatchStream,
    deadline: Instant,
}

impl Stream for DeadlineStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(Some(Err(DataFusionError::Execution(
                "the query ran past its time limit and was stopped".into(),
            ))));
        }
        self.input.poll_next_unpin(cx)
    }
}

impl RecordBatchStream for DeadlineStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::prelude::SessionContext;

    use super::*;

    #[tokio::test]
    async fn a_plan_answers_as_before_until_its_deadline_then_stops() {
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_batch_size(1024),
        );
        let sql = "SELECT count(*) AS n FROM generate_series(1, 100) a, generate_series(1, 100) b \
                   WHERE a.value + b.value > 100";
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let later = Instant::now() + Duration::from_secs(60);
        let wrapped = with_deadline(plan.clone(), later).unwrap();
        let out = datafusion::physical_plan::collect(wrapped, ctx.task_ctx())
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&out)
            .unwrap()
            .to_string();
        assert!(text.contains("5050"), "{text}");

        let slow =
            "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b \
                    WHERE a.value * b.value = 7";
        let plan = ctx
            .sql(slow)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let wrapped = with_deadline(plan, Instant::now() + Duration::from_millis(200)).unwrap();
        let started = Instant::now();
        let err = datafusion::physical_plan::collect(wrapped, ctx.task_ctx())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("time limit"), "{err}");
        // the whole join (10^10 pairs) would take hours; one batch of it takes about a
        // second in a debug build, and was seen to take 14 s on two busy cores
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            started.elapsed()
        );
    }
}
