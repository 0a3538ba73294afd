//! GGUF reader and writer against files written by gguf-py (`scripts/gen_gguf_golden.py`), plus
//! corrupt inputs that must fail with errors, never panics or huge allocations.

use std::path::{Path, PathBuf};

use kestrel::formats::gguf::{GgufFile, GgufValue};
use kestrel::formats::gguf_write::GgufWriter;
use kestrel::quant::{self, GgmlType};
use kestrel::KestrelError;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata/gguf/")).join(name)
}

/// A fresh path in the temp dir, unique per test and process.
fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kestrel-gguf-{}-{name}", std::process::id()))
}

/// The formula the golden tensors were made from.
fn src(n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 37) % 101) as f32 - 50.0) / 16.0)
        .collect()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + 3) % 256) as u8).collect()
}

#[test]
fn reads_every_metadata_type_written_by_gguf_py() {
    let f = GgufFile::open(&golden("all_types.gguf")).unwrap();
    use GgufValue as V;
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 32);
    assert_eq!(f.architecture().unwrap(), "qwen3");
    assert_eq!(f.metadata[0].0, "general.architecture");
    let expect = [
        ("test.u8", V::U8(200)),
        ("test.i8", V::I8(-100)),
        ("test.u16", V::U16(60000)),
        ("test.i16", V::I16(-30000)),
        ("test.u32", V::U32(4_000_000_000)),
        ("test.i32", V::I32(-2_000_000_000)),
        ("test.u64", V::U64((1 << 63) + 5)),
        ("test.i64", V::I64(-(1 << 62))),
        ("test.f32", V::F32(0.1)),
        ("test.f64", V::F64(std::f64::consts::E)),
        ("test.true", V::Bool(true)),
        ("test.false", V::Bool(false)),
        ("test.string", V::String("héllo ✓ \"quoted\"".into())),
        ("test.empty_string", V::String(String::new())),
        (
            "test.arr_i32",
            V::Array(vec![V::I32(1), V::I32(-2), V::I32(3)]),
        ),
        ("test.arr_f32", V::Array(vec![V::F32(0.5), V::F32(-1.25)])),
        (
            "test.arr_bool",
            V::Array(vec![V::Bool(true), V::Bool(false), V::Bool(true)]),
        ),
        (
            "test.arr_u8",
            V::Array(vec![V::U8(1), V::U8(2), V::U8(255)]),
        ),
        ("test.arr_u64", V::Array(vec![V::U64(u64::MAX), V::U64(0)])),
        ("test.arr_f64", V::Array(vec![V::F64(1e300), V::F64(-0.0)])),
        (
            "test.arr_i16",
            V::Array(vec![V::I16(-32768), V::I16(32767)]),
        ),
        (
            "test.nested",
            V::Array(vec![
                V::Array(vec![V::I32(1), V::I32(2)]),
                V::Array(vec![V::I32(3), V::I32(4), V::I32(5)]),
                V::Array(vec![V::I32(6)]),
            ]),
        ),
    ];
    for (key, want) in expect {
        assert_eq!(f.get(key), Some(&want), "{key}");
    }
    assert_eq!(
        f.get_str_array("test.arr_str").unwrap(),
        ["a", "bc", "", "ü"]
    );
    assert_eq!(f.get_i32_array("test.arr_i32").unwrap(), [1, -2, 3]);
    assert_eq!(f.get_u64("qwen3.block_count").unwrap(), 2);
    assert_eq!(f.get_f32("qwen3.rope.freq_base").unwrap(), 1e6);
    assert_eq!(f.get_u64("test.u64").unwrap(), (1 << 63) + 5);
    assert!(f.get_u64("test.i8").is_err(), "negative is not a u64");
    let err = f.get_str("test.u8").unwrap_err().to_string();
    assert!(
        err.contains("test.u8") && err.contains("all_types.gguf"),
        "{err}"
    );
    let err = f.get_u64("no.such.key").unwrap_err().to_string();
    assert!(err.contains("no.such.key"), "{err}");
    assert!(f.get_i32_array("test.arr_str").is_err());
    assert_eq!(
        f.get("test.nested_str").unwrap().to_string(),
        r#"[["x"], ["y", "z"]]"#
    );
}

