//! Reading back what the writer produced: table summaries and safetensors headers.

use std::collections::BTreeMap;

use polars::prelude::*;

use crate::io::Location;
use crate::PipelineError;

/// A Parquet table's shape and its first rows as text.
#[derive(Debug)]
pub struct TableSummary {
    /// Number of rows.
    pub height: usize,
    /// Column names and polars types.
    pub columns: Vec<(String, String)>,
    /// Every row as column -> text (tables written by mugflow are small per shard).
    pub rows: Vec<BTreeMap<String, String>>,
}

/// Read a Parquet table and summarise it.
pub async fn read_table_summary(loc: &Location, name: &str) -> Result<TableSummary, PipelineError> {
    let bytes = loc.read(name).await?;
    let df = ParquetReader::new(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| PipelineError::Input(format!("{} is not a readable Parquet file: {e}", loc.url_of(name))))?;
    let columns: Vec<(String, String)> =
        df.columns().iter().map(|c| (c.name().to_string(), c.dtype().to_string())).collect();
    let mut rows = vec![BTreeMap::new(); df.height()];
    for c in df.columns() {
        let s = c.as_materialized_series();
        for (i, row) in rows.iter_mut().enumerate() {
            let v = s.get(i).map(|v| v.str_value().to_string()).unwrap_or_default();
            row.insert(c.name().to_string(), v);
        }
    }
    Ok(TableSummary { height: df.height(), columns, rows })
}

/// Chosen columns of a Parquet table, as numbers or as text, for reports that aggregate every
/// row of a dataset (absent columns are left out; nulls and unparsable values are `None`).
#[derive(Debug, Default)]
pub struct TableColumns {
    /// Number of rows.
    pub height: usize,
    /// Numeric columns (any integer or float type), by name.
    pub numbers: BTreeMap<String, Vec<Option<f64>>>,
    /// Text columns (any type, as text), by name.
    pub texts: BTreeMap<String, Vec<Option<String>>>,
}

/// Read only the named columns of a Parquet table (those it has): `numbers` cast to floats,
/// `texts` to strings.
pub async fn read_table_columns(
    loc: &Location,
    name: &str,
    numbers: &[&str],
    texts: &[&str],
) -> Result<TableColumns, PipelineError> {
    let bytes = loc.read(name).await?;
    let bad =
        |e: PolarsError| PipelineError::Input(format!("{} is not a readable Parquet file: {e}", loc.url_of(name)));
    let mut reader = ParquetReader::new(std::io::Cursor::new(bytes));
    let schema = reader.schema().map_err(bad)?;
    let present: Vec<String> = numbers
        .iter()
        .chain(texts)
        .filter(|c| schema.contains(c))
        .map(|c| c.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let df = reader.with_columns(Some(present)).finish().map_err(bad)?;
    let mut out = TableColumns { height: df.height(), ..Default::default() };
    for c in df.columns() {
        let s = c.as_materialized_series();
        let col = c.name().as_str();
        if numbers.contains(&col) {
            let values = s.cast(&DataType::Float64).map_err(bad)?;
            out.numbers.insert(col.to_string(), values.f64().map_err(bad)?.iter().collect());
        }
        if texts.contains(&col) {
            let values = s.cast(&DataType::String).map_err(bad)?;
            let values = values.str().map_err(bad)?.iter().map(|v| v.map(str::to_string)).collect();
            out.texts.insert(col.to_string(), values);
        }
    }
    Ok(out)
}

/// One tensor entry of a safetensors header.
#[derive(Debug)]
pub struct TensorInfo {
    /// Key (`<item_id>/<name>` in mugflow shards).
    pub name: String,
    /// Element type as safetensors names it.
    pub dtype: String,
    /// Dimensions.
    pub shape: Vec<usize>,
}

/// Read only the header of a safetensors file (two small range reads, however large the file).
pub async fn read_tensor_header(loc: &Location, name: &str) -> Result<Vec<TensorInfo>, PipelineError> {
    let bad = |why: String| PipelineError::Input(format!("{} is not a safetensors file: {why}", loc.url_of(name)));
    let len = loc.read_range(name, 0..8).await?;
    let n = u64::from_le_bytes(len[..].try_into().map_err(|_| bad("shorter than 8 bytes".into()))?);
    if n > 100 << 20 {
        return Err(bad(format!("header of {n} bytes")));
    }
    let header = loc.read_range(name, 8..8 + n).await?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(e.to_string()))?;
    let mut out: Vec<TensorInfo> = json
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| TensorInfo {
            name: k,
            dtype: v.get("dtype").and_then(|d| d.as_str()).unwrap_or("?").to_string(),
            shape: v
                .get("shape")
                .and_then(|s| s.as_array())
                .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as usize).collect())
                .unwrap_or_default(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chosen_columns_come_back_as_numbers_or_text_and_absent_ones_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut df = df!(
            "id" => ["a", "b"],
            "width" => [Some(640i64), None],
            "score" => [0.5f64, 1.5],
            "note" => ["x", "y"],
        )
        .unwrap();
        ParquetWriter::new(std::fs::File::create(dir.path().join("t.parquet")).unwrap()).finish(&mut df).unwrap();
        let loc = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let t = read_table_columns(&loc, "t.parquet", &["width", "score", "missing"], &["id", "width"]).await.unwrap();
        assert_eq!(t.height, 2);
        assert_eq!(t.numbers["width"], [Some(640.0), None]);
        assert_eq!(t.numbers["score"], [Some(0.5), Some(1.5)]);
        assert_eq!(t.texts["id"], [Some("a".to_string()), Some("b".to_string())]);
        assert_eq!(t.texts["width"][0].as_deref(), Some("640"));
        assert!(!t.numbers.contains_key("missing") && !t.texts.contains_key("note"));
    }
}
