//! Items: the unit of work that flows through stages, with metadata fields and tensor payloads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::budget::Reservation;

/// A metadata value; the writer turns each field into an Arrow column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// No value for this item.
    Null,
    /// A flag.
    Bool(bool),
    /// An integer (frame numbers, sizes, counts).
    Int(i64),
    /// A float (seconds, scores, rates).
    Float(f64),
    /// Text (ids, uris, codecs, captions).
    Str(String),
}

impl Value {
    /// The field type this value belongs to (`None` for null).
    pub fn field_type(&self) -> Option<FieldType> {
        match self {
            Value::Null => None,
            Value::Bool(_) => Some(FieldType::Bool),
            Value::Int(_) => Some(FieldType::Int),
            Value::Float(_) => Some(FieldType::Float),
            Value::Str(_) => Some(FieldType::Str),
        }
    }

    /// The value as text, if it is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a float (integers widen).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(x) => Some(*x),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The value as an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => write!(f, "null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Str(s) => write!(f, "{s}"),
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Self { Value::$v(x.into()) }
        }
    )*};
}
value_from!(bool => Bool, i64 => Int, i32 => Int, u32 => Int, f64 => Float, f32 => Float, String => Str, &str => Str);

/// The type of a field, as declared by stages and checked by the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// Boolean metadata.
    Bool,
    /// Integer metadata.
    Int,
    /// Float metadata.
    Float,
    /// Text metadata.
    Str,
    /// A tensor payload (written to safetensors, not to the metadata table).
    Tensor,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::Bool => "bool",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Str => "str",
            FieldType::Tensor => "tensor",
        })
    }
}

/// A field a stage reads or adds: name, type and what it means.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Field {
    /// Field name as it appears in the metadata table (or tensor name).
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// One line saying what it holds and in which unit.
    pub doc: &'static str,
}

impl Field {
    /// A field declaration.
    pub fn new(name: impl Into<String>, ty: FieldType, doc: &'static str) -> Self {
        Field { name: name.into(), ty, doc }
    }
}

/// Element type of a tensor payload, named as safetensors names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    /// Unsigned bytes (decoded frames).
    U8,
    /// Booleans (masks).
    Bool,
    /// 64-bit integers.
    I64,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit float.
    F32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

/// A dense tensor payload: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major little-endian data, `shape.product() * dtype.size()` bytes.
    pub data: Bytes,
}

impl Tensor {
    /// A tensor from parts; `None` if the byte length does not match the shape.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Bytes) -> Option<Self> {
        (shape.iter().product::<usize>() * dtype.size() == data.len()).then_some(Tensor { dtype, shape, data })
    }
}

/// One unit of work: a source video, a clip, a catalog row.
///
/// Ids are derived from the input (path, clip range, catalog id) so re-runs produce the same ids.
#[derive(Debug)]
pub struct Item {
    /// Stable id, unique within the job.
    pub id: String,
    /// Metadata fields, written as columns.
    pub fields: BTreeMap<String, Value>,
    /// Tensor payloads, written to safetensors as `<id>/<name>`.
    pub tensors: BTreeMap<String, Tensor>,
    /// Files published with the item's shard (encoded clips, videos): name relative to the
    /// output location -> the local file a stage wrote in its scratch directory.
    pub files: BTreeMap<String, PathBuf>,
    pub(crate) shard: usize,
    /// The input item it came from (set by the executor, kept by [`Item::child`]).
    pub(crate) input: Option<std::sync::Arc<str>>,
    pub(crate) reservation: Option<Reservation>,
}

impl Item {
    /// A new item with an id and no fields, belonging to shard 0 (the executor assigns shards).
    pub fn new(id: impl Into<String>) -> Self {
        Item {
            id: id.into(),
            fields: BTreeMap::new(),
            tensors: BTreeMap::new(),
            files: BTreeMap::new(),
            shard: 0,
            input: None,
            reservation: None,
        }
    }

    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A text field, or an error naming the missing field.
    pub fn str(&self, name: &str) -> Result<&str, MissingField> {
        self.get(name).and_then(Value::as_str).ok_or_else(|| MissingField(name.to_string()))
    }

    /// Set a field.
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        self.fields.insert(name.into(), value.into());
    }

    /// The item's source path or URL (the `uri` field every input provides).
    pub fn uri(&self) -> Result<&str, MissingField> {
        self.str("uri")
    }

    /// A new item derived from this one (fan-out): same fields and shard, no tensors or files.
    pub fn child(&self, id: impl Into<String>) -> Item {
        Item {
            id: id.into(),
            fields: self.fields.clone(),
            tensors: BTreeMap::new(),
            files: BTreeMap::new(),
            shard: self.shard,
            input: self.input.clone(),
            reservation: None,
        }
    }

    /// Bytes of tensor payload this item holds.
    pub fn payload_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.data.len()).sum()
    }
}

/// A stage asked an item for a field it does not have (a contract the plan should have caught).
#[derive(Debug, thiserror::Error)]
#[error("item has no text field `{0}`")]
pub struct MissingField(pub String);