#[test]
fn reads_tensors_written_by_gguf_py() {
    for file in ["all_types.gguf", "align64.gguf"] {
        let f = GgufFile::open(&golden(file)).unwrap();
        let t = |n: &str| f.tensor(n).unwrap();
        assert_eq!(t("f32.matrix").shape, [3, 5]);
        assert_eq!(t("f32.matrix").to_f32().unwrap(), src(15));
        assert_eq!(t("f32.vector").shape, [7]);
        assert_eq!(t("f32.vector").to_f32().unwrap(), src(7));
        assert_eq!(t("f32.cube").shape, [2, 3, 4]);
        assert_eq!(t("f32.cube").to_f32().unwrap(), src(24));
        // src() is exact in f16 and bf16.
        assert_eq!(
            (t("f16.matrix").ty, t("f16.matrix").to_f32().unwrap()),
            (GgmlType::F16, src(128))
        );
        assert_eq!(t("bf16.matrix").shape, [4, 32]);
        assert_eq!(t("bf16.matrix").to_f32().unwrap(), src(128));
        for ty in [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0] {
            let tensor = t(&format!("{}.matrix", ty.name().to_lowercase()));
            assert_eq!((tensor.ty, tensor.shape.as_slice()), (ty, &[2, 64][..]));
            assert_eq!(
                tensor.bytes(),
                quant::quantize_tensor(ty, &src(128), 64).unwrap(),
                "{ty} in {file}"
            );
        }
        assert_eq!(t("q4_k.matrix").shape, [2, 256]);
        assert_eq!(t("q4_k.matrix").bytes(), pattern(288));
        assert_eq!(
            (t("q6_k.vector").ty, t("q6_k.vector").bytes()),
            (GgmlType::Q6_K, &pattern(210)[..])
        );
        for info in &f.tensors {
            assert_eq!((f.data_offset + info.offset) % f.alignment, 0);
        }
        assert!(matches!(
            f.tensor("missing"),
            Err(KestrelError::MissingTensor { .. })
        ));
    }
    assert_eq!(
        GgufFile::open(&golden("align64.gguf")).unwrap().alignment,
        64
    );
}

/// A writer holding everything `f` holds, in the same order.
fn copy_of(f: &GgufFile) -> GgufWriter<'_> {
    let mut w = GgufWriter::new();
    for (k, v) in &f.metadata {
        w.add_kv(k.clone(), v.clone());
    }
    for info in &f.tensors {
        w.add_tensor(info.name.clone(), info.ty, &info.shape, f.tensor_data(info))
            .unwrap();
    }
    w
}

#[test]
fn writer_output_is_byte_identical_to_gguf_py() {
    for file in ["all_types.gguf", "align64.gguf"] {
        let f = GgufFile::open(&golden(file)).unwrap();
        let want = std::fs::read(golden(file)).unwrap();
        assert_eq!(copy_of(&f).to_bytes().unwrap(), want, "{file}");
        let out = temp(file);
        copy_of(&f).write(&out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), want, "{file} via write()");
        std::fs::remove_file(out).unwrap();
    }
}

