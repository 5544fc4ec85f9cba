//! The store as one table (a row per run and metric, parameters as columns) in polars,
//! CSV or Parquet.

use super::*;

pub(super) fn create_file(path: &Path) -> Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            cause: e,
        })?;
    }
    std::fs::File::create(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        cause: e,
    })
}

/// One row of the metrics query: run id, hash, name, subgrid, status, then the metric's
/// task, name, value, stderr, context and step.
type MetricRow = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    f64,
    Option<f64>,
    String,
    i64,
);

impl Store {
    /// One row per (run, metric) of every run that has metrics, with the run's
    /// parameters as columns (named by their dotted path; numbers and booleans typed,
    /// everything else as JSON text, strings raw).
    pub fn metrics_frame(&self) -> Result<DataFrame> {
        let rows = self.metric_rows()?;
        let params = self.params_of_runs(&rows)?;
        let keys: BTreeSet<String> = params.values().flat_map(|p| p.keys().cloned()).collect();
        let mut cols = metric_columns(&rows);
        for k in keys {
            let vals: Vec<Option<&Value>> = rows
                .iter()
                .map(|r| {
                    params
                        .get(&r.0)
                        .and_then(|p| p.get(&k))
                        .filter(|v| !v.is_null())
                })
                .collect();
            cols.push(param_column(&k, &vals));
        }
        DataFrame::new(cols).map_err(|e| StoreError::Export {
            path: self.path.clone(),
            msg: e.to_string(),
        })
    }

    /// Every metric of every run, joined with its run's identity, in run then insertion
    /// order.
    fn metric_rows(&self) -> Result<Vec<MetricRow>> {
        self.retry("export", |c| {
            let e = |e| self.err("export", e);
            let mut st = c
                .prepare(
                    "SELECT r.id, r.hash, r.name, r.subgrid, r.status, m.task, m.name, m.value, m.stderr, m.context, m.step
                     FROM metrics m JOIN runs r ON r.id = m.run_id ORDER BY r.id, m.id",
                )
                .map_err(e)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                    ))
                })
                .map_err(e)?;
            rows.collect::<std::result::Result<Vec<_>, _>>().map_err(e)
        })
    }

    /// The parameters of each run that appears in `rows`, looked up once per run.
    fn params_of_runs(&self, rows: &[MetricRow]) -> Result<BTreeMap<i64, BTreeMap<String, Value>>> {
        let mut params: BTreeMap<i64, BTreeMap<String, Value>> = BTreeMap::new();
        for r in rows {
            if let std::collections::btree_map::Entry::Vacant(slot) = params.entry(r.0) {
                slot.insert(self.params(r.0)?);
            }
        }
        Ok(params)
    }

    /// [`Store::metrics_frame`] written as CSV.
    pub fn export_csv(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut df = self.metrics_frame()?;
        let mut f = create_file(path)?;
        CsvWriter::new(&mut f)
            .finish(&mut df)
            .map_err(|e| StoreError::Export {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
    }

    /// [`Store::metrics_frame`] written as Parquet.
    pub fn export_parquet(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut df = self.metrics_frame()?;
        let f = create_file(path)?;
        ParquetWriter::new(f)
            .finish(&mut df)
            .map(|_| ())
            .map_err(|e| StoreError::Export {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })
    }
}

/// The fixed columns of the frame, one per field of [`MetricRow`].
fn metric_columns(rows: &[MetricRow]) -> Vec<Column> {
    let col_s = |name: &str, f: &dyn Fn(&MetricRow) -> String| {
        Column::new(name.into(), rows.iter().map(f).collect::<Vec<_>>())
    };
    vec![
        Column::new(
            "run_id".into(),
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        ),
        col_s("hash", &|r| r.1.clone()),
        col_s("name", &|r| r.2.clone()),
        col_s("subgrid", &|r| r.3.clone()),
        col_s("status", &|r| r.4.clone()),
        col_s("task", &|r| r.5.clone()),
        col_s("metric", &|r| r.6.clone()),
        Column::new("value".into(), rows.iter().map(|r| r.7).collect::<Vec<_>>()),
        Column::new(
            "stderr".into(),
            rows.iter().map(|r| r.8).collect::<Vec<_>>(),
        ),
        col_s("context", &|r| r.9.clone()),
        Column::new("step".into(), rows.iter().map(|r| r.10).collect::<Vec<_>>()),
    ]
}

/// One parameter's column (`None` where a run lacks it or has null), typed by its values:
/// i64 if all are integers, else f64 if all are numbers, else bool if all are booleans,
/// else text (strings raw, anything else as JSON).
fn param_column(name: &str, vals: &[Option<&Value>]) -> Column {
    if vals.iter().flatten().all(|v| v.is_i64()) {
        Column::new(
            name.into(),
            vals.iter()
                .map(|v| v.and_then(Value::as_i64))
                .collect::<Vec<_>>(),
        )
    } else if vals.iter().flatten().all(|v| v.is_number()) {
        Column::new(
            name.into(),
            vals.iter()
                .map(|v| v.and_then(Value::as_f64))
                .collect::<Vec<_>>(),
        )
    } else if vals.iter().flatten().all(|v| v.is_boolean()) {
        Column::new(
            name.into(),
            vals.iter()
                .map(|v| v.and_then(Value::as_bool))
                .collect::<Vec<_>>(),
        )
    } else {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Column::new(
            name.into(),
            vals.iter().map(|v| v.map(text)).collect::<Vec<_>>(),
        )
    }
}
