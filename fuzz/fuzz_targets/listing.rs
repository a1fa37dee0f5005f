//! Any bytes given as a CSV or Parquet table listing (read as UTF-8 or Latin-1) are either items
//! or an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pipeline::input::parse_table;
use pipeline::manifest::{InputListing, TextEncoding};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let encoding = if mode & 4 == 4 { TextEncoding::Latin1 } else { TextEncoding::Utf8 };
    let listing =
        InputListing { id_column: (mode & 1 == 1).then(|| "id".to_string()), encoding, ..InputListing::default() };
    let name = if mode & 2 == 2 { "/fuzz/listing.parquet" } else { "/fuzz/listing.csv" };
    let _ = parse_table(name, bytes::Bytes::copy_from_slice(body), &listing);
});