#[test]
fn rust_written_file_reads_back() {
    use GgufValue as V;
    let q = quant::quantize_tensor(GgmlType::Q4_K, &src(512), 256).unwrap();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", V::String("qwen2".into()));
    w.add_kv("general.alignment", V::U32(16));
    w.add_kv("x.empty", V::Array(vec![]));
    w.add_kv(
        "x.deep",
        V::Array(vec![V::Array(vec![V::Array(vec![V::String("d".into())])])]),
    );
    w.add_kv("x.replaced", V::I64(1));
    w.add_kv("x.replaced", V::F64(2.5));
    w.add_tensor(
        "a",
        GgmlType::F32,
        &[3],
        src(3)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    w.add_tensor("b", GgmlType::Q4_K, &[2, 256], &q[..])
        .unwrap();
    assert!(
        w.add_tensor("a", GgmlType::F32, &[1], vec![0u8; 4])
            .is_err(),
        "duplicate name"
    );
    assert!(
        w.add_tensor("c", GgmlType::Q8_0, &[2, 32], vec![0u8; 34])
            .is_err(),
        "wrong byte count"
    );
    let path = temp("roundtrip.gguf");
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(
        (f.version, f.alignment, f.architecture().unwrap()),
        (3, 16, "qwen2")
    );
    assert_eq!(f.get("x.empty"), Some(&V::Array(vec![])));
    assert_eq!(f.get("x.replaced"), Some(&V::F64(2.5)));
    assert_eq!(f.metadata[3].0, "x.deep");
    assert_eq!(f.tensor("a").unwrap().to_f32().unwrap(), src(3));
    assert_eq!(f.tensor("b").unwrap().bytes(), q);
    assert_eq!(f.tensor("b").unwrap().shape, [2, 256]);
    std::fs::remove_file(path).unwrap();
    let mut bad = GgufWriter::new();
    bad.add_kv("general.alignment", V::U32(24));
    assert!(bad.to_bytes().is_err());
    let mut mixed = GgufWriter::new();
    mixed.add_kv("m", V::Array(vec![V::U8(1), V::String("x".into())]));
    assert!(mixed.to_bytes().is_err());
}

/// Opens `bytes` as a file and returns the error message (panics if it opens).
fn open_err(name: &str, bytes: &[u8]) -> String {
    match open_bytes(name, bytes) {
        Ok(_) => panic!("{name}: corrupt file opened"),
        Err(e) => e.to_string(),
    }
}

fn open_bytes(name: &str, bytes: &[u8]) -> kestrel::Result<GgufFile> {
    let path = temp(name);
    std::fs::write(&path, bytes).unwrap();
    let r = GgufFile::open(&path);
    std::fs::remove_file(&path).unwrap();
    r
}

/// Hand-built GGUF pieces for corruptions the writer cannot produce.
fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend(n_tensors.to_le_bytes());
    b.extend(n_kv.to_le_bytes());
    b
}

fn string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn tensor_info(b: &mut Vec<u8>, name: &str, ne: &[u64], ty: u32, offset: u64) {
    string(b, name);
    b.extend((ne.len() as u32).to_le_bytes());
    ne.iter().for_each(|d| b.extend(d.to_le_bytes()));
    b.extend(ty.to_le_bytes());
    b.extend(offset.to_le_bytes());
}

#[test]
fn truncated_files_are_errors() {
    let bytes = std::fs::read(golden("all_types.gguf")).unwrap();
    let f = GgufFile::open(&golden("all_types.gguf")).unwrap();
    let data_end = f
        .tensors
        .iter()
        .map(|t| f.data_offset + t.offset + t.n_bytes as u64)
        .max()
        .unwrap();
    for cut in (0..data_end as usize)
        .step_by(13)
        .chain([data_end as usize - 1])
    {
        let msg = open_err("truncated.gguf", &bytes[..cut]);
        assert!(
            msg.contains("truncated") || msg.contains("too short") || msg.contains("past the end"),
            "{cut}: {msg}"
        );
    }
    // Cutting only the trailing padding loses nothing.
    assert!(open_bytes("padding.gguf", &bytes[..data_end as usize]).is_ok());
}

#[test]
fn corrupt_headers_are_errors() {
    let bytes = std::fs::read(golden("all_types.gguf")).unwrap();
    let mut v2 = bytes.clone();
    v2[4] = 2;
    assert_eq!(open_bytes("v2.gguf", &v2).unwrap().version, 2);
    let patched = |at: usize, with: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + with.len()].copy_from_slice(with);
        b
    };
    assert!(open_err("magic.gguf", &patched(0, b"GGUG")).contains("not a GGUF file"));
    assert!(open_err("v1.gguf", &patched(4, &1u32.to_le_bytes())).contains("version 1"));
    assert!(open_err("v99.gguf", &patched(4, &99u32.to_le_bytes())).contains("version 99"));
    assert!(open_err("be.gguf", &patched(4, &3u32.to_be_bytes())).contains("big-endian"));
    assert!(
        open_err("tensors.gguf", &patched(8, &(1u64 << 60).to_le_bytes())).contains("tensor count")
    );
    assert!(
        open_err("kvs.gguf", &patched(16, &(1u64 << 60).to_le_bytes())).contains("metadata count")
    );
    assert!(open_err("empty.gguf", b"").contains("too short"));
}

#[test]
fn corrupt_metadata_is_an_error() {
    let kv = |key: &str, ty: u32, payload: &[u8]| {
        let mut b = header(3, 0, 1);
        string(&mut b, key);
        b.extend(ty.to_le_bytes());
        b.extend(payload);
        b.extend([0u8; 64]);
        b
    };
    let huge_string = kv("s", 8, &(1u64 << 62).to_le_bytes());
    assert!(open_err("str.gguf", &huge_string).contains("truncated"));
    let mut arr = 4u32.to_le_bytes().to_vec();
    arr.extend((1u64 << 60).to_le_bytes());
    assert!(open_err("arr.gguf", &kv("a", 9, &arr)).contains("array count"));
    let mut deep = Vec::new();
    for _ in 0..40 {
        deep.extend(9u32.to_le_bytes());
        deep.extend(1u64.to_le_bytes());
    }
    assert!(open_err("deep.gguf", &kv("d", 9, &deep)).contains("nested"));
    assert!(open_err("type.gguf", &kv("t", 13, &[0; 8])).contains("unknown value type 13"));
    assert!(open_err("bool.gguf", &kv("b", 7, &[2])).contains("bool"));
    assert!(open_err(
        "align.gguf",
        &kv("general.alignment", 4, &24u32.to_le_bytes())
    )
    .contains("power of two"));
    assert!(open_err(
        "align0.gguf",
        &kv("general.alignment", 4, &0u32.to_le_bytes())
    )
    .contains("power of two"));
}

#[test]
fn corrupt_tensor_infos_are_errors() {
    let one = |ne: &[u64], ty: u32, offset: u64, data: usize| {
        let mut b = header(3, 1, 0);
        tensor_info(&mut b, "w", ne, ty, offset);
        b.resize(b.len().div_ceil(32) * 32 + data, 0);
        b
    };
    assert!(open_bytes("ok.gguf", &one(&[32, 2], 8, 0, 68)).is_ok());
    match open_bytes("ty.gguf", &one(&[32], 99, 0, 64)) {
        Err(KestrelError::UnsupportedTensorType { tensor, ty, .. }) => {
            assert_eq!((tensor.as_str(), ty.as_str()), ("w", "id 99"))
        }
        other => panic!("{other:?}"),
    }
    assert!(open_err("past.gguf", &one(&[32, 2], 8, 0, 67)).contains("past the end"));
    assert!(open_err("offset.gguf", &one(&[32], 8, 1 << 62, 64)).contains("past the end"));
    assert!(
        open_err("offset_wrap.gguf", &one(&[32], 8, u64::MAX - 31, 64)).contains("past the end")
    );
    assert!(open_err("misaligned.gguf", &one(&[32], 8, 4, 64)).contains("alignment"));
    assert!(open_err("block.gguf", &one(&[33], 8, 0, 64)).contains("block size"));
    assert!(open_err("overflow.gguf", &one(&[1 << 40, 1 << 40], 0, 0, 64)).contains("overflow"));
    assert!(open_err("dims.gguf", &one(&[1; 5], 0, 0, 64)).contains("dimensions"));
    let mut dup = header(3, 2, 0);
    tensor_info(&mut dup, "w", &[1], 0, 0);
    tensor_info(&mut dup, "w", &[1], 0, 32);
    dup.resize(dup.len().div_ceil(32) * 32 + 64, 0);
    assert!(open_err("dup.gguf", &dup).contains("duplicate"));
}

#[test]
fn missing_file_is_an_io_error_naming_it() {
    let e = GgufFile::open(Path::new("/nonexistent/model.gguf")).unwrap_err();
    assert!(
        matches!(e, KestrelError::Io { .. }) && e.to_string().contains("/nonexistent/model.gguf")
    );
}
